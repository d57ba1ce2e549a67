#!/usr/bin/env bash
# Peer-client check (DESIGN.md, testing level 4): SPECS Zurich's own Python client, nanonis-spm
# from PyPI, drives operandod's Nanonis simulator over TCP as it would the Nanonis software.
# See Tests/Support/nanonis-client-check.py for what is called and checked.
#
# Usage: scripts/nanonis-check.sh [--port PORT [--host HOST]] [--build-dir DIR]
#   --port PORT          check a simulator already listening there (default host 127.0.0.1)
#   (no --port)          start BUILD_DIR/operando-sim nanonis --listen 127.0.0.1:0 and check it
#   --build-dir DIR      holds operando-sim (default: .build/debug)
#   NANONIS_CHECK_VENV   virtualenv to create or reuse (default: $REPO/.venv-nanonis)
#   NANONIS_SPM_VERSION  nanonis-spm to install (default: 1.0.9, the version checked)
#
# The virtualenv is made with --system-site-packages so Debian's numpy (which the client needs
# and does not declare) is used when present; otherwise pip installs numpy into it.
#
# Exit status: 0 every check passed; 1 a check failed; 2 setup failed (no python3 venv, pip
# could not install the client, no operando-sim, the simulator did not start).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NANONIS_CHECK_VENV:-$repo/.venv-nanonis}
version=${NANONIS_SPM_VERSION:-1.0.9}
host=127.0.0.1
port=""
build_dir="$repo/.build/debug"

source "$repo/scripts/lib/peer.sh"

while [ "$#" -gt 0 ]; do
  case "$1" in
    --port) [ "$#" -ge 2 ] || fail_setup "--port needs a value"; port=$2; shift 2 ;;
    --host) [ "$#" -ge 2 ] || fail_setup "--host needs a value"; host=$2; shift 2 ;;
    --build-dir) [ "$#" -ge 2 ] || fail_setup "--build-dir needs a value"; build_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) fail_setup "unknown argument $1 (see --help)" ;;
  esac
done
if [ -n "$port" ]; then
  case "$port" in (*[!0-9]*|'') fail_setup "--port $port is not a port number" ;; esac
fi

installed() {
  "$venv/bin/python" - "$version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import numpy, nanonis_spm  # noqa: F401  (the client imports numpy)
sys.exit(0 if version("nanonis_spm") == sys.argv[1] else 1)
PY
}
ensure_venv "$venv" installed --system-site "nanonis-spm==$version" "numpy>=1.21"

if [ -z "$port" ]; then
  sim="$build_dir/operando-sim"
  [ -x "$sim" ] || fail_setup "no operando-sim in $build_dir; build first (swift build) or pass --build-dir or --port"
  "$sim" nanonis --listen 127.0.0.1:0 >"$work/sim.out" 2>"$work/sim.err" &
  sim_pid=$!
  # The simulator prints "operando-sim: nanonis listening on 127.0.0.1:PORT" once it listens.
  for _ in $(seq 100); do
    grep -q "listening on" "$work/sim.out" 2>/dev/null && break
    kill -0 "$sim_pid" 2>/dev/null || fail_setup "operando-sim exited early: $(cat "$work/sim.err")"
    sleep 0.1
  done
  line=$(grep -m 1 "listening on" "$work/sim.out" || true)
  [ -n "$line" ] || fail_setup "operando-sim did not report its port within 10 s"
  port=${line##*:}
  host=127.0.0.1
  echo "nanonis-check.sh: $line"
fi

status=0
"$venv/bin/python" "$repo/Tests/Support/nanonis-client-check.py" "$host" "$port" || status=1

if [ -n "$sim_pid" ]; then
  kill -TERM "$sim_pid"
  wait "$sim_pid" || { echo "nanonis-check.sh: operando-sim did not exit cleanly on SIGTERM" >&2; status=1; }
  sim_pid=""
fi
[ "$status" -eq 0 ] && echo "nanonis-check.sh: passed" || echo "nanonis-check.sh: FAILED" >&2
exit "$status"
