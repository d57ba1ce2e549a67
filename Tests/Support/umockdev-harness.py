#!/usr/bin/python3
"""umockdev-harness: emulated USB-serial devices (/dev/ttyUSB<k>, /dev/ttyACM<k>) for tests.

Runs a program under test against simulated instruments behind emulated ttys, so that the
program's REAL libserialport path (sp_list_ports, sp_open, sp_set_config, read/write) is
exercised. See /work/shared/protocols/emulated-hardware.md for why it is built this way.

What the testbed holds, per device: a usb_device (idVendor, idProduct, manufacturer, product,
serial, busnum, devnum, sysfs `descriptors`, a /dev/bus/usb/BBB/DDD placeholder file), its
interface, for ttyUSB a usb-serial port, and the tty with its `device` link, as on a real
machine. libserialport's sp_list_ports reports the tty as a USB port with VID/PID, serial,
manufacturer, product, bus and address; libusb lists the usb_device with its configuration
(opening it gives a plain file, so no transfers). Fixed for the whole run: a root hub
(1d6b:0002) per bus and a virtual tty, so /sys/class/tty and /sys/bus/usb never vanish.

Run with Debian's python (apt's python3-gi lives there). No umockdev-wrapper is needed: the
harness re-executes itself with libumockdev-preload.so.0 preloaded, which umockdev needs to send
uevents; the caller's LD_PRELOAD is kept for the program under test and the simulators.

    /usr/bin/python3 Tests/Support/umockdev-harness.py [OPTIONS] [-- PROGRAM [ARG...]]

OPTIONS
  --device SPEC       Declare an emulated device (repeatable; at least one). SPEC is a list
                      of key=value words, split like a shell line, e.g.
                        --device "name=ttyUSB0 vid=0403 pid=6001 serial=A10K1ABC
                                  manufacturer=FTDI 'product=FT232R USB UART' sim=echo"
                      Keys (all optional; k = the device's index, from 0):
                        name          ttyUSB<k>. ttyUSB* gets the usb-serial layout (FTDI-like,
                                      major 188); ttyACM* the CDC-ACM layout (major 166).
                        vid, pid      hex, default 0403 and 6001
                        manufacturer  default FTDI;  product: default "FT232R USB UART"
                        serial        default OPSIM<k:03d>
                        bus, devnum   decimal, default 1 and k+2. A replug takes the next unused
                                      devnum on the bus, as the kernel does.
                        port          the USB port path under usb<bus>, default k+1 ("1-2")
                        driver        default ftdi_sio (ttyUSB) / cdc_acm (ttyACM)
                        sim           how the device side is served, see SIMULATORS; default echo
  --sim NAME=SPEC     Same as sim=SPEC in --device NAME's spec, without nested quoting:
                        --sim 'ttyUSB0=exec:operando-sim zaber --stdio'
  --shim PATH         liboperando-modem-shim.so, preloaded before libumockdev-preload.so.0
                      (default: $OPERANDO_MODEM_SHIM). Without it libserialport's sp_open fails.
  --no-shim           Preload only libumockdev-preload.so.0 (to show what the shim is for).
  --control PATH      Listen on a Unix stream socket at PATH for CONTROL commands.
  --ready-file PATH   When everything is up, write a JSON object to PATH (atomically):
                      {"umockdev_dir", "ld_preload", "control", "devices": {NAME: {...}}}.
                      Removed again when the harness exits.
  --timeout SECONDS   Kill the program under test after SECONDS (exit status 124).
  --verbose           Log relay traffic and commands to stderr.

PROGRAM
  Started when every device is plugged and every simulator is running, with the harness's
  stdin/stdout/stderr and this environment added:
    UMOCKDEV_DIR=<testbed root>
    LD_PRELOAD=<shim>:libumockdev-preload.so.0[:<previous LD_PRELOAD>]
    OPERANDO_HARNESS_CONTROL=<control socket path>  (if --control)
    OPERANDO_HARNESS_DEVICES=/dev/ttyUSB0,...
  The harness exits with the program's exit status (128+N if killed by signal N). SIGINT,
  SIGTERM and SIGHUP sent to the harness are passed on to the program. Without a PROGRAM the
  harness runs until SIGINT/SIGTERM or the "quit" command and exits 0; start your own
  programs with the environment from --ready-file.

SIMULATORS (sim=...)
  The harness owns the pty master of every emulated tty and (except in {master} mode) relays
  bytes between it and the simulator, so it can cut the line, stop relaying, or inject bytes at
  any time. If a simulator cannot be started, the harness exits with status 2 at start-up, and
  a replug answers "error ..." and leaves the device plugged but silent.
    echo                Built in: every byte the host writes comes straight back.
    silent              Built in: reads and discards; never answers.
    tcp:HOST:PORT       Relay to a TCP server (connected at plug time, again at each replug).
    unix:PATH           Relay to a Unix stream socket server (same).
    exec:COMMAND...     Start COMMAND (split like a shell line; placeholders below) at plug
                        time, a fresh one at each replug, and stop it (SIGTERM, then SIGKILL
                        after 2 s) at unplug. How it is connected depends on the placeholders:
                          no {fd}/{link}: stdio mode. stdin and stdout are one end of a
                            socketpair; the simulator reads the host's bytes on stdin and writes
                            the device's bytes on stdout. Log to stderr only.
                          {fd}: replaced by the number of an inherited descriptor that is the
                            socketpair end (read and write it). stdin is /dev/null and stdout
                            goes to the harness's stderr.
                          {link}: replaced by a path the simulator must create as a symlink to
                            the slave side of a pty it owns (e.g. `operando-sim zaber --pty
                            {link}`). The harness waits up to 10 s for it, opens it raw and
                            relays to it. stdin is /dev/null, stdout goes to stderr.
                          {master}: direct mode. Replaced by the number of an inherited
                            descriptor that IS the emulated tty's pty master; the harness does not
                            relay. The simulator can read the host's line settings with
                            tcgetattr() on it (baud rate, parity: Linux answers with the tty's
                            termios). stop-answering then SIGSTOPs the simulator and
                            resume-answering SIGCONTs it (bytes the host sent meanwhile are
                            delivered late, not dropped); garbage still works.
                        Also replaced: {name} (ttyUSB0), {dev} (/dev/ttyUSB0), {serial}.
                        Placeholders can be parts of words: --port={fd}.
                        Simulators run without LD_PRELOAD/UMOCKDEV_DIR and with
                        OPERANDO_HARNESS_DEVICE=<name>.

CONTROL (one command per line on the --control socket; one answer line each: "ok[ DETAIL]"
or "error MESSAGE"; a connection may send any number of commands)
    ping                      ok
    status                    ok NAME=plugged|unplugged,answering|stopped,devnum=N,pts=/dev/pts/M ...
    unplug NAME               Hang up the tty (the program's open descriptor reads EOF, writes
                              fail with EIO, poll reports POLLHUP, exactly as when a real
                              ttyUSB is pulled), stop the simulator, remove the tty and its USB
                              parents from the testbed, and send "remove" uevents (children
                              first). sp_list_ports no longer lists it; opening it fails.
    replug NAME               Plug it back: new pty, a new devnum, sysfs entries, "add" uevents
                              (parents first), a new simulator (exec) or a new connection
                              (tcp/unix). The device answers again (answering is reset).
                              "plug" is an alias.
    stop-answering NAME       The device goes dumb: bytes from the host are read and dropped,
                              nothing the simulator sends reaches the host. The port stays open
                              and listed. (Direct mode: the simulator is SIGSTOPped.)
    resume-answering NAME     Relay again ("resume" is an alias).
    garbage NAME HEX          Inject these bytes on the device side (host reads them next).
    quit                      Stop the program under test (SIGTERM), then exit.
"""

