#!/usr/bin/env python3
"""line-sim: a minimal line-protocol device for testing umockdev-harness.py's simulator modes.

It is also the smallest example of the three ways a simulator can be attached (see
umockdev-harness.py, SIMULATORS, exec:):

    line-sim.py --stdio         device bytes on stdin/stdout  (sim=exec:line-sim.py --stdio)
    line-sim.py --fd N          device bytes on descriptor N  (sim=exec:line-sim.py --fd {fd},
                                or the pty master itself:      sim=exec:line-sim.py --fd {master})
    line-sim.py --pty LINK      makes a pty, links LINK to its slave and serves the master
                                                              (sim=exec:line-sim.py --pty {link})
    line-sim.py --listen unix:PATH | tcp:HOST:PORT
                                a server, one connection at a time (sim=unix:PATH, sim=tcp:...)

Protocol: the host sends lines ending in "\\n" (a trailing "\\r" is ignored); the device answers
each with one line ending in "\\r\\n":
    pid          -> "PID <process id>"     (tells a test which simulator process answered)
    baud         -> "BAUD <B-constant name>" the host's line speed, when the descriptor is a
                    tty (direct {master} mode); "BAUD unknown" otherwise
    anything     -> "ECHO <the line>"
Runs until its input ends (EOF, or EIO on a pty master) or SIGTERM. Any python3 will do.
"""

import argparse
import os
import select
import signal
import socket
import sys
import termios
import tty


def line_speed(fd):
    try:
        speed = termios.tcgetattr(fd)[5]  # ospeed, as set by the host on its side of the tty
    except termios.error:
        return "unknown"
    names = [name for name in dir(termios) if name.startswith("B") and name[1:].isdigit()]
    names += ["BOTHER"] if hasattr(termios, "BOTHER") else []
    for name in names:
        if getattr(termios, name) == speed:
            return name
    return "0x%x" % speed


def serve(read_fd, write_fd, tag):
    buffer = b""
    while True:
        try:
            data = os.read(read_fd, 4096)
        except BlockingIOError:  # someone made the shared descriptor non-blocking
            select.select([read_fd], [], [])
            continue
        except OSError:  # EIO: the other side of a pty went away
            return
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            text = line.rstrip(b"\r").decode("utf-8", "replace")
            if text == "pid":
                reply = "PID %d" % os.getpid()
            elif text == "baud":
                reply = "BAUD %s" % line_speed(read_fd)
            else:
                reply = "ECHO %s" % text
            if tag:
                reply += " (%s)" % tag
            os.write(write_fd, (reply + "\r\n").encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stdio", action="store_true")
    mode.add_argument("--fd", type=int)
    mode.add_argument("--pty", metavar="LINK")
    mode.add_argument("--listen", metavar="ADDRESS")
    parser.add_argument("--tag", default="", help="appended to every answer, e.g. the mode")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if options.stdio:
        serve(0, 1, options.tag)
    elif options.fd is not None:
        serve(options.fd, options.fd, options.tag)
    elif options.listen:
        kind, _, address = options.listen.partition(":")
        if kind == "unix":
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(address)
        else:
            host, _, port = address.rpartition(":")
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, int(port)))
            print("listening on %s:%d" % server.getsockname(), file=sys.stderr, flush=True)
        server.listen(4)
        while True:
            connection, _ = server.accept()
            serve(connection.fileno(), connection.fileno(), options.tag)
            connection.close()
    else:
        master, slave = os.openpty()
        tty.setraw(slave)
        temporary = options.pty + ".tmp"
        os.symlink(os.ttyname(slave), temporary)
        os.rename(temporary, options.pty)  # appears atomically, ready to open
        # The slave stays open here too, so the master does not see EIO before the harness opens it.
        try:
            serve(master, master, options.tag)
        finally:
            os.unlink(options.pty)


if __name__ == "__main__":
    main()
