#!/usr/bin/python3
"""umockdev-harness: emulated USB-serial devices (/dev/ttyUSB<k>, /dev/ttyACM<k>) and emulated
libusb devices (/dev/bus/usb/BBB/DDD) for tests.

Runs a program under test against simulated instruments behind emulated ttys, so that the
program's REAL libserialport path (sp_list_ports, sp_open, sp_set_config, read/write) is
exercised, and behind emulated USB devices, so that its REAL libusb-1.0 path (enumeration, open,
claim, control, bulk and interrupt transfers, asynchronous transfers with several in flight,
timeouts, hotplug) is exercised. See /work/shared/protocols/emulated-hardware.md for why it is
built this way, and USB DEVICES below.

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
  --device SPEC       Declare an emulated tty (repeatable; at least one --device or
                      --usb-device). SPEC is a list of key=value words, split like a shell
                      line, e.g.
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
  --usb-device SPEC   Declare an emulated libusb device (repeatable; see USB DEVICES). SPEC is
                      key=value words like --device, e.g.
                        --usb-device "name=amptek0 vid=10c4 pid=842a serial=DPP12345
                                      manufacturer=Amptek 'product=PX5 DPP'"
                      Keys (all optional; k = the USB device's index, from 0):
                        name          a label for control commands, default usb<k>
                        vid, pid      hex, default 1209 and 0001
                        manufacturer  default Operando; product: default "Emulated USB device";
                        serial        default OPUSB<k:03d> (string descriptors 1, 2, 3; an empty
                                      serial means iSerialNumber 0)
                        bus, devnum   decimal; default bus 1 and the next free address after
                                      every device declared before. A replug takes the next
                                      unused devnum on the bus, as the kernel does.
                        port          sysfs port path under usb<bus>, default the next free one
                        speed         1.5, 12 or 480 (default 480: high speed)
                        class         bInterfaceClass of interface 0, hex, default ff
                        endpoints     comma list of ADDR[:TYPE[:MAXPACKET]] for interface 0, hex
                                      addresses, TYPE bulk (default) or int; default "02,81"
                                      (bulk OUT 0x02, bulk IN 0x81, wMaxPacketSize 512 at high
                                      speed, 64 at full speed; interrupt: 64, bInterval 4)
                        node          fifo (default) or file, see USB DEVICES
                        sim           see USB SIMULATORS; default echo
  --usb-sim NAME=SPEC Same as sim=SPEC in --usb-device NAME's spec.
  --usb-memory direct|ioctl
                      How the ioctl handler reads and writes URBs and buffers in the program
                      under test: "direct" (default) with process_vm_readv/writev when exactly
                      one process holds the device node open, else umockdev's IoctlData (one
                      socket round trip per access); "ioctl" always uses IoctlData.
  --timer-slack-ns N  Timer slack (PR_SET_TIMERSLACK) the program under test and the simulators
                      inherit, default 1. umockdev's preload ends every emulated ioctl with
                      usleep(0), which sleeps up to the timer slack (50 us by default): with it,
                      USB transfer rates drop by a third. 0 keeps the inherited value.
  --shim PATH         liboperando-modem-shim.so, preloaded before libumockdev-preload.so.0
                      (default: $OPERANDO_MODEM_SHIM). Without it libserialport's sp_open fails.
                      Required when a --device is declared; optional with USB devices only.
  --no-shim           Preload only libumockdev-preload.so.0 (to show what the shim is for).
  --control PATH      Listen on a Unix stream socket at PATH for CONTROL commands.
  --ready-file PATH   When everything is up, write a JSON object to PATH (atomically):
                      {"umockdev_dir", "ld_preload", "control", "devices": {NAME: {...}}}.
                      ttys: {"kind": "tty", "dev", "pts", "vid", "pid", "serial", "bus",
                      "devnum"}; USB devices: {"kind": "usb", "vid", "pid", "serial",
                      "manufacturer", "product", "bus", "busnum", "devnum", "devnode"} as at
                      start-up (a replug changes devnum and devnode: see "status").
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
    OPERANDO_HARNESS_USB_DEVICES=amptek0=/dev/bus/usb/001/004,...  (if --usb-device; at start)
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

USB DEVICES (--usb-device)
  Each is a usb_device with its sysfs attributes (busnum, devnum, devpath, idVendor, idProduct,
  bcdDevice, manufacturer, product, serial, speed, bConfigurationValue, bNumConfigurations,
  bNumInterfaces, bMaxPacketSize0, `descriptors` = device + configuration + interface + endpoint
  descriptors built from the spec), one interface 1.0 without a kernel driver, and the node
  /dev/bus/usb/BBB/DDD with an interactive umockdev ioctl handler (attached before the "add"
  uevent). libusb lists it (with hotplug events), opens it and talks usbfs to the handler:
    GET_CAPABILITIES      ZERO_PACKET, BULK_CONTINUATION, NO_PACKET_SIZE_LIM, BULK_SCATTER_GATHER
                          (so libusb submits one URB per transfer), REAP_AFTER_DISCONNECT,
                          DROP_PRIVILEGES, CONNINFO_EX
    CLAIMINTERFACE, RELEASEINTERFACE, DISCONNECT_CLAIM   interface 0 (EBUSY if another open
                          descriptor holds it; ENOENT for other interfaces)
    SETCONFIGURATION, SETINTERFACE, CLEAR_HALT, RESETEP, RESET, CONNECTINFO, CONNINFO_EX,
    GET_SPEED, DROP_PRIVILEGES, FORBID/ALLOW_SUSPEND, WAIT_FOR_RESUME   answered as the kernel
    GETDRIVER             ENODATA (no kernel driver bound)
    IOCTL DISCONNECT/CONNECT   ENODATA (nothing to detach or attach)
    CONTROL (synchronous) standard requests as below; BULK (synchronous) is not emulated: ENOTTY
    SUBMITURB             control (endpoint 0): standard requests are answered by the device
                            itself: GET_DESCRIPTOR device, configuration, device qualifier,
                            string 0 (LANGID 0x0409) and 1, 2, 3 (manufacturer, product, serial
                            in UTF-16LE); GET_STATUS; GET/SET_CONFIGURATION; GET/SET_INTERFACE;
                            CLEAR/SET_FEATURE. Anything else, class and vendor requests included,
                            completes with -EPIPE (a stall: LIBUSB_ERROR_PIPE).
                          bulk/interrupt OUT: the payload goes to the simulator; the URB completes
                            when the simulator has taken it (at once, unless its socket is full:
                            then the device NAKs and the host's timeout applies)
                          bulk/interrupt IN on the first bulk IN endpoint: queued until the
                            simulator has a message for it. Other IN endpoints never complete.
    REAPURBNDELAY, REAPURB   completed URBs in completion order; EAGAIN when none (REAPURB waits)
    DISCARDURB            0, and the URB is then reaped with -ENOENT; EINVAL for a URB that is
                          not in flight (already complete: libusb then waits to reap it)
  How the host learns that a URB is reapable: libusb polls the usbfs descriptor for POLLOUT.
  umockdev's own USB nodes are plain files, always writable, so libusb's event loop would spin
  on REAPURBNDELAY -> EAGAIN (thousands of wakeups a second, ~40% CPU in the program and more
  in the harness). The node is therefore a FIFO (node=fifo, the default) whose one-page pipe the
  harness keeps full while nothing is reapable and empties when a URB completes, so the
  program's poll() wakes exactly when there is something to reap. node=file keeps umockdev's
  plain file, to measure that difference.
  Unplug: URBs in flight complete with -ESHUTDOWN (what the host controller gives;
  libusb: LIBUSB_TRANSFER_NO_DEVICE), the host reaps them, then REAPURBNDELAY and every other
  ioctl on the old descriptor fail with ENODEV (libusb: LIBUSB_ERROR_NO_DEVICE). The node and
  sysfs entries go with "remove" uevents, so libusb drops the device from its list and fires
  hotplug "left". Not emulated: POLLERR on the old descriptor (a FIFO the program opened
  read-write cannot report it), so libusb does not call its own disconnect handling; transfers
  end through the -ESHUTDOWN reaps instead, with the same statuses.

USB SIMULATORS (sim=...)
  A USB simulator sees transfers, not a byte stream: each bulk/interrupt OUT transfer's payload
  is ONE message to the simulator (a zero-length transfer is an empty message); each message
  the simulator sends is ONE bulk IN transfer's payload on the first bulk IN endpoint, queued
  until the host has an IN URB there. A message longer than that URB's buffer fills it and the
  rest goes to the next IN URB (never mixed with the next message), as a device whose transfer
  does not fit goes on sending packets; a shorter one is a short transfer. Messages up to 1 MiB.
    echo                Built in: each bulk OUT transfer comes back as one bulk IN transfer.
    silent              Built in: OUT transfers are accepted and dropped; IN never completes.
    exec:COMMAND...     Started at plug, a fresh one at each replug, stopped at unplug, exactly
                        like tty exec simulators, but connected by an AF_UNIX SOCK_SEQPACKET
                        socketpair (message boundaries are transfer boundaries): {fd} is
                        replaced by the number of the inherited end (stdin is /dev/null, stdout
                        goes to the harness's stderr); without {fd}, stdin and stdout are that
                        socket. Also replaced: {name}, {dev} (/dev/bus/usb/BBB/DDD), {serial}.
                        {link} and {master} are tty-only.
    unix:PATH           Connect to a SOCK_SEQPACKET server at PATH at plug time (again at each
                        replug); same message contract.
  When the simulator's process exits or closes its end, the device goes silent (OUT accepted and
  dropped). The harness stops reading from a simulator while 8 MiB wait for the host's IN
  transfers, so a simulator that streams as fast as it can is throttled by the host's reads.

CONTROL (one command per line on the --control socket; one answer line each: "ok[ DETAIL]"
or "error MESSAGE"; a connection may send any number of commands)
    ping                      ok
    status                    ok NAME=plugged|unplugged,answering|stopped,devnum=N,pts=/dev/pts/M ...
                              for a USB device: NAME=plugged|unplugged,answering|stopped,
                              busnum=B,devnum=N,devnode=/dev/bus/usb/BBB/DDD|-,inflight=URBs in
                              flight,served=bulk/interrupt transfers completed,in_bytes=..,
                              out_bytes=..,control=control requests answered
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
  For a USB device:
    unplug NAME               As described under USB DEVICES; the simulator is stopped.
    replug NAME               Back with the next devnum (ok devnum=N devnode=...), a new
                              simulator (exec) or connection (unix), answering.
    stop-answering NAME       IN URBs are never completed (messages from the simulator are
                              dropped), OUT transfers are still accepted and dropped; control
                              requests are still answered. resume-answering undoes it.
    garbage NAME HEX          Deliver these bytes as the next bulk IN transfer, ahead of queued
                              messages and even while not answering.
    quit                      Stop the program under test (SIGTERM), then exit.
"""

