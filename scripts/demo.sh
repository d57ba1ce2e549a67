#!/usr/bin/env bash
# The demo: builds operandod, starts it with simulated instruments (Config/demo.toml: a
# potentiostat cycling a virtual cell and an X-ray fluorescence detector watching it), records
# a short operando run through operandoctl, stops it, and shows what was recorded and where.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh

seconds="${DEMO_SECONDS:-12}"
echo "==> building (first build takes a minute or two)"
swift build -c release --product operandod >/dev/null
swift build -c release --product operandoctl >/dev/null
bin=.build/release
work="${DEMO_DIR:-$PWD/demo-data}"
mkdir -p "$work"
socket="$work/control.sock"
export OPERANDO_SOCKET="$socket"
ctl() { "$bin/operandoctl" "$@"; }

echo "==> starting operandod with Config/demo.toml (log: $work/operandod.log)"
"$bin/operandod" --config Config/demo.toml --socket "$socket" --data-dir "$work" 2>"$work/operandod.log" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "operandod did not start; see $work/operandod.log" >&2; cat "$work/operandod.log" >&2; exit 1; }
sleep 0.5

echo; echo "==> operandoctl devices (CLOCK: each device's clock model, its uncertainty and drift)"; ctl devices
echo; echo "==> operandoctl run start demo-cycle --meta-file Config/demo-experiment.toml --duration 1h (metadata checked against the schema; space checked)"
ctl run start demo-cycle --meta-file Config/demo-experiment.toml --duration 1h
half=$((seconds / 2))
echo; echo "==> operandoctl home stage; operandoctl move stage 2.5mm (the sample moves into the beam)"
ctl home stage
sleep 2
ctl move stage 2.5mm
sleep "$((half > 2 ? half - 2 : 1))"
echo; echo "==> operandoctl mark 'beam on sample'"; ctl mark "beam on sample"
echo; echo "==> operandoctl bias afm 0.5 (the AFM's tip bias: a stimulus on the same timeline)"; ctl bias afm 0.5
echo; echo "==> operandoctl trigger pstat --line gpio0 --pulse-ms 5 (a TTL edge on the potentiostat's GPIO, on its clock)"
ctl trigger pstat --line gpio0 --pulse-ms 5
sleep "$((seconds - half))"
echo; echo "==> operandoctl status"; ctl status
echo; echo "==> operandoctl tail pstat/ei (newest samples: E, I, cycle; I changes sign at the 4.2 V cutoff)"; ctl tail pstat/ei | tail -n 4
echo; echo "==> operandoctl tail pstat/events (the stimulus record)"; ctl tail pstat/events
echo; echo "==> operandoctl tail dp5/status (the Amptek DP5's counts, dead time, temperatures, HV)"; ctl tail dp5/status | tail -n 2
echo; echo "==> operandoctl tail stage/position (µm, as measured)"; ctl tail stage/position | tail -n 2
echo; echo "==> operandoctl tail stage/events"; ctl tail stage/events
echo; echo "==> operandoctl run stop"; ctl run stop
echo; echo "==> operandoctl run list"; ctl run list
run_dir=$(ls -d "$work"/runs/*-demo-cycle | tail -n 1)
run=$(basename "$run_dir")
echo; echo "==> operandoctl refit $run (every device clock refitted from the observations stored in the run)"; ctl refit "$run"
echo; echo "==> operandoctl align $run --response xrf/spectrum --stimulus pstat (the stimulus during each spectrum; first rows)"
ctl align "$run" --response xrf/spectrum --stimulus pstat >"$work/align.txt"
head -n 8 "$work/align.txt"
ctl align "$run" --response xrf/spectrum --stimulus pstat --csv >"$work/align.csv"
echo "(all $(($(wc -l <"$work/align.csv") - 1)) spectra as CSV: $work/align.csv)"
echo; echo "==> operandoctl align $run --response afm/line --stimulus pstat (the electrochemical state during each AFM scan line; first rows)"
ctl align "$run" --response afm/line --stimulus pstat >"$work/align-afm.txt"
head -n 5 "$work/align-afm.txt" | cut -c1-160
echo; echo "==> operandoctl export $run --output $work/demo.nxs (NeXus/HDF5: opens in h5py, silx, nexusformat)"
ctl export "$run" --output "$work/demo.nxs"

kill -TERM "$daemon"; wait "$daemon" || true
trap - EXIT
echo
echo "==> recorded into $run_dir"
ls -l "$run_dir" "$run_dir/segments"
echo
echo "run.json holds the metadata, provenance (config, devices, versions) and per-stream counts;"
echo "segments/*.seg hold every record with a CRC-32C. The daemon stopped cleanly on SIGTERM."
