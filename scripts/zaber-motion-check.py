#!/usr/bin/env python3
"""Zaber's own client library (zaber-motion, from PyPI) against operando-sim's Zaber simulator.

Usage: zaber-motion-check.py PTY [--devices N]

PTY is the serial path the simulator serves (operando-sim zaber --pty PTY --devices N). Every
step prints what it did; any mismatch raises, so the exit status is non-zero on failure.

Offline (no internet, as on the build machines): zaber-motion identifies a device by looking its
device id up in Zaber's device database, a web service by default. Without it, identification
fails with DeviceDbFailedException, so devices are detected with identify_devices=False and
everything runs in native units (microsteps, Zaber's speed data). Unit conversion
(Units.LENGTH_MILLIMETRES) needs an identified device and is checked to fail cleanly with
DeviceNotIdentifiedException. With the database reachable, identification and a move in
millimetres are checked too.
"""

import argparse
import sys
import threading

import zaber_motion
from zaber_motion import Units
from zaber_motion.ascii import Connection
from zaber_motion.exceptions import (
    BadDataException,
    DeviceDbFailedException,
    DeviceNotIdentifiedException,
)

# The simulated stage (ZaberSimulator.Axis.linearStage100mm): 0 ... 2 099 737 microsteps.
LIMIT_MAX = 2_099_737


def step(text):
    print(f"zaber-motion-check: {text}", flush=True)


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


