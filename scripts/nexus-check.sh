#!/usr/bin/env bash
# Peer-reader check of NeXus files written by operandod's export (DESIGN.md, testing level 4):
# nexusformat and silx, from PyPI, must open each file without a single warning.
#
# For each FILE: nexusformat.nexus.nxload reads it and prints its tree; silx checks every NXdata
# group with silx.io.nxdata.is_valid_nxdata and reads it through silx.io.nxdata.NXdata (signal,
# axes, auxiliary signals). Python runs with -W error, so any warning fails the check.
#
# Usage: scripts/nexus-check.sh FILE...
#   NEXUS_CHECK_VENV       virtualenv to create or reuse (default: $REPO/.venv-nexus)
#   NEXUSFORMAT_VERSION    nexusformat to install (default: 2.1.0, the version checked)
#   SILX_VERSION           silx to install (default: 3.1.3, the version checked)
#
# The virtualenv is made with --system-site-packages, so Debian's h5py and numpy are used when
# they satisfy nexusformat and silx; otherwise pip installs what they need into the venv.
#
# Exit status: 0 every file passed; 1 a file failed a check; 2 setup failed (no python3 venv,
# pip could not install the readers, no file given).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${NEXUS_CHECK_VENV:-$repo/.venv-nexus}
nexusformat_version=${NEXUSFORMAT_VERSION:-2.1.0}
silx_version=${SILX_VERSION:-3.1.3}

source "$repo/scripts/lib/peer.sh"

[ "$#" -gt 0 ] || fail_setup "usage: scripts/nexus-check.sh FILE..."

installed() {
  "$venv/bin/python" - "$nexusformat_version" "$silx_version" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if (version("nexusformat"), version("silx")) == (sys.argv[1], sys.argv[2]) else 1)
PY
}
ensure_venv "$venv" installed --system-site "nexusformat==$nexusformat_version" "silx==$silx_version"

status=0
for file in "$@"; do
  if [ ! -f "$file" ]; then
    echo "nexus-check.sh: $file: no such file" >&2
    status=1
    continue
  fi
  if ! "$venv/bin/python" -W error - "$file" <<'PY'; then
import sys
import warnings

warnings.simplefilter("error")

import h5py
from importlib.metadata import version
from nexusformat.nexus import nxload
from silx.io import nxdata

path = sys.argv[1]
problems = []

# nexusformat: the whole tree, as its users see it.
root = nxload(path, "r")
print(root.tree)
entries = [e for e in root.NXentry]
if not entries:
    problems.append("nexusformat finds no NXentry")
for entry in entries:
    plottable = entry.plottable_data
    if plottable is None:
        problems.append(f"nexusformat finds no default plottable data in {entry.nxpath}")
    else:
        print(f"nexusformat: default data {plottable.nxpath}: signal {plottable.nxsignal.nxname} "
              f"{plottable.nxsignal.shape}, axes {[a.nxname for a in plottable.nxaxes]}")
root.nxfile.close()

# silx: every NXdata group is valid, and its signal, axes and auxiliary signals read.
groups = []
with h5py.File(path, "r") as f:
    def visit(name, obj):
        if isinstance(obj, h5py.Group) and obj.attrs.get("NX_class") in ("NXdata", b"NXdata"):
            groups.append(name)
    f.visititems(visit)
    if not groups:
        problems.append("no NXdata group")
    for name in groups:
        group = f[name]
        if not nxdata.is_valid_nxdata(group):
            problems.append(f"silx: /{name} is not a valid NXdata group")
            continue
        d = nxdata.NXdata(group)
        axes = [a.name if a is not None else None for a in d.axes]
        aux = [s.name for s in d.auxiliary_signals]
        print(f"silx: /{name}: signal {d.signal.name} {d.signal.shape} {d.signal.dtype}, axes {axes}, "
              f"auxiliary {aux}, interpretation {d.interpretation}")
    default = nxdata.get_default(f)
    if default is None:
        problems.append("silx finds no default NXdata")
    else:
        print(f"silx: default NXdata {default.group.name}")

print(f"readers: nexusformat {version('nexusformat')}, silx {version('silx')}, h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}")
for p in problems:
    print(f"nexus-check.sh: {path}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    echo "nexus-check.sh: $file: FAILED" >&2
    status=1
  else
    echo "nexus-check.sh: $file: passed"
  fi
done
exit "$status"