import argparse
import gc
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tty

try:
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import GLib, UMockdev  # noqa: E402
except (ImportError, ValueError) as error:  # pragma: no cover - environment check
    sys.stderr.write(
        "umockdev-harness: cannot load umockdev's Python bindings (%s). Run scripts/install-deps.sh "
        "(needs umockdev, gir1.2-umockdev-1.0, python3-gi) and run this with /usr/bin/python3.\n" % error
    )
    sys.exit(3)

PRELOAD = "libumockdev-preload.so.0"
MAX_PENDING = 1 << 20  # bytes queued towards one side before the oldest are dropped
VERBOSE = False


def log(message):
    sys.stderr.write("umockdev-harness: %s\n" % message)
    sys.stderr.flush()


def trace(message):
    if VERBOSE:
        log(message)


class UsageError(Exception):
    pass


# ---- event loop ------------------------------------------------------------------------------


class Loop:
    """A single-threaded selector loop: every relay, the control socket and child exits."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.running = True

    def watch(self, fd, callback, write=False, read=True):
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        if not events:
            self.unwatch(fd)
            return
        try:
            self.selector.modify(fd, events, callback)
        except KeyError:
            self.selector.register(fd, events, callback)

    def unwatch(self, fd):
        try:
            self.selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def run_once(self, timeout):
        for key, mask in self.selector.select(timeout):
            key.data(mask)


class Channel:
    """One non-blocking descriptor with a write queue. on_data(bytes); on_eof()."""

    def __init__(self, loop, fd, name, on_data, on_eof, owns_fd=True, reading=True):
        self.loop, self.fd, self.name = loop, fd, name
        self.on_data, self.on_eof = on_data, on_eof
        self.owns_fd = owns_fd
        self.reading = reading
        self.pending = bytearray()
        self.dropped = 0
        self.closed = False
        # O_NONBLOCK belongs to the open file, which a direct-mode simulator shares: leave a
        # descriptor we do not read from blocking (its writes are only injected garbage).
        if reading:
            os.set_blocking(fd, False)
        loop.watch(fd, self._ready, read=reading)

    def _ready(self, mask):
        if self.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and not self.closed:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as error:
                trace("%s: read failed: %s" % (self.name, error))
                data = b""
            if data:
                self.on_data(data)
            else:
                self.on_eof()

    def send(self, data):
        if self.closed or not data:
            return
        self.pending += data
        if len(self.pending) > MAX_PENDING:
            excess = len(self.pending) - MAX_PENDING
            del self.pending[:excess]
            self.dropped += excess
            log("%s: reader not keeping up, dropped %d bytes (%d so far)" % (self.name, excess, self.dropped))
        self._flush()

    def _flush(self):
        while self.pending:
            try:
                written = os.write(self.fd, self.pending)
            except BlockingIOError:
                break
            except OSError as error:
                trace("%s: write failed: %s" % (self.name, error))
                self.pending.clear()
                break
            del self.pending[:written]
        if not self.closed:
            self.loop.watch(self.fd, self._ready, write=bool(self.pending), read=self.reading)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.loop.unwatch(self.fd)
        if self.owns_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass


# ---- simulators ------------------------------------------------------------------------------


class Simulator:
    """The device side of one emulated tty. send(bytes) carries host->device bytes; the
    simulator calls device.from_simulator(bytes) for device->host bytes."""

    def __init__(self, device):
        self.device = device

    def start(self):
        pass

    def send(self, data):
        pass

    def set_answering(self, answering):
        pass

    def stop(self):
        pass


class EchoSimulator(Simulator):
    def send(self, data):
        self.device.from_simulator(data)


class SilentSimulator(Simulator):
    pass


class SocketSimulator(Simulator):
    """Relays to a TCP or Unix stream server."""

    def __init__(self, device, family, address):
        super().__init__(device)
        self.family, self.address = family, address
        self.channel = None

    def start(self):
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:
            try:
                sock.connect(self.address)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    sock.close()
                    raise UsageError("%s: cannot connect to simulator at %s: %s" % (self.device.name, self.address, error))
                time.sleep(0.05)
        fd = sock.detach()
        self.channel = Channel(self.device.loop, fd, "%s/sim" % self.device.name,
                               self.device.from_simulator, self._eof)

    def _eof(self):
        log("%s: simulator at %s closed the connection" % (self.device.name, self.address))
        self.channel.close()

    def send(self, data):
        if self.channel:
            self.channel.send(data)

    def stop(self):
        if self.channel:
            self.channel.close()
            self.channel = None


class ExecSimulator(Simulator):
    """Starts a command per plug; stdio, {fd}, {link} or {master} mode (see the module doc)."""

    def __init__(self, device, command):
        super().__init__(device)
        self.template = shlex.split(command)
        if not self.template:
            raise UsageError("%s: exec: needs a command" % device.name)
        # {master}: the simulator gets the pty master itself and the harness does not relay.
        self.direct = "{master}" in " ".join(self.template)
        self.stopped = False
        self.process = None
        self.channel = None
        self.link_dir = None

    def _argv(self, fd, link):
        values = {"fd": str(fd) if fd is not None else "", "link": link or "", "master": str(self.device.master_fd),
                  "name": self.device.name,
                  "dev": "/dev/" + self.device.name, "serial": self.device.serial}
        argv = []
        for word in self.template:
            for key, value in values.items():
                word = word.replace("{%s}" % key, value)
            argv.append(word)
        return argv

    def start(self):
        joined = " ".join(self.template)
        env = clean_environment()
        env["OPERANDO_HARNESS_DEVICE"] = self.device.name
        if self.direct:
            argv = self._argv(None, None)
            trace("%s: starting %s (direct)" % (self.device.name, argv))
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                            pass_fds=(self.device.master_fd,), env=env)
            self.device.harness.children.add(self.process)
            return
        if "{link}" in joined:
            self.link_dir = self.device.harness.scratch_dir("sim-" + self.device.name)
            link = os.path.join(self.link_dir, "tty")
            argv = self._argv(None, link)
            trace("%s: starting %s" % (self.device.name, argv))
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env)
            self.device.harness.children.add(self.process)
            deadline = time.monotonic() + 10
            while not os.path.exists(link):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise UsageError("%s: simulator %s did not create %s" % (self.device.name, argv, link))
                time.sleep(0.02)
            fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            if os.isatty(fd):
                tty.setraw(fd)
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            if "{fd}" in joined:
                argv = self._argv(theirs.fileno(), None)
                trace("%s: starting %s" % (self.device.name, argv))
                self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                                                pass_fds=(theirs.fileno(),), env=env)
            else:
                argv = self._argv(None, None)
                trace("%s: starting %s" % (self.device.name, argv))
                self.process = subprocess.Popen(argv, stdin=theirs, stdout=theirs, env=env)
            theirs.close()
            fd = ours.detach()
        self.channel = Channel(self.device.loop, fd, "%s/sim" % self.device.name,
                               self.device.from_simulator, self._eof)
        self.device.harness.children.add(self.process)

    def _eof(self):
        log("%s: simulator closed its side (exit status %s)" % (self.device.name, self.process.poll()))
        self.channel.close()

    def send(self, data):
        if self.channel:
            self.channel.send(data)

    def set_answering(self, answering):
        """Direct mode: the harness is not in the data path, so it pauses the process."""
        if self.direct and self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT if answering else signal.SIGSTOP)
            self.stopped = not answering

    def stop(self):
        if self.channel:
            self.channel.close()
            self.channel = None
        if self.process:
            if self.stopped and self.process.poll() is None:
                self.process.terminate()
                self.process.send_signal(signal.SIGCONT)
            stop_process(self.process)
            self.device.harness.children.discard(self.process)
            self.process = None
        if self.link_dir:
            shutil.rmtree(self.link_dir, ignore_errors=True)
            self.link_dir = None


def caller_preload():
    """LD_PRELOAD as the harness was started with (before it added umockdev's preload)."""
    return os.environ.get("OPERANDO_HARNESS_CALLER_LD_PRELOAD", "")


def clean_environment():
    """The environment for simulators: as the harness was started, without the testbed."""
    env = dict(os.environ)
    env.pop("UMOCKDEV_DIR", None)
    env.pop("OPERANDO_HARNESS_CALLER_LD_PRELOAD", None)
    if caller_preload():
        env["LD_PRELOAD"] = caller_preload()
    else:
        env.pop("LD_PRELOAD", None)
    return env


def stop_process(process, grace=2.0):
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def make_simulator(device, spec):
    if spec == "echo":
        return EchoSimulator(device)
    if spec == "silent":
        return SilentSimulator(device)
    if spec.startswith("tcp:"):
        host, _, port = spec[4:].rpartition(":")
        if not host or not port.isdigit():
            raise UsageError("%s: sim=tcp:HOST:PORT expected, got %r" % (device.name, spec))
        return SocketSimulator(device, socket.AF_INET6 if ":" in host else socket.AF_INET, (host.strip("[]"), int(port)))
    if spec.startswith("unix:"):
        return SocketSimulator(device, socket.AF_UNIX, spec[5:])
    if spec.startswith("exec:"):
        return ExecSimulator(device, spec[5:])
    raise UsageError("%s: unknown sim=%r (echo, silent, tcp:HOST:PORT, unix:PATH, exec:COMMAND)" % (device.name, spec))


# ---- emulated devices ------------------------------------------------------------------------


class Device:
    def __init__(self, harness, index, spec):
        self.harness, self.loop = harness, harness.loop
        self.name = spec.pop("name", "ttyUSB%d" % index)
        digits = self.name.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        if self.name.startswith("ttyUSB") and digits.isdigit():
            self.kind, self.major = "usb-serial", 188
        elif self.name.startswith("ttyACM") and digits.isdigit():
            self.kind, self.major = "acm", 166
        else:
            raise UsageError("device name %r: expected ttyUSB<n> or ttyACM<n>" % self.name)
        self.minor = int(digits)
        self.vid = int(spec.pop("vid", "0403"), 16)
        self.pid = int(spec.pop("pid", "6001"), 16)
        self.manufacturer = spec.pop("manufacturer", "FTDI")
        self.product = spec.pop("product", "FT232R USB UART")
        self.serial = spec.pop("serial", "OPSIM%03d" % index)
        self.bus = int(spec.pop("bus", "1"))
        self.devnum = int(spec.pop("devnum", str(index + 2)))
        self.port = spec.pop("port", str(index + 1))
        self.driver = spec.pop("driver", "ftdi_sio" if self.kind == "usb-serial" else "cdc_acm")
        self.sim_spec = spec.pop("sim", "echo")
        if spec:
            raise UsageError("%s: unknown device keys %s" % (self.name, ", ".join(sorted(spec))))
        for value in (self.manufacturer, self.product, self.serial):
            if "\n" in value:
                raise UsageError("%s: attribute values must be one line" % self.name)
        self.plugged = False
        self.answering = True
        self.master = None  # Channel on the pty master (reads only when the harness relays)
        self.master_fd = None
        self.slave_fd = None  # held open so the master never sees EIO while the host is closed
        self.pts = None
        self.simulator = None
        self.syspaths = []  # parents first
        self.dropped_from_host = 0

    # sysfs layout, as on a real machine:
    #   /sys/devices/pci0000:00/0000:00:14.0/usb1/1-1                      usb_device
    #   .../1-1/1-1:1.0                                                      usb_interface
    #   .../1-1:1.0/ttyUSB0                                                  usb-serial port
    #   .../1-1:1.0/ttyUSB0/tty/ttyUSB0                                      tty (device -> ../../../ttyUSB0)
    # For ttyACM the tty sits directly under the interface: .../1-1:1.0/tty/ttyACM0.
    def description(self):
        usbdev = "/devices/pci0000:00/0000:00:14.0/usb%d/%d-%s" % (self.bus, self.bus, self.port)
        interface = "%s/%d-%s:1.0" % (usbdev, self.bus, self.port)
        acm = self.kind == "acm"
        descriptor = self.usb_descriptors().hex()
        blocks = [
            [
                "P: " + usbdev,
                "E: SUBSYSTEM=usb",
                "E: DEVTYPE=usb_device",
                "E: DRIVER=usb",
                "E: BUSNUM=%03d" % self.bus,
                "E: DEVNUM=%03d" % self.devnum,
                "E: DEVNAME=/dev/bus/usb/%03d/%03d" % (self.bus, self.devnum),
                "E: MAJOR=189",
                "E: MINOR=%d" % ((self.bus - 1) * 128 + self.devnum - 1),
                "E: PRODUCT=%x/%x/%x" % (self.vid, self.pid, 0x600),
                "E: TYPE=%s" % ("2/0/0" if acm else "0/0/0"),
                "E: ID_VENDOR_ID=%04x" % self.vid,
                "E: ID_MODEL_ID=%04x" % self.pid,
                "E: ID_SERIAL_SHORT=%s" % self.serial,
                "A: busnum=%d" % self.bus,
                "A: devnum=%d" % self.devnum,
                "A: devpath=%s" % self.port,
                "A: idVendor=%04x" % self.vid,
                "A: idProduct=%04x" % self.pid,
                "A: bcdDevice=0600",
                "A: bDeviceClass=%s" % ("02" if acm else "00"),
                "A: bDeviceSubClass=00",
                "A: bDeviceProtocol=00",
                "A: bNumConfigurations=1",
                "A: bConfigurationValue=1",
                "A: bNumInterfaces=%s" % ("2" if acm else " 1"),
                "A: bMaxPacketSize0=%d" % (64 if acm else 8),
                "A: speed=12",
                "A: version= 2.00",
                "A: maxchild=0",
                "A: manufacturer=" + self.manufacturer,
                "A: product=" + self.product,
                "A: serial=" + self.serial,
                "A: dev=189:%d" % ((self.bus - 1) * 128 + self.devnum - 1),
                "H: descriptors=" + descriptor,
                "N: bus/usb/%03d/%03d" % (self.bus, self.devnum),
            ],
            [
                "P: " + interface,
                "E: SUBSYSTEM=usb",
                "E: DEVTYPE=usb_interface",
                "E: DRIVER=" + self.driver,
                "E: INTERFACE=%s" % ("2/2/1" if acm else "255/255/255"),
                "A: bInterfaceNumber=00",
                "A: bAlternateSetting= 0",
                "A: bInterfaceClass=%s" % ("02" if acm else "ff"),
                "A: bInterfaceSubClass=%s" % ("02" if acm else "ff"),
                "A: bInterfaceProtocol=%s" % ("01" if acm else "ff"),
                "A: bNumEndpoints=%s" % ("01" if acm else "02"),
                "A: interface=" + self.product,
            ],
        ]
        if acm:
            tty_path = "%s/tty/%s" % (interface, self.name)
            link = "../../../%d-%s:1.0" % (self.bus, self.port)
        else:
            serial_port = "%s/%s" % (interface, self.name)
            blocks.append(["P: " + serial_port, "E: SUBSYSTEM=usb-serial", "E: DRIVER=" + self.driver,
                           "A: port_number=0"])
            tty_path = "%s/tty/%s" % (serial_port, self.name)
            link = "../../../%s" % self.name
        blocks.append([
            "P: " + tty_path,
            "E: SUBSYSTEM=tty",
            "E: DEVNAME=/dev/" + self.name,
            "E: MAJOR=%d" % self.major,
            "E: MINOR=%d" % self.minor,
            "E: ID_VENDOR_ID=%04x" % self.vid,
            "E: ID_MODEL_ID=%04x" % self.pid,
            "E: ID_SERIAL_SHORT=%s" % self.serial,
            "E: ID_BUS=usb",
            "A: dev=%d:%d" % (self.major, self.minor),
            "L: device=" + link,
        ])
        self.syspaths = ["/sys" + block[0][3:] for block in blocks]
        return "\n\n".join("\n".join(block) for block in blocks) + "\n"

    def usb_descriptors(self):
        """Device + configuration descriptors, as the kernel's sysfs `descriptors` file has them,
        so libusb can enumerate the device too (it cannot open it: there is no usbfs node)."""
        acm = self.kind == "acm"
        device = bytes([18, 1, 0x00, 0x02, 0x02 if acm else 0, 0, 0, 64 if acm else 8,
                        self.vid & 0xFF, self.vid >> 8, self.pid & 0xFF, self.pid >> 8, 0x00, 0x06, 1, 2, 3, 1])
        if acm:
            interfaces = (bytes([9, 4, 0, 0, 1, 2, 2, 1, 0]) + bytes([7, 5, 0x83, 3, 8, 0, 16])
                          + bytes([9, 4, 1, 0, 2, 10, 0, 0, 0]) + bytes([7, 5, 0x81, 2, 64, 0, 0])
                          + bytes([7, 5, 0x02, 2, 64, 0, 0]))
            count = 2
        else:
            interfaces = (bytes([9, 4, 0, 0, 2, 0xFF, 0xFF, 0xFF, 2]) + bytes([7, 5, 0x81, 2, 64, 0, 0])
                          + bytes([7, 5, 0x02, 2, 64, 0, 0]))
            count = 1
        total = 9 + len(interfaces)
        config = bytes([9, 2, total & 0xFF, total >> 8, count, 1, 0, 0xA0, 45]) + interfaces
        return device + config

    def node_path(self):
        return os.path.join(self.harness.root, "dev", self.name)

    def ptymap_path(self):
        return os.path.join(self.harness.root, "dev", ".ptymap", self.pts.replace("/", "_"))

    def plug(self):
        testbed = self.harness.testbed
        # The pty is made here, not by umockdev (an N: line): umockdev keeps its own table of
        # pty masters that remove_device() does not clear, so re-adding /dev/ttyUSB0 after an
        # unplug would trip its assertion. The node and the pty map are what umockdev would
        # write: <root>/dev/NAME -> /dev/pts/M and <root>/dev/.ptymap/_dev_pts_M -> MAJ:MIN.
        # They are made before the sysfs entries, so the node exists when the "add" uevent
        # for the tty goes out.
        master, slave = os.openpty()
        self.pts = os.ttyname(slave)
        tty.setraw(slave)  # no echo, no line editing, no CR/NL translation until the host sets its own
        os.makedirs(os.path.dirname(self.ptymap_path()), exist_ok=True)
        for path in (self.node_path(), self.ptymap_path()):
            if os.path.lexists(path):
                os.unlink(path)
        os.symlink(self.pts, self.node_path())
        os.symlink("%d:%d" % (self.major, self.minor), self.ptymap_path())
        self.slave_fd = slave
        self.master_fd = master
        self.simulator = make_simulator(self, self.sim_spec)
        relaying = not getattr(self.simulator, "direct", False)
        self.master = Channel(self.loop, master, "%s/master" % self.name, self.from_host, self._master_eof,
                              reading=relaying)
        self.answering = True
        self.plugged = True
        failure = None
        try:
            self.simulator.start()
        except (UsageError, OSError) as error:  # plug anyway, as a device that never answers
            self.simulator = SilentSimulator(self)
            failure = error
        # Sends the "add" uevents itself, parents first, because the harness runs under the
        # umockdev preload (see main()).
        testbed.add_from_string(self.description())
        trace("%s: plugged (%s, devnum %d)" % (self.name, self.pts, self.devnum))
        if failure:
            raise UsageError("%s is plugged but its simulator did not start: %s" % (self.name, failure))

    def unplug(self):
        # Hang up first, as the kernel does: the host's open descriptor sees EOF/EIO/POLLHUP.
        self.master.close()
        self.master = None
        self.master_fd = None
        os.close(self.slave_fd)
        self.slave_fd = None
        self.simulator.stop()
        self.simulator = None
        testbed = self.harness.testbed
        for syspath in reversed(self.syspaths):  # children first
            testbed.uevent(syspath, "remove")
            testbed.remove_device(syspath)
        for path in (self.node_path(), self.ptymap_path()):
            if os.path.lexists(path):
                os.unlink(path)
        self.plugged = False
        trace("%s: unplugged" % self.name)

    def from_host(self, data):
        if self.answering:
            trace("%s: host -> device %s" % (self.name, data.hex()))
            self.simulator.send(data)
        else:
            self.dropped_from_host += len(data)
            trace("%s: host -> device %s (dropped: not answering)" % (self.name, data.hex()))

    def from_simulator(self, data):
        if self.answering and self.master:
            trace("%s: device -> host %s" % (self.name, data.hex()))
            self.master.send(data)
        else:
            trace("%s: device -> host %s (dropped)" % (self.name, data.hex()))

    def inject(self, data):
        if self.master:
            trace("%s: injected -> host %s" % (self.name, data.hex()))
            self.master.send(data)

    def _master_eof(self):
        # Cannot happen while we hold the slave open; if it does, stop watching.
        log("%s: pty master reported end of file" % self.name)
        self.master.close()

    def status(self):
        return "%s=%s,%s,devnum=%d,pts=%s" % (self.name, "plugged" if self.plugged else "unplugged",
                                              "answering" if self.answering else "stopped", self.devnum,
                                              self.pts if self.plugged else "-")


# ---- the harness -----------------------------------------------------------------------------


class Harness:
    def __init__(self, options):
        self.options = options
        self.loop = Loop()
        self.children = set()
        self.program = None
        self.exit_status = 0
        self.testbed = UMockdev.Testbed.new()
        self.root = self.testbed.get_root_dir()
        self.devices = {}
        self.control_server = None
        self.control_path = options.control
        self.last_devnum = {}

    def scratch_dir(self, name):
        path = os.path.join(self.root, ".harness", name)
        os.makedirs(path, exist_ok=True)
        return path

    def preload(self):
        parts = [] if self.options.no_shim else [self.options.shim]
        parts.append(PRELOAD)
        if caller_preload():
            parts.append(caller_preload())
        return ":".join(parts)

    def setup(self, device_specs):
        for index, spec in enumerate(device_specs):
            device = Device(self, index, spec)
            if device.name in self.devices:
                raise UsageError("device %s declared twice" % device.name)
            self.devices[device.name] = device
        self.add_fixed_devices()
        for device in self.devices.values():
            device.plug()
        if self.control_path:
            if os.path.lexists(self.control_path):
                os.unlink(self.control_path)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.control_path)
            server.listen(8)
            server.setblocking(False)
            self.control_server = server
            self.loop.watch(server.fileno(), self._accept)

    def next_devnum(self, bus):
        """A replugged device gets the next unused address on its bus, as with the kernel."""
        taken = [d.devnum for d in self.devices.values() if d.bus == bus]
        self.last_devnum[bus] = max([self.last_devnum.get(bus, 1)] + taken) + 1
        return self.last_devnum[bus]

    def add_fixed_devices(self):
        """What every real machine has and an unplug must not take away: a virtual tty (so
        /sys/class/tty exists when no emulated tty is plugged; sp_list_ports fails without it,
        and skips "virtual" ttys) and a root hub per USB bus (so /sys/bus/usb stays)."""
        blocks = [["P: /devices/virtual/tty/console", "E: SUBSYSTEM=tty", "A: dev=5:1"]]
        for bus in sorted({device.bus for device in self.devices.values()}):
            hub_device = bytes([18, 1, 0x00, 0x02, 9, 0, 1, 64, 0x6B, 0x1D, 0x02, 0x00, 0x01, 0x06, 3, 2, 1, 1])
            hub_config = (bytes([9, 2, 25, 0, 1, 1, 0, 0xE0, 0]) + bytes([9, 4, 0, 0, 1, 9, 0, 0, 0])
                          + bytes([7, 5, 0x81, 3, 4, 0, 12]))
            blocks.append([
                "P: /devices/pci0000:00/0000:00:14.0/usb%d" % bus,
                "E: SUBSYSTEM=usb",
                "E: DEVTYPE=usb_device",
                "E: DRIVER=usb",
                "E: BUSNUM=%03d" % bus,
                "E: DEVNUM=001",
                "E: DEVNAME=/dev/bus/usb/%03d/001" % bus,
                "E: MAJOR=189",
                "E: MINOR=%d" % ((bus - 1) * 128),
                "A: busnum=%d" % bus,
                "A: devnum=1",
                "A: devpath=0",
                "A: idVendor=1d6b",
                "A: idProduct=0002",
                "A: bcdDevice=0601",
                "A: bDeviceClass=09",
                "A: bNumConfigurations=1",
                "A: bConfigurationValue=1",
                "A: bNumInterfaces= 1",
                "A: bMaxPacketSize0=64",
                "A: speed=480",
                "A: version= 2.00",
                "A: maxchild=%d" % max(4, len(self.devices)),
                "A: manufacturer=Linux xhci-hcd",
                "A: product=xHCI Host Controller",
                "A: serial=0000:00:14.0",
                "A: dev=189:%d" % ((bus - 1) * 128),
                "H: descriptors=" + (hub_device + hub_config).hex(),
                "N: bus/usb/%03d/001" % bus,
            ])
        self.testbed.add_from_string("\n\n".join("\n".join(block) for block in blocks) + "\n")

    def environment(self):
        env = clean_environment()
        env["UMOCKDEV_DIR"] = self.root
        env["LD_PRELOAD"] = self.preload()
        env["OPERANDO_HARNESS_DEVICES"] = ",".join("/dev/" + name for name in self.devices)
        if self.control_path:
            env["OPERANDO_HARNESS_CONTROL"] = self.control_path
        return env

    def write_ready_file(self):
        if not self.options.ready_file:
            return
        info = {
            "umockdev_dir": self.root,
            "ld_preload": self.preload(),
            "control": self.control_path,
            "devices": {name: {"dev": "/dev/" + name, "pts": d.pts, "vid": "%04x" % d.vid, "pid": "%04x" % d.pid,
                               "serial": d.serial, "bus": d.bus, "devnum": d.devnum}
                        for name, d in self.devices.items()},
        }
        temporary = self.options.ready_file + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(info, handle)
        os.rename(temporary, self.options.ready_file)

    # -- control socket

    def _accept(self, mask):
        try:
            connection, _ = self.control_server.accept()
        except BlockingIOError:
            return
        buffer = bytearray()
        fd = connection.detach()
        channel = None

        def on_data(data):
            buffer.extend(data)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                reply = self.command(line.decode("utf-8", "replace").strip())
                channel.send((reply + "\n").encode())

        def on_eof():
            channel.close()

        channel = Channel(self.loop, fd, "control", on_data, on_eof)

    def command(self, line):
        words = line.split()
        if not words:
            return "error empty command"
        verb, arguments = words[0], words[1:]
        trace("control: %s" % line)
        try:
            if verb == "ping":
                return "ok"
            if verb == "status":
                return "ok " + " ".join(d.status() for d in self.devices.values())
            if verb == "quit":
                self.stop_program()
                self.loop.running = False
                return "ok"
            if not arguments:
                return "error %s needs a device name" % verb
            device = self.devices.get(arguments[0])
            if device is None:
                return "error no device %s (have %s)" % (arguments[0], ", ".join(self.devices))
            if verb == "unplug":
                if not device.plugged:
                    return "error %s is already unplugged" % device.name
                device.unplug()
                return "ok"
            if verb in ("replug", "plug"):
                if device.plugged:
                    return "error %s is plugged; unplug it first" % device.name
                device.devnum = self.next_devnum(device.bus)
                device.plug()
                return "ok devnum=%d pts=%s" % (device.devnum, device.pts)
            if verb in ("stop-answering", "resume-answering", "resume"):
                if not device.plugged:
                    return "error %s is unplugged" % device.name
                device.answering = verb != "stop-answering"
                device.simulator.set_answering(device.answering)
                return "ok"
            if verb == "garbage":
                if len(arguments) != 2:
                    return "error usage: garbage NAME HEX"
                if not device.plugged:
                    return "error %s is unplugged" % device.name
                device.inject(bytes.fromhex(arguments[1]))
                return "ok"
            return "error unknown command %s" % verb
        except (ValueError, OSError, GLib.Error, UsageError) as error:
            return "error %s" % error

    # -- the program under test

    def start_program(self, argv):
        self.program = subprocess.Popen(argv, env=self.environment())
        self.children.add(self.program)
        try:
            pidfd = os.pidfd_open(self.program.pid)
        except (AttributeError, OSError):
            pidfd = None
        if pidfd is not None:
            self.program_pidfd = pidfd
            self.loop.watch(pidfd, lambda mask: self._program_exited())

    def _program_exited(self):
        if self.program.poll() is None:
            return
        code = self.program.returncode
        self.exit_status = 128 - code if code < 0 else code
        trace("program exited with status %d" % self.exit_status)
        self.loop.running = False

    def stop_program(self, sig=signal.SIGTERM):
        if self.program and self.program.poll() is None:
            self.program.send_signal(sig)

    def run(self, argv):
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        received = []

        def on_signal(number, frame):
            received.append(number)

        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, on_signal)
        self.loop.watch(wake_read.fileno(), lambda mask: wake_read.recv(512))

        if argv:
            self.start_program(argv)
        log("ready: %s (UMOCKDEV_DIR=%s)" % (" ".join(d.status() for d in self.devices.values()), self.root))
        self.write_ready_file()
        deadline = time.monotonic() + self.options.timeout if self.options.timeout else None
        while self.loop.running:
            self.loop.run_once(0.25)
            while received:
                number = received.pop(0)
                if self.program and self.program.poll() is None:
                    self.program.send_signal(number)
                else:
                    self.loop.running = False
            if self.program is not None:
                self._program_exited()
            if deadline and time.monotonic() > deadline and self.program and self.program.poll() is None:
                log("program under test still running after %ss: killing it" % self.options.timeout)
                self.program.kill()
                self.program.wait()
                self.exit_status = 124
                self.loop.running = False
        if self.program and self.program.poll() is None:
            stop_process(self.program, grace=5)
            self._program_exited()
        return self.exit_status

    def cleanup(self):
        for device in self.devices.values():
            if device.simulator:
                try:
                    device.simulator.stop()
                except Exception as error:  # keep cleaning up
                    log("%s: stopping simulator: %s" % (device.name, error))
        for child in list(self.children):
            stop_process(child)
        if self.control_server:
            self.control_server.close()
            try:
                os.unlink(self.control_path)
            except OSError:
                pass
        if self.options.ready_file:
            try:
                os.unlink(self.options.ready_file)  # "ready" means running; never leave it stale
            except OSError:
                pass
        # The testbed removes its directory when it is finalized; removing it first makes
        # umockdev abort.
        self.testbed = None
        gc.collect()
        shutil.rmtree(self.root, ignore_errors=True)