import argparse
import contextlib
import collections
import ctypes
import errno
import fcntl
import gc
import json
import os
import select
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
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
HARNESS = None  # the one Harness (call_soon needs it)


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

    socket_type = socket.SOCK_STREAM

    def __init__(self, device, family, address):
        super().__init__(device)
        self.family, self.address = family, address
        self.channel = None

    def _make_channel(self, fd):
        return Channel(self.device.loop, fd, "%s/sim" % self.device.name, self.device.from_simulator, self._eof)

    def start(self):
        sock = socket.socket(self.family, self.socket_type)
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
        self.channel = self._make_channel(fd)

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

    socket_type = socket.SOCK_STREAM  # of the socketpair in stdio and {fd} modes

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
        values = {"fd": str(fd) if fd is not None else "", "link": link or "",
                  "master": str(getattr(self.device, "master_fd", "")), "name": self.device.name,
                  "dev": getattr(self.device, "devnode", None) or "/dev/" + self.device.name,
                  "serial": self.device.serial}
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
            ours, theirs = socket.socketpair(socket.AF_UNIX, self.socket_type)
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
        self.channel = self._make_channel(fd)
        self.device.harness.children.add(self.process)

    def _make_channel(self, fd):
        return Channel(self.device.loop, fd, "%s/sim" % self.device.name, self.device.from_simulator, self._eof)

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

    def set_answering(self, answering):
        self.answering = answering
        self.simulator.set_answering(answering)

    def plug_detail(self):
        return "pts=%s" % self.pts

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


# ---- emulated libusb devices (usbfs through umockdev's ioctl handler) -------------------------
#
# Everything below runs in two threads. umockdev calls the ioctl handler ("handle-ioctl") in its
# testbed worker thread; simulators, the control socket and unplug/replug run in the harness's
# selector loop (the main thread). USB_LOCK guards all USB state. IoctlData.resolve() talks to the
# client process (it must be waiting in its ioctl), so it is only called for the ioctl being
# handled, mostly outside the lock.

# linux/usbdevice_fs.h, LP64 (x86_64, aarch64). Checked with offsetof()/sizeof().
USBDEVFS_CONTROL = 0xC0185500
USBDEVFS_RESETEP = 0x80045503
USBDEVFS_SETINTERFACE = 0x80085504
USBDEVFS_SETCONFIGURATION = 0x80045505
USBDEVFS_GETDRIVER = 0x41045508
USBDEVFS_SUBMITURB = 0x8038550A
USBDEVFS_DISCARDURB = 0x0000550B
USBDEVFS_REAPURB = 0x4008550C
USBDEVFS_REAPURBNDELAY = 0x4008550D
USBDEVFS_CLAIMINTERFACE = 0x8004550F
USBDEVFS_RELEASEINTERFACE = 0x80045510
USBDEVFS_CONNECTINFO = 0x40085511
USBDEVFS_IOCTL = 0xC0105512
USBDEVFS_RESET = 0x00005514
USBDEVFS_CLEAR_HALT = 0x80045515
USBDEVFS_DISCONNECT = 0x00005516
USBDEVFS_CONNECT = 0x00005517
USBDEVFS_GET_CAPABILITIES = 0x8004551A
USBDEVFS_DISCONNECT_CLAIM = 0x8108551B
USBDEVFS_DROP_PRIVILEGES = 0x4004551E
USBDEVFS_GET_SPEED = 0x0000551F
USBDEVFS_CONNINFO_EX_NR = 0x5520  # _IOR('U', 32, len): the size is part of the request
USBDEVFS_SUSPEND_IOCTLS = (0x00005521, 0x00005522, 0x00005523)  # FORBID/ALLOW_SUSPEND, WAIT_FOR_RESUME
USBDEVFS_CAPS = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # ZERO_PACKET, BULK_CONTINUATION,
#   NO_PACKET_SIZE_LIM, BULK_SCATTER_GATHER (libusb: one URB per transfer), REAP_AFTER_DISCONNECT,
#   DROP_PRIVILEGES, CONNINFO_EX. Not MMAP or SUSPEND.
URB_STRUCT = struct.Struct("<BB2xiI4xQiiiiiIQ")  # struct usbdevfs_urb without iso_frame_desc: 56 bytes
URB_STATUS, URB_BUFFER, URB_ACTUAL_LENGTH = 4, 16, 28  # offsets
URB_TYPE_ISO, URB_TYPE_INTERRUPT, URB_TYPE_CONTROL, URB_TYPE_BULK = 0, 1, 2, 3
URB_SHORT_NOT_OK = 0x01
USB_SPEEDS = {"1.5": 1, "12": 2, "480": 3}  # sysfs speed -> enum usb_device_speed
USB_LOCK = threading.RLock()
MAX_IN_QUEUE = 8 << 20  # bytes queued towards the host before the harness stops reading the simulator
MAX_MESSAGE = 1 << 20  # largest simulator message


def call_soon(function):
    """Runs function in the main thread's selector loop (safe from the umockdev worker thread)."""
    HARNESS.pending_calls.append(function)
    try:
        os.write(HARNESS.call_wake_w, b"\0")
    except BlockingIOError:
        pass


