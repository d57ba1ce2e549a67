# Shared by the peer checks (zaber-motion-check.sh, nanonis-check.sh, nexus-check.sh): the
# setup-failure exit, a virtualenv with pinned packages from PyPI, and a scratch directory with a
# background simulator that are cleaned up when the script exits. Source it; it sets `work`.

script_name=$(basename "$0")

# Exit status 2 means "could not set up", not "a check failed".
fail_setup() {
  echo "$script_name: $*" >&2
  exit 2
}

# ensure_venv VENV CHECK [--system-site] PACKAGE...: unless the command CHECK succeeds, create
# VENV (seeing Debian's site packages with --system-site) and pip install the PACKAGEs into it;
# then CHECK must succeed.
ensure_venv() {
  local venv=$1 check=$2
  shift 2
  "$check" && return 0
  local site=()
  if [ "${1:-}" = --system-site ]; then site=(--system-site-packages); shift; fi
  local python=/usr/bin/python3
  [ -x "$python" ] || python=$(command -v python3) || fail_setup "no python3"
  echo "$script_name: installing $* into $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "${site[@]}" "$venv" || fail_setup "python3 -m venv $venv failed; install python3-venv (apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2 || fail_setup "pip could not install $*; is PyPI reachable?"
  "$check" || fail_setup "$* is not importable from $venv after pip install"
}

# A scratch directory, and the simulator a script starts into `sim_pid`, go when it exits.
work=$(mktemp -d)
sim_pid=""
peer_cleanup() {
  if [ -n "$sim_pid" ] && kill -0 "$sim_pid" 2>/dev/null; then
    kill -TERM "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap peer_cleanup EXIT