def parse_device(text):
    spec = {}
    for word in shlex.split(text):
        key, equals, value = word.partition("=")
        if not equals:
            raise UsageError("--device: expected key=value, got %r" % word)
        spec[key] = value
    return spec


def main(arguments):
    global VERBOSE
    # The harness itself must run under libumockdev-preload: umockdev's uevent sender looks
    # devices up through libudev, which only finds the testbed's /sys through the preload.
    # Re-execute under it (what umockdev-wrapper does), remembering the caller's LD_PRELOAD.
    current = os.environ.get("LD_PRELOAD", "")
    if PRELOAD not in current.split(":"):
        env = dict(os.environ)
        env["OPERANDO_HARNESS_CALLER_LD_PRELOAD"] = current
        env["LD_PRELOAD"] = PRELOAD + (":" + current if current else "")
        env.pop("UMOCKDEV_DIR", None)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + arguments, env)
    argv = []
    if "--" in arguments:
        split = arguments.index("--")
        arguments, argv = arguments[:split], arguments[split + 1:]
    parser = argparse.ArgumentParser(prog="umockdev-harness.py", description="Emulated USB-serial devices for tests; see the file's header.")
    parser.add_argument("--device", action="append", default=[], metavar="SPEC")
    parser.add_argument("--sim", action="append", default=[], metavar="NAME=SPEC")
    parser.add_argument("--shim", default=os.environ.get("OPERANDO_MODEM_SHIM"))
    parser.add_argument("--no-shim", action="store_true")
    parser.add_argument("--control")
    parser.add_argument("--ready-file")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--verbose", action="store_true")
    options = parser.parse_args(arguments)
    VERBOSE = options.verbose
    try:
        if not options.device:
            raise UsageError("declare at least one --device")
        if not options.no_shim:
            if not options.shim:
                raise UsageError("--shim PATH (or $OPERANDO_MODEM_SHIM) is required unless --no-shim")
            options.shim = os.path.abspath(options.shim)
            if not os.path.isfile(options.shim):
                raise UsageError("--shim %s: no such file (build it: swift build --product operando-modem-shim)" % options.shim)
        specs = [parse_device(text) for text in options.device]
        for index, spec in enumerate(specs):
            spec.setdefault("name", "ttyUSB%d" % index)
        for text in options.sim:
            name, equals, sim = text.partition("=")
            matches = [spec for spec in specs if spec["name"] == name]
            if not equals or not matches:
                raise UsageError("--sim %r: expected NAME=SPEC for a declared device" % text)
            matches[0]["sim"] = sim
    except UsageError as error:
        log(str(error))
        return 2
    harness = Harness(options)
    try:
        harness.setup(specs)
        return harness.run(argv)
    except (UsageError, GLib.Error, OSError) as error:
        log("error: %s" % error)
        return 2
    finally:
        harness.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
