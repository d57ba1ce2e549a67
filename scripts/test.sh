#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds everything (the integration tests run the
# real executables), runs every test, then runs each benchmark once at a small size to prove it
# works (benchmarks print figures; they never fail on speed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/install-deps.sh

swift build --build-tests 2>&1 | grep -v "^\[" || true
swift build --build-tests >/dev/null   # fail here if the build failed
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
swift test --skip-build --disable-swift-testing 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo "--- benchmark smoke run: debug build, small sizes, figures not representative (README: full runs) ---"
.build/debug/operando-bench ring --records 1000000 --frames 200
.build/debug/operando-bench record --megabytes 64 --rounds 1
.build/debug/operando-bench usb --spectra 50 --channels 1024

# One closing line for people and CI: XCTest's totals from the "All tests" summary.
summary=$(grep -A1 "Test Suite 'All tests'" "$log" | grep -o "Executed [0-9]* tests\?, with [0-9]* failures\?" | tail -n 1)
executed=$(echo "$summary" | awk '{print $2}')
failures=$(echo "$summary" | awk '{print $5}')
if [ -z "$executed" ]; then
  echo "test.sh: could not find XCTest's summary; swift test exited $status" >&2
  exit 1
fi
echo "$((executed - failures)) passed, $failures failed"
exit "$status"