class MessageChannel:
    """A SOCK_SEQPACKET simulator connection: one message per transfer. send() is called with
    USB_LOCK held from either thread; reading and write-readiness run in the main thread."""

    def __init__(self, device, fd, name, on_eof):
        self.device, self.name, self.on_eof = device, name, on_eof
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, 1 << 20)
            except OSError:
                pass
        self.fd = fd
        self.queue = collections.deque()  # (payload, urb) waiting for room in the socket
        self.buffer = bytearray(MAX_MESSAGE)
        self.view = memoryview(self.buffer)
        self.reading = True
        self.want_write = False
        self.closed = False
        self.loop = device.loop
        self.loop.watch(fd, self._ready)

    def send(self, payload, urb):
        """True when the message went out now (or was dropped); False when it waits (the bulk OUT
        URB completes when it leaves, like a device that NAKs until it has room)."""
        if self.closed:
            return True
        if not self.queue:
            try:
                self.sock.send(payload)
                return True
            except BlockingIOError:
                pass
            except OSError as error:
                log("%s: sending %d bytes to the simulator failed: %s (dropped)" % (self.name, len(payload), error))
                return True
        self.queue.append((payload, urb))
        if not self.want_write:
            self.want_write = True
            call_soon(self._update_watch)
        return False

    def discard(self, urb):
        for index, (payload, queued) in enumerate(self.queue):
            if queued is urb:
                del self.queue[index]
                return True
        return False

    def pause_reading(self, paused):
        """Stop reading while the host does not take IN transfers (the simulator's sends block)."""
        if self.reading == (not paused):
            return
        self.reading = not paused
        call_soon(self._update_watch)

    def _update_watch(self):
        if not self.closed:
            self.loop.watch(self.fd, self._ready, write=self.want_write, read=self.reading)

    def _ready(self, mask):
        with USB_LOCK:
            if self.closed:
                return
            if mask & selectors.EVENT_WRITE:
                self._flush()
            if mask & selectors.EVENT_READ:
                for _ in range(64):
                    if self.closed or not self.reading:
                        break
                    try:
                        count, _, flags, _ = self.sock.recvmsg_into([self.view])
                    except BlockingIOError:
                        break
                    except OSError as error:
                        trace("%s: receive failed: %s" % (self.name, error))
                        self.on_eof()
                        break
                    if count == 0 and self._hung_up():
                        self.on_eof()
                        break
                    if flags & socket.MSG_TRUNC:
                        log("%s: simulator message longer than %d bytes: truncated" % (self.name, MAX_MESSAGE))
                    self.device.from_simulator(bytes(self.view[:count]))

    def _hung_up(self):
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))

    def _flush(self):
        while self.queue:
            payload, urb = self.queue[0]
            try:
                self.sock.send(payload)
            except BlockingIOError:
                break
            except OSError as error:
                log("%s: sending %d bytes to the simulator failed: %s (dropped)" % (self.name, len(payload), error))
            self.queue.popleft()
            self.device.out_sent(urb)
        if not self.queue and self.want_write:
            self.want_write = False
            self._update_watch()

    def close(self):
        """Closes the socket; returns the OUT URBs still waiting (the caller completes them)."""
        if self.closed:
            return []
        self.closed = True
        waiting = [urb for _, urb in self.queue]
        self.queue.clear()
        self.loop.unwatch(self.fd)  # unplug, simulator EOF and cleanup all run in the main thread
        self.sock.close()
        return waiting


class UsbSimulator:
    """The device side of an emulated USB device. send(payload, urb) carries one bulk OUT
    transfer (False: it waits, and device.out_sent(urb) is called when it has gone); the
    simulator calls device.from_simulator(bytes) with each bulk IN transfer's payload."""

    channel = None

    def __init__(self, device):
        self.device = device

    def start(self):
        pass

    def send(self, payload, urb):
        return True

    def pause_reading(self, paused):
        """Stop (or resume) taking IN payloads from the simulator: the host is not keeping up."""

    def discard(self, urb):
        """Withdraw a waiting OUT URB; True if it was still waiting."""
        return False

    def stop(self):
        """Returns OUT URBs that were still waiting."""
        return []


class UsbEchoSimulator(UsbSimulator):
    def send(self, payload, urb):
        self.device.from_simulator(payload)
        return True


class UsbSilentSimulator(UsbSimulator):
    pass


class UsbChannelMixin:
    """Shared by the exec and unix simulators: a MessageChannel instead of a byte stream."""

    socket_type = socket.SOCK_SEQPACKET

    def _make_channel(self, fd):
        return MessageChannel(self.device, fd, "%s/sim" % self.device.name, self._eof)

    def send(self, payload, urb):
        return self.channel.send(payload, urb) if self.channel else True

    def pause_reading(self, paused):
        if self.channel:
            self.channel.pause_reading(paused)

    def discard(self, urb):
        return bool(self.channel) and self.channel.discard(urb)

    def _close_channel(self):
        waiting = self.channel.close() if self.channel else []
        self.channel = None
        return waiting


class UsbExecSimulator(UsbChannelMixin, ExecSimulator):
    def __init__(self, device, command):
        super().__init__(device, command)
        joined = " ".join(self.template)
        if "{link}" in joined or "{master}" in joined:
            raise UsageError("%s: USB simulators take {fd} (or stdin/stdout), not {link} or {master}" % device.name)

    def _eof(self):
        log("%s: simulator closed its side (exit status %s)" % (self.device.name, self.process.poll() if self.process else "?"))
        self.device.simulator_gone(self._close_channel())

    def stop(self):
        waiting = self._close_channel()
        super().stop()
        return waiting


class UsbSocketSimulator(UsbChannelMixin, SocketSimulator):
    def _eof(self):
        log("%s: simulator at %s closed the connection" % (self.device.name, self.address))
        self.device.simulator_gone(self._close_channel())

    def stop(self):
        return self._close_channel()


def make_usb_simulator(device, spec):
    if spec == "echo":
        return UsbEchoSimulator(device)
    if spec == "silent":
        return UsbSilentSimulator(device)
    if spec.startswith("unix:"):
        return UsbSocketSimulator(device, socket.AF_UNIX, spec[5:])
    if spec.startswith("exec:"):
        return UsbExecSimulator(device, spec[5:])
    raise UsageError("%s: unknown USB sim=%r (echo, silent, unix:PATH, exec:COMMAND)" % (device.name, spec))


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.process_vm_readv.restype = _LIBC.process_vm_writev.restype = ctypes.c_ssize_t


class ClientMemory:
    """Direct access to the memory of the process behind an ioctl session (process_vm_readv and
    process_vm_writev), used only while that process waits in the ioctl being handled, which is
    when umockdev's own READ_MEM/WRITE_MEM would touch it. Each IoctlData.resolve() is a round
    trip over umockdev's socket; this turns SUBMITURB and REAPURBNDELAY into one round trip each
    (SUBMITURB saves one or two, REAPURBNDELAY two). None when the process cannot be identified
    (exactly one process other than the harness must hold the node open when it connects) or
    reached (process_vm_* needs the right to ptrace it): the IoctlData path is then used."""

    @staticmethod
    def find(node_path):
        """The one process (other than the harness) holding node_path open, or None."""
        me = os.getpid()
        node_path = os.path.realpath(node_path)
        owners = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            directory = "/proc/%s/fd" % entry
            try:
                for fd in os.listdir(directory):
                    try:
                        if os.readlink(os.path.join(directory, fd)) == node_path:
                            owners.add(int(entry))
                            break
                    except OSError:
                        pass
            except OSError:
                pass
        if len(owners) != 1:
            return None
        memory = ClientMemory(owners.pop())
        return memory if memory.usable() else None

    def __init__(self, pid):
        self.pid = pid

    def usable(self):
        probe = ctypes.create_string_buffer(1)
        try:
            with open("/proc/%d/maps" % self.pid) as maps:
                start = int(maps.readline().split("-")[0], 16)
        except (OSError, ValueError):
            return False
        local, remote = _IoVec(ctypes.addressof(probe), 1), _IoVec(start, 1)
        return _LIBC.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) == 1

    def read(self, address, length):
        if length <= 0:
            return b""
        buffer = ctypes.create_string_buffer(length)
        local, remote = _IoVec(ctypes.addressof(buffer), length), _IoVec(address, length)
        done = _LIBC.process_vm_readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if done != length:
            raise OSError(ctypes.get_errno() or errno.EFAULT, "process_vm_readv")
        return buffer.raw

    def write(self, pieces):
        """pieces: [(address, bytes)], written with one system call."""
        count = len(pieces)
        local, remote = (_IoVec * count)(), (_IoVec * count)()
        keep = []
        total = 0
        for index, (address, data) in enumerate(pieces):
            buffer = ctypes.c_char_p(data)
            keep.append(buffer)
            local[index].base = ctypes.cast(buffer, ctypes.c_void_p).value
            local[index].length = remote[index].length = len(data)
            remote[index].base = address
            total += len(data)
        done = _LIBC.process_vm_writev(self.pid, local, count, remote, count, 0)
        if done != total:
            raise OSError(ctypes.get_errno() or errno.EFAULT, "process_vm_writev")


