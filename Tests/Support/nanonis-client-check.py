#!/usr/bin/env python3
"""Peer-client check (DESIGN.md, testing level 4): the official Nanonis client, `nanonis_spm`
from PyPI, drives the operandod Nanonis simulator over TCP, calling each function exactly as the
client's own methods do (their argument lists and response types), and checks what comes back.

Usage: nanonis-client-check.py HOST PORT

Prints a JSON summary (one line, last) and exits 0 when every check passed, 1 otherwise.
"""

import json
import math
import socket
import sys
import time

import nanonis_spm


class Check:
    def __init__(self, client):
        self.client = client
        self.problems = []
        self.results = {}

    def call(self, label, method, *args, expect_error=False):
        """Calls one client method; the client returns (error string, raw body, values), or ()
        when the response header named another command."""
        try:
            result = method(*args)
        except Exception as e:  # the client raises on a body it cannot parse
            self.problems.append(f"{label}: the client raised {type(e).__name__}: {e}")
            return None
        if not result:
            self.problems.append(f"{label}: no data returned (the response header did not name the command)")
            return None
        error, _, values = result
        if expect_error:
            if not error:
                self.problems.append(f"{label}: expected an error reply, got none")
            self.results[label] = {"error": error}
            return error
        if error:
            self.problems.append(f"{label}: the simulator replied with an error: {error!r}")
            return None
        return values

    def expect(self, label, condition, detail):
        if not condition:
            self.problems.append(f"{label}: {detail}")

    def close(self, label, value, wanted, rel=1e-5):
        self.expect(label, value is not None and math.isclose(float(value), wanted, rel_tol=rel, abs_tol=1e-15),
                    f"got {value!r}, expected {wanted!r}")


def flat(values):
    """The client returns 1D arrays as lists of 1-tuples."""
    return [v[0] if isinstance(v, tuple) else v for v in values]


