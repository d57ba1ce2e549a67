#!/usr/bin/env bash
# Peer-client check (DESIGN.md, testing level 4): Zaber's own Python library, zaber-motion from
# PyPI, drives operando-sim's Zaber simulator over a pseudo-terminal, as it would a real chain
# on a serial port. See scripts/zaber-motion-check.py for what is checked.
#
# Usage: scripts/zaber-motion-check.sh [BUILD_DIR]
#   BUILD_DIR                holds operando-sim (default: .build/debug)
#   ZABER_MOTION_VERSION     zaber-motion to install (default: 10.2.0, the version checked)
#   ZABER_MOTION_VENV        virtualenv to create or reuse
#                            (default: ${XDG_CACHE_HOME:-~/.cache}/operandod/zaber-motion-<version>)
#   ZABER_CHECK_DEVICES      devices on the simulated chain (default: 2)
#
# Exit status: 0 all checks passed; 1 a check failed; 2 setup failed (no operando-sim, no
# python3 venv, pip could not install zaber-motion, the simulator did not start).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-.build/debug}
version=${ZABER_MOTION_VERSION:-10.2.0}
venv=${ZABER_MOTION_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/operandod/zaber-motion-$version}
devices=${ZABER_CHECK_DEVICES:-2}
sim="$build_dir/operando-sim"

source scripts/lib/peer.sh

[ -x "$sim" ] || fail_setup "no operando-sim in $build_dir; build first (swift build) or pass the build directory"

installed() { "$venv/bin/python" -c "import zaber_motion, sys; sys.exit(zaber_motion.__version__ != '$version')" 2>/dev/null; }
ensure_venv "$venv" installed "zaber-motion==$version"

link="$work/zaber0"

"$sim" zaber --pty "$link" --devices "$devices" >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
# The simulator prints one line once the terminal and its link exist.
for _ in $(seq 100); do
  grep -q "listening on" "$work/sim.out" 2>/dev/null && break
  kill -0 "$sim_pid" 2>/dev/null || fail_setup "operando-sim exited early: $(cat "$work/sim.err")"
  sleep 0.1
done
grep -q "listening on" "$work/sim.out" || fail_setup "operando-sim did not report its pseudo-terminal within 10 s"
echo "zaber-motion-check.sh: $(head -n 1 "$work/sim.out")"

status=0
"$venv/bin/python" scripts/zaber-motion-check.py "$link" --devices "$devices" || status=1

kill -TERM "$sim_pid"
wait "$sim_pid" || { echo "zaber-motion-check.sh: operando-sim did not exit cleanly on SIGTERM" >&2; status=1; }
sim_pid=""
if [ -e "$link" ] || [ -L "$link" ]; then
  echo "zaber-motion-check.sh: operando-sim left its link $link behind" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "zaber-motion-check.sh: passed" || echo "zaber-motion-check.sh: FAILED" >&2
exit "$status"