class Urb:
    """One submitted usbdevfs URB."""

    __slots__ = ("session", "address", "buffer_address", "data", "control_buffer", "kind", "endpoint", "length",
                 "flags", "is_in", "status", "actual", "payload")

    def __init__(self, session, address, buffer_address, data, kind, endpoint, length, flags):
        self.session, self.address, self.buffer_address, self.data = session, address, buffer_address, data
        self.control_buffer = None
        self.kind, self.endpoint, self.length, self.flags = kind, endpoint, length, flags
        self.is_in = bool(endpoint & 0x80)
        self.status, self.actual, self.payload = 0, 0, None


class UsbSession:
    """One open descriptor of the device node (an IoctlClient): its URBs, like a usbfs file."""

    def __init__(self, plug, client):
        self.plug, self.client = plug, client
        self.in_flight = {}  # client URB address -> Urb
        self.completed = collections.deque()
        self.waiting_reap = None  # (client, arg) of a blocking REAPURB
        self.memory = None  # ClientMemory, or None: IoctlData only


class Doorbell:
    """What the client's poll() sees. libusb polls the usbfs descriptor for POLLOUT and reaps
    when it is set. umockdev makes USB nodes plain files, which are always writable, so libusb
    would spin on REAPURBNDELAY -> EAGAIN. The harness makes the node a FIFO instead (the preload
    only routes ioctls; open and poll are real) with a one-page pipe that it keeps full while
    nothing is reapable and empties when a URB completes: POLLOUT then means "reap me", as with
    the kernel's usbfs. node=file keeps umockdev's plain file (to measure the difference)."""

    def __init__(self, path, kind):
        self.path, self.fd, self.rung = path, None, False
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        if kind == "file":
            open(path, "wb").close()
            return
        os.mkfifo(path, 0o666)
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
        except OSError:
            pass
        self.rung = True
        self.quiet()

    def ring(self):
        if self.fd is None or self.rung:
            return
        self.rung = True
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def quiet(self):
        if self.fd is None or not self.rung:
            return
        self.rung = False
        page = bytes(4096)
        try:
            while True:
                os.write(self.fd, page)
        except BlockingIOError:
            pass

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class UsbPlug:
    """One plugged-in period of a USB device: its node, ioctl handler, sessions and URBs. After
    an unplug it lingers until the host closes its descriptors, answering ENODEV."""

    def __init__(self, device):
        self.device = device
        self.devnode = "/dev/bus/usb/%03d/%03d" % (device.bus, device.devnum)
        self.devnum = device.devnum
        self.gone = False
        self.sessions = {}  # IoctlClient -> UsbSession
        self.claims = {}  # interface number -> UsbSession
        self.pending_in = collections.deque()  # IN URBs on the data endpoint, oldest first
        self.parked = []  # URBs that never complete by themselves (other IN endpoints)
        self.waiting_out = []  # OUT URBs the simulator has not taken yet
        self.completed_count = 0
        self.configuration = 1
        self.doorbell = Doorbell(os.path.join(device.harness.root, self.devnode[1:]), device.node_kind)
        self.handler = UMockdev.IoctlBase()
        self.handler.connect("client-connected", self._client_connected)
        self.handler.connect_after("handle-ioctl", self._handle_ioctl)

    # -- sessions

    def _client_connected(self, handler, client):
        session = UsbSession(self, client)
        if self.device.harness.options.usb_memory == "direct":
            session.memory = ClientMemory.find(self.doorbell.path)
        if VERBOSE:
            trace("%s: opened by %s" % (self.device.name, "pid %d" % session.memory.pid if session.memory else
                                         "an unidentified process (IoctlData path)"))
        with USB_LOCK:
            self.sessions[client] = session
        client.connect("notify::connected", self._client_closed)

    def _client_closed(self, client, pspec):
        if client.get_connected():
            return
        with USB_LOCK:
            session = self.sessions.pop(client, None)
            if session is None:
                return
            for urb in list(session.in_flight.values()):
                self._forget(urb)
            self.completed_count -= len(session.completed)
            if self.completed_count <= 0:
                self.completed_count = 0
                self.doorbell.quiet()
            for number, owner in list(self.claims.items()):
                if owner is session:
                    del self.claims[number]
            if self.gone and not self.sessions:
                self.doorbell.close()
                self.device.retired.discard(self)

    def _forget(self, urb):
        """Removes an in-flight URB from wherever it waits (not from session.in_flight)."""
        try:
            self.pending_in.remove(urb)
            return
        except ValueError:
            pass
        if urb in self.parked:
            self.parked.remove(urb)
            return
        if urb in self.waiting_out:
            self.waiting_out.remove(urb)
            if self.device.simulator:
                self.device.simulator.discard(urb)

    def complete(self, urb, status, actual=0, payload=None):
        urb.status, urb.actual, urb.payload = status, actual, payload
        session = urb.session
        if session.in_flight.pop(urb.address, None) is None:
            return
        if status == 0:
            if urb.kind == URB_TYPE_CONTROL:
                self.device.control_served += 1
            else:
                self.device.served += 1
                if urb.is_in:
                    self.device.bytes_in += actual
                else:
                    self.device.bytes_out += actual
        if session.waiting_reap:
            client, arg = session.waiting_reap
            session.waiting_reap = None
            self._finish_reap(client, arg, urb)
            return
        session.completed.append(urb)
        self.completed_count += 1
        self.doorbell.ring()

    def unplugged(self):
        """Called with USB_LOCK held: every URB in flight ends as the kernel ends them when the
        device goes (-ESHUTDOWN from the host controller; libusb: LIBUSB_TRANSFER_NO_DEVICE)."""
        self.gone = True
        self.pending_in.clear()
        self.parked.clear()
        self.waiting_out.clear()
        for session in list(self.sessions.values()):
            for urb in list(session.in_flight.values()):
                self.complete(urb, -errno.ESHUTDOWN)
            if session.waiting_reap:
                client, arg = session.waiting_reap
                session.waiting_reap = None
                client.complete(-1, errno.ENODEV)
        self.doorbell.ring()  # a last POLLOUT, so the host reaps and then sees ENODEV
        if self.completed_count == 0 and not self.sessions:
            self.doorbell.close()
        else:
            self.device.retired.add(self)

    # -- ioctls (umockdev worker thread)

    def _handle_ioctl(self, handler, client):
        try:
            result = self._ioctl(client)
        except Exception as error:  # never let an exception leave the ioctl uncompleted
            gone = isinstance(error, GLib.Error) and error.domain == "g-io-error-quark" and error.code == 44
            if client.get_connected() and not gone:  # 44: G_IO_ERROR_BROKEN_PIPE / CONNECTION_CLOSED
                log("%s: ioctl 0x%08x failed in the harness: %r" % (self.device.name, client.get_request(), error))
            else:  # the program went away in the middle of its ioctl (killed at the end of a test)
                trace("%s: ioctl 0x%08x: the program went away: %r" % (self.device.name, client.get_request(), error))
            result = (-1, errno.EIO)
        if result is not None:
            client.complete(result[0], result[1])
        return True

    def _ioctl(self, client):
        request = client.get_request()
        arg = client.get_arg()
        session = self.sessions.get(client)
        if session is None:  # connected before we saw it (cannot happen with umockdev 0.17)
            with USB_LOCK:
                session = self.sessions.setdefault(client, UsbSession(self, client))
        if request == USBDEVFS_REAPURBNDELAY or request == USBDEVFS_REAPURB:
            return self._reap(session, client, arg, request == USBDEVFS_REAPURB)
        if self.gone:
            return (-1, errno.ENODEV)
        if request == USBDEVFS_SUBMITURB:
            return self._submit(session, arg)
        if request == USBDEVFS_DISCARDURB:
            address = struct.unpack("<Q", bytes(arg.retrieve()))[0]
            with USB_LOCK:
                urb = session.in_flight.get(address)
                if urb is None:
                    return (-1, errno.EINVAL)  # unknown, or already complete: libusb will reap it
                self._forget(urb)
                self.complete(urb, -errno.ENOENT)  # reaped with -ENOENT, as the kernel does
            if VERBOSE:
                trace("%s: discarded URB ep %02x" % (self.device.name, urb.endpoint))
            return (0, 0)
        if request == USBDEVFS_GET_CAPABILITIES:
            arg.resolve(0, 4).update(0, struct.pack("<I", USBDEVFS_CAPS))
            return (0, 0)
        if request == USBDEVFS_CLAIMINTERFACE or request == USBDEVFS_RELEASEINTERFACE:
            number = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))[0]
            return self._claim(session, number, request == USBDEVFS_CLAIMINTERFACE)
        if request == USBDEVFS_DISCONNECT_CLAIM:
            number = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))[0]
            return self._claim(session, number, True)
        if request == USBDEVFS_SETCONFIGURATION:
            value = struct.unpack("<i", bytes(arg.resolve(0, 4).retrieve()))[0]
            if value not in (-1, 0, 1):
                return (-1, errno.EINVAL)
            self.configuration = max(value, 0)
            return (0, 0)
        if request == USBDEVFS_SETINTERFACE:
            number, alternate = struct.unpack("<II", bytes(arg.resolve(0, 8).retrieve()))
            return (0, 0) if number == 0 and alternate == 0 else (-1, errno.EINVAL)
        if request == USBDEVFS_CLEAR_HALT or request == USBDEVFS_RESETEP:
            endpoint = struct.unpack("<I", bytes(arg.resolve(0, 4).retrieve()))[0] & 0xFF
            return (0, 0) if self.device.endpoint(endpoint) else (-1, errno.ENOENT)
        if request == USBDEVFS_RESET:
            return (0, 0)
        if request == USBDEVFS_GETDRIVER:
            return (-1, errno.ENODATA)  # no kernel driver bound to any interface
        if request == USBDEVFS_IOCTL:
            code = struct.unpack("<iiQ", bytes(arg.resolve(0, 16).retrieve()))[1]
            if code in (USBDEVFS_DISCONNECT, USBDEVFS_CONNECT):
                return (-1, errno.ENODATA)
            return (-1, errno.ENOTTY)
        if request == USBDEVFS_CONNECTINFO:
            arg.resolve(0, 8).update(0, struct.pack("<IB3x", self.devnum, 1 if self.device.speed == "1.5" else 0))
            return (0, 0)
        if request == USBDEVFS_GET_SPEED:
            return (USB_SPEEDS[self.device.speed], 0)
        if request & 0xFFFF == USBDEVFS_CONNINFO_EX_NR and request >> 30 == 2:
            size = (request >> 16) & 0x3FFF
            ports = [int(part) for part in self.device.port.split(".")][:7]
            info = struct.pack("<IIIIB7s", 24, self.device.bus, self.devnum, USB_SPEEDS[self.device.speed],
                               len(ports), bytes(ports))
            arg.resolve(0, size).update(0, info[:size])
            return (0, 0)
        if request == USBDEVFS_DROP_PRIVILEGES or request in USBDEVFS_SUSPEND_IOCTLS:
            return (0, 0)
        if request == USBDEVFS_CONTROL:
            return self._control_ioctl(arg)
        if VERBOSE:
            trace("%s: unsupported ioctl 0x%08x -> ENOTTY" % (self.device.name, request))
        return (-1, errno.ENOTTY)

    def _claim(self, session, number, claim):
        if number >= 1:
            return (-1, errno.ENOENT)
        with USB_LOCK:
            owner = self.claims.get(number)
            if claim:
                if owner is not None and owner is not session:
                    return (-1, errno.EBUSY)
                self.claims[number] = session
            else:
                if owner is not session:
                    return (-1, errno.EINVAL)
                del self.claims[number]
        return (0, 0)

    def _submit(self, session, arg):
        address = struct.unpack("<Q", bytes(arg.retrieve()))[0]
        memory = session.memory
        data = None
        if memory:
            try:
                raw = memory.read(address, URB_STRUCT.size)
            except OSError as error:
                return (-1, error.errno or errno.EFAULT)
        else:
            data = arg.resolve(0, URB_STRUCT.size)
            raw = bytes(data.retrieve())
        fields = URB_STRUCT.unpack(raw)
        kind, endpoint, flags, buffer_address, length = fields[0], fields[1], fields[3], fields[4], fields[5]
        device = self.device
        if length < 0 or kind == URB_TYPE_ISO or kind > URB_TYPE_BULK:
            return (-1, errno.EINVAL)
        urb = Urb(session, address, buffer_address, data, kind, endpoint, length, flags)
        if kind == URB_TYPE_CONTROL:
            if length < 8:
                return (-1, errno.EINVAL)
            if memory:
                try:
                    setup = memory.read(buffer_address, length)
                except OSError as error:
                    return (-1, error.errno or errno.EFAULT)
            else:
                urb.control_buffer = data.resolve(URB_BUFFER, length)
                setup = bytes(urb.control_buffer.retrieve())
            status, answer = device.control_request(self, setup[:8], setup[8:])
            if status:
                actual = 0
            else:
                actual = len(answer) if answer is not None else length - 8
            with USB_LOCK:
                if self.gone:
                    return (-1, errno.ENODEV)
                session.in_flight[address] = urb
                self.complete(urb, status, actual, answer)
            return (0, 0)
        described = device.endpoint(endpoint)
        if described is None:
            return (-1, errno.ENOENT)
        payload = None
        if not urb.is_in:
            if not length:
                payload = b""
            elif memory:
                try:
                    payload = memory.read(buffer_address, length)
                except OSError as error:
                    return (-1, error.errno or errno.EFAULT)
            else:
                payload = bytes(data.resolve(URB_BUFFER, length).retrieve())
        with USB_LOCK:
            if self.gone:
                return (-1, errno.ENODEV)
            session.in_flight[address] = urb
            if not urb.is_in:
                if not device.answering or device.simulator is None or device.simulator.send(payload, urb):
                    self.complete(urb, 0, length)
                else:
                    self.waiting_out.append(urb)
            elif endpoint == device.data_in_endpoint:
                self.pending_in.append(urb)
                device.deliver(self)
            else:
                self.parked.append(urb)
        if VERBOSE:
            trace("%s: submit %s ep %02x len %d" % (device.name, "IN" if urb.is_in else "OUT", endpoint, length))
        return (0, 0)

    def _reap(self, session, client, arg, blocking):
        with USB_LOCK:
            if not session.completed:
                if self.gone:
                    return (-1, errno.ENODEV)
                if blocking:
                    session.waiting_reap = (client, arg)
                    return None
                return (-1, errno.EAGAIN)
            urb = session.completed.popleft()
            self.completed_count -= 1
            if self.completed_count == 0:
                self.doorbell.quiet()
        try:
            self._write_back(arg, urb)
        except OSError as error:
            return (-1, error.errno or errno.EFAULT)
        return (0, 0)

    def _finish_reap(self, client, arg, urb):
        """A blocking REAPURB that waited: completes it from whichever thread completed the URB."""
        try:
            self._write_back(arg, urb)
            client.complete(0, 0)
        except Exception as error:
            log("%s: finishing a blocking reap failed: %r" % (self.device.name, error))
            client.complete(-1, errno.EIO)

    @staticmethod
    def _write_back(arg, urb):
        """Fills the client's URB (status, actual_length, IN data) and points *arg at it."""
        memory = urb.session.memory
        if memory:
            pieces = []
            if urb.payload:
                offset = 8 if urb.kind == URB_TYPE_CONTROL else 0
                pieces.append((urb.buffer_address + offset, urb.payload))
            pieces.append((urb.address + URB_STATUS, struct.pack("<i", urb.status)))
            pieces.append((urb.address + URB_ACTUAL_LENGTH, struct.pack("<i", urb.actual)))
            pieces.append((struct.unpack("<Q", bytes(arg.retrieve()))[0], struct.pack("<Q", urb.address)))
            memory.write(pieces)
            return
        pointer = arg.resolve(0, 8)
        if urb.payload:
            if urb.kind == URB_TYPE_CONTROL:
                urb.control_buffer.update(8, urb.payload)
            else:
                urb.data.resolve(URB_BUFFER, len(urb.payload)).update(0, urb.payload)
        urb.data.update(URB_STATUS, struct.pack("<i", urb.status))
        urb.data.update(URB_ACTUAL_LENGTH, struct.pack("<i", urb.actual))
        pointer.set_ptr(0, urb.data)

    def _control_ioctl(self, arg):
        """USBDEVFS_CONTROL (synchronous control transfer): standard requests only."""
        transfer = arg.resolve(0, 24)
        request_type, request, value, index, length, timeout = struct.unpack("<BBHHHI", bytes(transfer.retrieve())[:12])
        setup = struct.pack("<BBHHH", request_type, request, value, index, length)
        out_data = b""
        if not request_type & 0x80 and length:
            out_data = bytes(transfer.resolve(16, length).retrieve())
        status, answer = self.device.control_request(self, setup, out_data)
        if status:
            return (-1, -status)
        if request_type & 0x80:
            if answer:
                transfer.resolve(16, len(answer)).update(0, answer)
            return (len(answer or b""), 0)
        return (length, 0)