def check_axis(device, axis_number):
    axis = device.get_axis(axis_number)
    name = f"device {device.device_address} axis {axis_number}"

    axis.home()
    expect(axis.get_position() == 0, f"{name}: position after home is {axis.get_position()}, not 0")
    flags = axis.warnings.get_flags()
    expect("WR" not in flags, f"{name}: WR (no reference position) still set after home: {flags}")
    step(f"{name}: home -> pos 0, warnings {sorted(flags) or 'none'}")

    axis.move_absolute(200_000)
    expect(axis.get_position() == 200_000, f"{name}: move_absolute(200000) ended at {axis.get_position()}")
    axis.move_relative(-50_000)
    expect(axis.get_position() == 150_000, f"{name}: move_relative(-50000) ended at {axis.get_position()}")
    step(f"{name}: move_absolute 200000, move_relative -50000 -> pos {axis.get_position()}")

    encoder = axis.settings.get("encoder.pos")
    expect(abs(encoder - 150_000) <= 10, f"{name}: encoder.pos {encoder} is far from pos 150000")
    maxspeed = axis.settings.get("maxspeed")
    axis.settings.set("maxspeed", 250_000)
    expect(axis.settings.get("maxspeed") == 250_000, f"{name}: maxspeed did not read back 250000")
    axis.settings.set("maxspeed", maxspeed)
    limit_max = axis.settings.get("limit.max")
    expect(limit_max == LIMIT_MAX, f"{name}: limit.max is {limit_max}, not {LIMIT_MAX}")
    step(f"{name}: settings encoder.pos {encoder:.0f}, maxspeed {maxspeed:.0f} (set/get 250000), limit.max {limit_max:.0f}")

    try:
        axis.move_absolute(LIMIT_MAX + 1)
        raise AssertionError(f"{name}: a move beyond limit.max was accepted")
    except BadDataException:
        step(f"{name}: move_absolute beyond limit.max -> BadDataException (RJ BADDATA)")

    axis.move_velocity(50_000)
    expect(axis.is_busy(), f"{name}: not busy after move_velocity")
    for _ in range(1000):  # until it has visibly moved (about 30 000 microsteps/s)
        if axis.get_position() > 150_100:
            break
    axis.stop()
    position = axis.get_position()
    expect(not axis.is_busy() and 150_100 < position < LIMIT_MAX, f"{name}: after move_velocity + stop: busy {axis.is_busy()}, pos {position}")
    step(f"{name}: move_velocity 50000, stop -> idle at {position:.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pty")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()

    step(f"zaber-motion {zaber_motion.__version__ if hasattr(zaber_motion, '__version__') else ''}".rstrip())
    with Connection.open_serial_port(args.pty) as connection:
        step(f"opened {args.pty}")

        devices = connection.detect_devices(identify_devices=False)
        expect(len(devices) == args.devices, f"detect_devices found {len(devices)} devices, expected {args.devices}")
        step(f"detect_devices(identify_devices=False) -> {[d.device_address for d in devices]}")

        identified = False
        try:
            devices[0].identify()
            identified = True
            step(f"identify() -> {devices[0].name} (device database reachable)")
        except DeviceDbFailedException:
            step("identify() -> DeviceDbFailedException: no device database offline (expected here); native units only")

        for device in devices:
            serial = device.settings.get("system.serial")
            device_id = device.settings.get("deviceid")
            version = device.settings.get("version")
            axes = device.settings.get("system.axiscount")
            step(f"device {device.device_address}: deviceid {device_id:.0f}, serial {serial:.0f}, version {version}, axes {axes:.0f}")
            for axis_number in range(1, int(axes) + 1):
                check_axis(device, axis_number)

        replies = connection.generic_command_multi_response("")
        expect([r.device_address for r in replies] == list(range(1, args.devices + 1)), f"broadcast replies from {[r.device_address for r in replies]}")
        echo = connection.generic_command("tools echo hello zaber", device=1)
        expect(echo.data == "hello zaber", f"tools echo replied {echo.data!r}")
        step(f"broadcast empty command -> replies from devices {[r.device_address for r in replies]}; tools echo -> {echo.data!r}")

        storage = devices[0].storage
        text = " ".join(f"word{i:02d}" for i in range(30))  # 5 packets out (the most a command may take), 3 back
        storage.set_string("operando.check", text)
        expect(storage.get_string("operando.check") == text, "storage round trip of a long value failed")
        expect("operando.check" in storage.list_keys(), "storage.list_keys() lacks the key just set")
        storage.erase_key("operando.check")
        step(f"storage set/get of {len(text)} characters (split command, continued reply), list_keys, erase_key")

        alerts = []
        arrived = threading.Event()

        def on_alert(event):
            alerts.append(event)
            arrived.set()

        subscription = connection.alert.subscribe(on_alert)
        connection.enable_alerts()
        axis = devices[-1].get_axis(1)
        axis.move_absolute(100_000)
        expect(arrived.wait(5), "no alert within 5 s of a move with comm.alert 1")
        subscription.dispose()
        connection.disable_alerts()
        event = alerts[0]
        expect((event.device_address, event.axis_number, event.status) == (devices[-1].device_address, 1, "IDLE"), f"alert {event}")
        step(f"enable_alerts, move -> alert from device {event.device_address} axis {event.axis_number}: {event.status} {event.warning_flag}")

        count = connection.renumber_devices()
        expect(count == args.devices, f"renumber_devices() reported {count} devices, expected {args.devices}")
        step(f"renumber_devices() -> {count} devices numbered from 1")

        connection.home_all()
        expect(all(d.get_axis(1).get_position() == 0 for d in devices), "home_all left an axis away from 0")
        step("home_all -> every axis at 0")

        if identified:
            axis = devices[0].get_axis(1)
            axis.move_absolute(5, Units.LENGTH_MILLIMETRES)
            step(f"move_absolute 5 mm -> {axis.get_position(Units.LENGTH_MILLIMETRES):.4f} mm")
        else:
            try:
                devices[0].get_axis(1).move_absolute(5, Units.LENGTH_MILLIMETRES)
                raise AssertionError("a move in millimetres worked on an unidentified device")
            except DeviceNotIdentifiedException:
                step("move_absolute in millimetres -> DeviceNotIdentifiedException (needs the device database)")

    step("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"zaber-motion-check: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