def main():
    if len(sys.argv) != 3:
        print("usage: nanonis-client-check.py HOST PORT", file=sys.stderr)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    connection = socket.create_connection((host, port), timeout=30)
    client = nanonis_spm.Nanonis(connection)
    c = Check(client)

    # Bias.Set / Bias.Get
    c.call("Bias.Set", client.Bias_Set, 0.5)
    v = c.call("Bias.Get", client.Bias_Get)
    if v is not None:
        c.close("Bias.Get", v[0], 0.5)
        c.results["Bias.Get"] = v[0]
    # A bias outside ±10 V: the controller's error reply (status and description).
    c.call("Bias.Set out of range", client.Bias_Set, 50.0, expect_error=True)

    # Signals.NamesGet / Signals.ValsGet
    v = c.call("Signals.NamesGet", client.Signals_NamesGet)
    if v is not None:
        size, count, names = v
        c.expect("Signals.NamesGet", count == 128 and len(names) == 128, f"{count} names, {len(names)} decoded")
        c.expect("Signals.NamesGet", size == sum(4 + len(n) for n in names), f"byte size {size} does not cover the names")
        c.expect("Signals.NamesGet", names[:1] == ["Current (A)"] and names[30] == "Z (m)", f"names {names[:2]}… {names[30]!r}")
        c.results["Signals.NamesGet"] = {"count": count, "0": names[0], "24": names[24], "30": names[30]}
    v = c.call("Signals.ValsGet", client.Signals_ValsGet, [24, 0, 30], 0)
    if v is not None:
        count, values = v[0], flat(v[1])
        c.expect("Signals.ValsGet", count == 3 and len(values) == 3, f"{count} values: {values}")
        if len(values) == 3:
            c.close("Signals.ValsGet bias", values[0], 0.5)
            c.expect("Signals.ValsGet", all(math.isfinite(x) for x in values), f"values {values}")
        c.results["Signals.ValsGet"] = values

    # Configure while stopped: Scan.BufferSet/Get, Scan.FrameSet/Get, Scan.SpeedSet/Get
    c.call("Scan.Action stop", client.Scan_Action, 1, 0)
    c.call("Scan.BufferSet", client.Scan_BufferSet, [30, 0, 74], 64, 16)
    v = c.call("Scan.BufferGet", client.Scan_BufferGet)
    if v is not None:
        c.expect("Scan.BufferGet", v[0] == 3 and flat(v[1]) == [30, 0, 74] and v[2] == 64 and v[3] == 16, f"got {v}")
        c.results["Scan.BufferGet"] = [v[0], flat(v[1]), v[2], v[3]]
    c.call("Scan.FrameSet", client.Scan_FrameSet, 1e-7, -2e-7, 1e-6, 0.25e-6, 0.0)
    v = c.call("Scan.FrameGet", client.Scan_FrameGet)
    if v is not None:
        for got, wanted in zip(v, [1e-7, -2e-7, 1e-6, 0.25e-6, 0.0]):
            c.close("Scan.FrameGet", got, wanted)
        c.results["Scan.FrameGet"] = list(v)
    c.call("Scan.SpeedSet", client.Scan_SpeedSet, 2e-5, 2e-5, 0.05, 0.05, 1, 1.0)
    v = c.call("Scan.SpeedGet", client.Scan_SpeedGet)
    if v is not None:
        c.close("Scan.SpeedGet forward speed", v[0], 2e-5)
        c.close("Scan.SpeedGet backward speed", v[1], 2e-5)
        c.close("Scan.SpeedGet forward time", v[2], 0.05)
        c.expect("Scan.SpeedGet", v[4] == 0, f"keep parameter {v[4]} (0 = linear speed kept)")
        c.results["Scan.SpeedGet"] = list(v)

    # Scan.Action start, Scan.StatusGet, Scan.WaitEndOfScan (times out), Scan.FrameDataGrab
    c.call("Scan.Action start", client.Scan_Action, 0, 1)
    v = c.call("Scan.StatusGet", client.Scan_StatusGet)
    if v is not None:
        c.expect("Scan.StatusGet", v[0] == 1, f"status {v[0]} while scanning")
    v = c.call("Scan.WaitEndOfScan", client.Scan_WaitEndOfScan, 100)
    if v is not None:
        c.expect("Scan.WaitEndOfScan", v[0] == 1 and v[1] == 0 and v[2] == "", f"got {v} (a 16-line frame takes 1.6 s)")
    grab = None
    for _ in range(100):
        v = c.call("Scan.FrameDataGrab", client.Scan_FrameDataGrab, 30, 1)
        if v is None:
            break
        grab = v
        data = v[4]
        if any(all(math.isfinite(x) for x in row) for row in data):
            break
        time.sleep(0.05)
    if grab is not None:
        name_size, name, rows, cols, data, direction = grab
        c.expect("Scan.FrameDataGrab", name == "Z (m)" and name_size == len(name), f"channel {name!r} ({name_size})")
        c.expect("Scan.FrameDataGrab", (rows, cols) == (16, 64) and data.shape == (16, 64), f"{rows}×{cols}, array {data.shape}")
        c.expect("Scan.FrameDataGrab", direction == 1, f"direction {direction} (started up)")
        finite = [all(math.isfinite(x) for x in row) for row in data]
        unscanned = [all(math.isnan(x) for x in row) for row in data]
        c.expect("Scan.FrameDataGrab", finite[-1], "scanning up, the last row is scanned first")
        c.expect("Scan.FrameDataGrab", unscanned[0], "the top row is not scanned yet: NaN")
        c.results["Scan.FrameDataGrab"] = {"name": name, "rows": rows, "cols": cols, "scanned_rows": sum(finite),
                                           "nan_rows": sum(unscanned), "direction": direction}
    v = c.call("Scan.FrameDataGrab backward", client.Scan_FrameDataGrab, 0, 0)
    if v is not None:
        c.expect("Scan.FrameDataGrab backward", v[1] == "Current (A)", f"channel {v[1]!r}")
    c.call("Scan.FrameDataGrab of a channel not acquired", client.Scan_FrameDataGrab, 99, 1, expect_error=True)
    c.call("Scan.Action stop", client.Scan_Action, 1, 0)
    v = c.call("Scan.StatusGet", client.Scan_StatusGet)
    if v is not None:
        c.expect("Scan.StatusGet", v[0] == 0, f"status {v[0]} after stop")
        c.results["Scan.StatusGet after stop"] = v[0]
    # FolMe.XYPosSet / XYPosGet: the tip position (m, float64).
    c.call("FolMe.XYPosSet", client.FolMe_XYPosSet, 1.5e-7, -2.5e-8, 1)
    v = c.call("FolMe.XYPosGet", client.FolMe_XYPosGet, 1)
    if v is not None:
        c.close("FolMe.XYPosGet X", v[0], 1.5e-7)
        c.close("FolMe.XYPosGet Y", v[1], -2.5e-8)
        c.results["FolMe.XYPosGet"] = [v[0], v[1]]
    c.call("FolMe.XYPosSet out of range", client.FolMe_XYPosSet, 1.0, 0.0, 1, expect_error=True)
    # Not called: Scan_PropsGet (nanonis-spm 1.0.9 cannot parse any reply to it: for the "*+i"
    # in its response types it adds the previous value, a list, to an int) and Util_VersionGet
    # (its "+*c" response types are not a format struct knows).

    connection.close()
    summary = {"ok": not c.problems, "problems": c.problems, "results": c.results}
    print(json.dumps(summary, default=str))
    return 0 if not c.problems else 1


if __name__ == "__main__":
    sys.exit(main())