def parse_endpoints(text, speed, name):
    """"02,81" or "02:bulk,81:bulk:512,83:int:16" -> [(address, attributes, max_packet)]."""
    endpoints = []
    for word in text.split(","):
        parts = word.strip().split(":")
        try:
            address = int(parts[0], 16)
        except ValueError:
            raise UsageError("%s: endpoints: bad address %r" % (name, parts[0]))
        kind = parts[1] if len(parts) > 1 else "bulk"
        if kind not in ("bulk", "int", "interrupt"):
            raise UsageError("%s: endpoints: type must be bulk or int, got %r" % (name, kind))
        attributes = 2 if kind == "bulk" else 3
        default = {"1.5": 8, "12": 64, "480": 512}[speed] if attributes == 2 else (8 if speed == "1.5" else 64)
        max_packet = int(parts[2]) if len(parts) > 2 else default
        if address & 0x70 or not address & 0x0F:
            raise UsageError("%s: endpoints: 0x%02x is not a valid endpoint address" % (name, address))
        endpoints.append((address, attributes, max_packet))
    if len({address for address, _, _ in endpoints}) != len(endpoints):
        raise UsageError("%s: endpoints: an address is declared twice" % name)
    return endpoints


class UsbDevice:
    """An emulated libusb device (--usb-device)."""

    def __init__(self, harness, index, spec, devnum, port):
        self.harness, self.loop = harness, harness.loop
        self.name = spec.pop("name", "usb%d" % index)
        if not self.name or any(c in self.name for c in " =,/"):
            raise UsageError("--usb-device name %r: use letters, digits, - and _" % self.name)
        self.vid = int(spec.pop("vid", "1209"), 16)
        self.pid = int(spec.pop("pid", "0001"), 16)
        self.manufacturer = spec.pop("manufacturer", "Operando")
        self.product = spec.pop("product", "Emulated USB device")
        self.serial = spec.pop("serial", "OPUSB%03d" % index)
        self.bus = int(spec.pop("bus", "1"))
        self.devnum = int(spec.pop("devnum", str(devnum)))
        self.port = spec.pop("port", str(port))
        self.speed = spec.pop("speed", "480")
        if self.speed not in USB_SPEEDS:
            raise UsageError("%s: speed must be 1.5, 12 or 480, got %r" % (self.name, self.speed))
        self.interface_class = int(spec.pop("class", "ff"), 16)
        self.endpoints = parse_endpoints(spec.pop("endpoints", "02,81"), self.speed, self.name)
        self.node_kind = spec.pop("node", "fifo")
        if self.node_kind not in ("fifo", "file"):
            raise UsageError("%s: node must be fifo or file" % self.name)
        self.sim_spec = spec.pop("sim", "echo")
        if spec:
            raise UsageError("%s: unknown USB device keys %s" % (self.name, ", ".join(sorted(spec))))
        if not 1 <= self.bus <= 127 or not 2 <= self.devnum <= 127:
            raise UsageError("%s: bus must be 1..127 and devnum 2..127" % self.name)
        for value in (self.manufacturer, self.product, self.serial):
            if "\n" in value or len(value) > 126:
                raise UsageError("%s: strings must be one line of at most 126 characters" % self.name)
        ins = [e for e in self.endpoints if e[0] & 0x80]
        bulk_ins = [e for e in ins if e[1] == 2]
        self.data_in_endpoint = (bulk_ins or ins or [(None,)])[0][0]
        self.plugged = False
        self.answering = True
        self.simulator = None
        self.plug_state = None  # UsbPlug while plugged
        self.retired = set()  # UsbPlugs unplugged while the host still had them open
        self.in_queue = collections.deque()  # messages towards the host: [bytes, offset]
        self.injected = collections.deque()  # garbage: delivered first, even when not answering
        self.in_queued_bytes = 0
        self.reading_paused = False
        self.served = self.control_served = self.bytes_in = self.bytes_out = 0
        self.syspaths = []
        self.descriptor_cache = self.descriptors()

    @property
    def devnode(self):
        return "/dev/bus/usb/%03d/%03d" % (self.bus, self.devnum)

    def endpoint(self, address):
        for endpoint in self.endpoints:
            if endpoint[0] == address:
                return endpoint
        return None

    # -- descriptors

    def device_descriptor(self):
        return struct.pack("<BBHBBBBHHHBBBB", 18, 1, 0x0200, 0, 0, 0, 8 if self.speed == "1.5" else 64,
                           self.vid, self.pid, 0x0100, 1, 2, 3 if self.serial else 0, 1)

    def configuration_descriptor(self):
        interface = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, len(self.endpoints), self.interface_class, 0, 0, 0)
        for address, attributes, max_packet in self.endpoints:
            interval = 0 if attributes == 2 else (4 if self.speed == "480" else 1)
            interface += struct.pack("<BBBBHB", 7, 5, address, attributes, max_packet, interval)
        total = 9 + len(interface)
        return struct.pack("<BBHBBBBB", 9, 2, total, 1, 1, 0, 0x80, 50) + interface

    def descriptors(self):
        return self.device_descriptor() + self.configuration_descriptor()

    def string_descriptor(self, index):
        if index == 0:
            return bytes([4, 3, 0x09, 0x04])  # LANGID 0x0409 (English, US)
        text = {1: self.manufacturer, 2: self.product, 3: self.serial}.get(index)
        if not text:
            return None
        encoded = text.encode("utf-16-le")
        return bytes([2 + len(encoded), 3]) + encoded

    def control_request(self, plug, setup, out_data):
        """Standard requests, answered as a device would: (status, IN data). Anything else
        stalls (-EPIPE), as does a request the device does not know."""
        request_type, request, value, index, length = struct.unpack("<BBHHH", setup)
        stall = (-errno.EPIPE, None)
        if request_type & 0x60:  # class or vendor request
            if VERBOSE:
                trace("%s: control %02x %02x %04x %04x %d -> stall" % (self.name, request_type, request, value, index, length))
            return stall
        recipient = request_type & 0x1F
        device_to_host = bool(request_type & 0x80)
        answer = None
        if request == 0x06 and device_to_host:  # GET_DESCRIPTOR
            kind, number = value >> 8, value & 0xFF
            if kind == 1:
                answer = self.device_descriptor()
            elif kind == 2 and number == 0:
                answer = self.configuration_descriptor()
            elif kind == 3:
                answer = self.string_descriptor(number)
            elif kind == 6 and self.speed == "480":  # device qualifier
                answer = struct.pack("<BBHBBBBBB", 10, 6, 0x0200, 0, 0, 0, 64, 1, 0)
            if answer is None:
                return stall
        elif request == 0x00 and device_to_host:  # GET_STATUS
            if recipient == 2 and not self.endpoint(index & 0xFF) and index & 0x7F:
                return stall
            answer = b"\x00\x00"
        elif request == 0x08 and device_to_host and recipient == 0:  # GET_CONFIGURATION
            answer = bytes([plug.configuration])
        elif request == 0x0A and device_to_host and recipient == 1:  # GET_INTERFACE
            answer = b"\x00" if index == 0 else None
            if answer is None:
                return stall
        elif request == 0x09 and not device_to_host and recipient == 0:  # SET_CONFIGURATION
            if value not in (0, 1):
                return stall
            plug.configuration = value
            return (0, None)
        elif request == 0x0B and not device_to_host and recipient == 1:  # SET_INTERFACE
            return (0, None) if index == 0 and value == 0 else stall
        elif request in (0x01, 0x03) and not device_to_host:  # CLEAR_FEATURE, SET_FEATURE
            return (0, None)
        else:
            return stall
        return (0, answer[:length])

    # -- sysfs

    def description(self):
        usbdev = "/devices/pci0000:00/0000:00:14.0/usb%d/%d-%s" % (self.bus, self.bus, self.port)
        interface = "%s/%d-%s:1.0" % (usbdev, self.bus, self.port)
        minor = (self.bus - 1) * 128 + self.devnum - 1
        blocks = [
            [
                "P: " + usbdev,
                "E: SUBSYSTEM=usb",
                "E: DEVTYPE=usb_device",
                "E: DRIVER=usb",
                "E: BUSNUM=%03d" % self.bus,
                "E: DEVNUM=%03d" % self.devnum,
                "E: DEVNAME=" + self.devnode,
                "E: MAJOR=189",
                "E: MINOR=%d" % minor,
                "E: PRODUCT=%x/%x/%x" % (self.vid, self.pid, 0x100),
                "E: TYPE=0/0/0",
                "E: ID_VENDOR_ID=%04x" % self.vid,
                "E: ID_MODEL_ID=%04x" % self.pid,
                "E: ID_SERIAL_SHORT=%s" % self.serial,
                "E: ID_BUS=usb",
                "A: busnum=%d" % self.bus,
                "A: devnum=%d" % self.devnum,
                "A: devpath=%s" % self.port,
                "A: idVendor=%04x" % self.vid,
                "A: idProduct=%04x" % self.pid,
                "A: bcdDevice=0100",
                "A: bDeviceClass=00",
                "A: bDeviceSubClass=00",
                "A: bDeviceProtocol=00",
                "A: bNumConfigurations=1",
                "A: bConfigurationValue=1",
                "A: bNumInterfaces= 1",
                "A: bmAttributes=80",
                "A: bMaxPower=100mA",
                "A: bMaxPacketSize0=%d" % (8 if self.speed == "1.5" else 64),
                "A: speed=%s" % self.speed,
                "A: version= 2.00",
                "A: maxchild=0",
                "A: removable=removable",
                "A: manufacturer=" + self.manufacturer,
                "A: product=" + self.product,
                "A: serial=" + self.serial,
                "A: dev=189:%d" % minor,
                "H: descriptors=" + self.descriptor_cache.hex(),
                # no N: line: the node is the doorbell FIFO, made before these entries
            ],
            [
                "P: " + interface,
                "E: SUBSYSTEM=usb",
                "E: DEVTYPE=usb_interface",
                "E: INTERFACE=%d/0/0" % self.interface_class,
                "E: PRODUCT=%x/%x/%x" % (self.vid, self.pid, 0x100),
                "A: bInterfaceNumber=00",
                "A: bAlternateSetting= 0",
                "A: bInterfaceClass=%02x" % self.interface_class,
                "A: bInterfaceSubClass=00",
                "A: bInterfaceProtocol=00",
                "A: bNumEndpoints=%02x" % len(self.endpoints),
                "A: interface=" + self.product,
            ],
        ]
        if not self.serial:
            blocks[0] = [line for line in blocks[0] if not line.startswith(("A: serial=", "E: ID_SERIAL_SHORT="))]
        self.syspaths = ["/sys" + block[0][3:] for block in blocks]
        return "\n\n".join("\n".join(block) for block in blocks) + "\n"

    # -- plug and unplug (main thread)

    def plug(self):
        testbed = self.harness.testbed
        with USB_LOCK:
            self.in_queue.clear()
            self.injected.clear()
            self.in_queued_bytes = 0
            self.reading_paused = False
            self.answering = True
            plug = UsbPlug(self)
            # The ioctl socket must exist before the node can be opened (libusb may open it as
            # soon as it sees the "add" uevent).
            testbed.attach_ioctl(plug.devnode, plug.handler)
            self.plug_state = plug
            self.simulator = make_usb_simulator(self, self.sim_spec)
            self.plugged = True
        failure = None
        try:
            self.simulator.start()
        except (UsageError, OSError) as error:
            with USB_LOCK:
                self.simulator = UsbSilentSimulator(self)
            failure = error
        testbed.add_from_string(self.description())  # "add" uevents, parents first
        trace("%s: plugged (%s)" % (self.name, self.devnode))
        if failure:
            raise UsageError("%s is plugged but its simulator did not start: %s" % (self.name, failure))

    def unplug(self):
        testbed = self.harness.testbed
        with USB_LOCK:
            plug, self.plug_state = self.plug_state, None
            simulator, self.simulator = self.simulator, None
            self.plugged = False
            plug.unplugged()
            self.in_queue.clear()
            self.injected.clear()
            self.in_queued_bytes = 0
            if simulator:
                simulator.stop()
        try:
            testbed.detach_ioctl(plug.devnode)
        except GLib.Error as error:
            log("%s: detach_ioctl: %s" % (self.name, error))
        for syspath in reversed(self.syspaths):  # children first
            testbed.uevent(syspath, "remove")
            testbed.remove_device(syspath)
        node = os.path.join(self.harness.root, plug.devnode[1:])
        if os.path.lexists(node):
            os.unlink(node)
        trace("%s: unplugged" % self.name)

    # -- data (USB_LOCK held)

    def from_simulator(self, payload):
        """One bulk IN transfer's payload from the simulator."""
        if not self.answering or self.plug_state is None:
            if VERBOSE:
                trace("%s: device -> host %d bytes (dropped: not answering)" % (self.name, len(payload)))
            return
        self.in_queue.append([payload, 0])
        self.in_queued_bytes += len(payload)
        self.deliver(self.plug_state)
        if self.in_queued_bytes > MAX_IN_QUEUE and not self.reading_paused and self.simulator:
            if self.simulator.channel is None:  # echo: the host sends but does not read
                dropped = self.in_queue.popleft()
                self.in_queued_bytes -= len(dropped[0]) - dropped[1]
                log("%s: host does not read; dropped a %d-byte IN message" % (self.name, len(dropped[0])))
            else:
                self.reading_paused = True
                self.simulator.pause_reading(True)

    def plug_detail(self):
        return "devnode=%s" % self.devnode

    def inject(self, payload):
        self.injected.append([payload, 0])
        if self.plug_state:
            self.deliver(self.plug_state)

    def deliver(self, plug):
        """Completes waiting IN URBs with queued messages, in order. A message longer than the
        URB's buffer fills it and the rest goes to the next IN URB (never mixed with the next
        message), as a device whose packet did not fit would go on sending."""
        while plug.pending_in:
            queue = self.injected if self.injected else (self.in_queue if self.answering else None)
            if not queue:
                break
            entry = queue[0]
            message, offset = entry
            urb = plug.pending_in.popleft()
            size = min(len(message) - offset, urb.length)
            chunk = message[offset:offset + size] if offset or size < len(message) else message
            entry[1] = offset + size
            if entry[1] >= len(message):
                queue.popleft()
            if queue is self.in_queue:
                self.in_queued_bytes -= size
            status = -errno.EREMOTEIO if urb.flags & URB_SHORT_NOT_OK and size < urb.length else 0
            plug.complete(urb, status, size, chunk)
        if self.reading_paused and self.in_queued_bytes < MAX_IN_QUEUE // 2 and self.simulator:
            self.reading_paused = False
            self.simulator.pause_reading(False)

    def out_sent(self, urb):
        """The simulator took a waiting bulk OUT transfer."""
        plug = urb.session.plug
        if urb in plug.waiting_out:
            plug.waiting_out.remove(urb)
            plug.complete(urb, 0, urb.length)

    def simulator_gone(self, waiting):
        """The simulator closed its end: the device goes silent (OUT swallowed, no IN data)."""
        for urb in waiting:
            self.out_sent(urb)
        if self.simulator is not None and self.plug_state is not None:
            self.simulator = UsbSilentSimulator(self)

    def set_answering(self, answering):
        self.answering = answering
        if answering and self.plug_state:
            self.deliver(self.plug_state)

    def status(self):
        plug = self.plug_state
        in_flight = sum(len(s.in_flight) for s in plug.sessions.values()) if plug else 0
        return "%s=%s,%s,busnum=%d,devnum=%d,devnode=%s,inflight=%d,served=%d,in_bytes=%d,out_bytes=%d,control=%d" % (
            self.name, "plugged" if self.plugged else "unplugged", "answering" if self.answering else "stopped",
            self.bus, self.devnum, self.devnode if self.plugged else "-", in_flight, self.served,
            self.bytes_in, self.bytes_out, self.control_served)


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
        self.usb_devices = {}
        self.control_server = None
        self.control_path = options.control
        self.last_devnum = {}
        # call_soon(): work handed to the main thread by umockdev's worker thread
        global HARNESS
        HARNESS = self
        self.pending_calls = collections.deque()
        self.call_wake_r, self.call_wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.loop.watch(self.call_wake_r, self._run_pending_calls)

    def _run_pending_calls(self, mask):
        try:
            while os.read(self.call_wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self.pending_calls:
            self.pending_calls.popleft()()

    def all_devices(self):
        return list(self.devices.values()) + list(self.usb_devices.values())

    def scratch_dir(self, name):
        path = os.path.join(self.root, ".harness", name)
        os.makedirs(path, exist_ok=True)
        return path

    def preload(self):
        parts = [] if self.options.no_shim or not self.options.shim else [self.options.shim]
        parts.append(PRELOAD)
        if caller_preload():
            parts.append(caller_preload())
        return ":".join(parts)

    def setup(self, device_specs, usb_specs=()):
        for index, spec in enumerate(device_specs):
            device = Device(self, index, spec)
            if device.name in self.devices:
                raise UsageError("device %s declared twice" % device.name)
            self.devices[device.name] = device
        for index, spec in enumerate(usb_specs):
            bus = int(spec.get("bus", "1"))
            on_bus = [d for d in self.all_devices() if d.bus == bus]
            devnum = max([1] + [d.devnum for d in on_bus]) + 1
            ports = [int(d.port) for d in on_bus if d.port.isdigit()]
            device = UsbDevice(self, index, spec, devnum, max([0] + ports) + 1)
            if device.name in self.devices or device.name in self.usb_devices:
                raise UsageError("device %s declared twice" % device.name)
            self.usb_devices[device.name] = device
        self.add_fixed_devices()
        for device in self.devices.values():
            device.plug()
        for device in self.usb_devices.values():
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
        taken = [d.devnum for d in self.all_devices() if d.bus == bus]
        self.last_devnum[bus] = max([self.last_devnum.get(bus, 1)] + taken) + 1
        return self.last_devnum[bus]

    def add_fixed_devices(self):
        """What every real machine has and an unplug must not take away: a virtual tty (so
        /sys/class/tty exists when no emulated tty is plugged; sp_list_ports fails without it,
        and skips "virtual" ttys) and a root hub per USB bus (so /sys/bus/usb stays)."""
        blocks = [["P: /devices/virtual/tty/console", "E: SUBSYSTEM=tty", "A: dev=5:1"]]
        for bus in sorted({device.bus for device in self.all_devices()}):
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
                "A: maxchild=%d" % max(4, len(self.all_devices())),
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
        if self.usb_devices:
            env["OPERANDO_HARNESS_USB_DEVICES"] = ",".join("%s=%s" % (name, d.devnode) for name, d in self.usb_devices.items())
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
            "devices": {name: {"kind": "tty", "dev": "/dev/" + name, "pts": d.pts, "vid": "%04x" % d.vid,
                               "pid": "%04x" % d.pid, "serial": d.serial, "bus": d.bus, "devnum": d.devnum}
                        for name, d in self.devices.items()},
        }
        for name, d in self.usb_devices.items():
            info["devices"][name] = {"kind": "usb", "vid": "%04x" % d.vid, "pid": "%04x" % d.pid, "serial": d.serial,
                                     "manufacturer": d.manufacturer, "product": d.product, "bus": d.bus,
                                     "busnum": d.bus, "devnum": d.devnum, "devnode": d.devnode}
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
                with USB_LOCK:
                    return "ok " + " ".join(d.status() for d in self.all_devices())
            if verb == "quit":
                self.stop_program()
                self.loop.running = False
                return "ok"
            if not arguments:
                return "error %s needs a device name" % verb
            device = self.devices.get(arguments[0]) or self.usb_devices.get(arguments[0])
            if device is None:
                return "error no device %s (have %s)" % (arguments[0], ", ".join(list(self.devices) + list(self.usb_devices)))
            # USB devices are also served from umockdev's ioctl thread; tty devices only from here.
            lock = USB_LOCK if isinstance(device, UsbDevice) else contextlib.nullcontext()
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
                return "ok devnum=%d %s" % (device.devnum, device.plug_detail())
            if not device.plugged:
                return "error %s is unplugged" % device.name
            if verb in ("stop-answering", "resume-answering", "resume"):
                with lock:
                    device.set_answering(verb != "stop-answering")
                return "ok"
            if verb == "garbage":
                if len(arguments) != 2:
                    return "error usage: garbage NAME HEX"
                payload = bytes.fromhex(arguments[1])
                with lock:
                    device.inject(payload)
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
        self.signal_wake = (wake_read, wake_write)  # alive until exit: a signal can come during cleanup
        signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        received = []

        def on_signal(number, frame):
            received.append(number)

        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, on_signal)
        self.loop.watch(wake_read.fileno(), lambda mask: wake_read.recv(512))

        if argv:
            self.start_program(argv)
        log("ready: %s (UMOCKDEV_DIR=%s)" % (" ".join(d.status() for d in self.all_devices()), self.root))
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
        for device in self.all_devices():
            if device.simulator:
                try:
                    with USB_LOCK:
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


def parse_devices(texts, sims, default_name, sim_option, kind):
    """Device specs from --device/--usb-device texts, with their --sim/--usb-sim NAME=SPEC."""
    specs = [parse_device(text) for text in texts]
    for index, spec in enumerate(specs):
        spec.setdefault("name", default_name % index)
    for text in sims:
        name, equals, sim = text.partition("=")
        matches = [spec for spec in specs if spec["name"] == name]
        if not equals or not matches:
            raise UsageError("%s %r: expected NAME=SPEC for a declared %s" % (sim_option, text, kind))
        matches[0]["sim"] = sim
    return specs


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
    parser.add_argument("--usb-device", action="append", default=[], metavar="SPEC")
    parser.add_argument("--usb-sim", action="append", default=[], metavar="NAME=SPEC")
    parser.add_argument("--usb-memory", choices=("direct", "ioctl"), default="direct")
    parser.add_argument("--timer-slack-ns", type=int, default=1)
    parser.add_argument("--shim", default=os.environ.get("OPERANDO_MODEM_SHIM"))
    parser.add_argument("--no-shim", action="store_true")
    parser.add_argument("--control")
    parser.add_argument("--ready-file")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--verbose", action="store_true")
    options = parser.parse_args(arguments)
    VERBOSE = options.verbose
    if options.timer_slack_ns > 0:
        # Inherited through fork by the program under test and the simulators (see the header).
        ctypes.CDLL(None, use_errno=True).prctl(29, ctypes.c_ulong(options.timer_slack_ns), 0, 0, 0)  # PR_SET_TIMERSLACK
    try:
        if not options.device and not options.usb_device:
            raise UsageError("declare at least one --device or --usb-device")
        if options.device and not options.no_shim and not options.shim:
            raise UsageError("--shim PATH (or $OPERANDO_MODEM_SHIM) is required unless --no-shim")
        if options.shim and not options.no_shim:
            options.shim = os.path.abspath(options.shim)
            if not os.path.isfile(options.shim):
                raise UsageError("--shim %s: no such file (build it: swift build --product operando-modem-shim)" % options.shim)
        specs = parse_devices(options.device, options.sim, "ttyUSB%d", "--sim", "device")
        usb_specs = parse_devices(options.usb_device, options.usb_sim, "usb%d", "--usb-sim", "--usb-device")
    except UsageError as error:
        log(str(error))
        return 2
    harness = Harness(options)
    try:
        harness.setup(specs, usb_specs)
        return harness.run(argv)
    except (UsageError, GLib.Error, OSError) as error:
        log("error: %s" % error)
        return 2
    finally:
        harness.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
