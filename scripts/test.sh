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
swift test --skip-build

echo "--- benchmark smoke run (small sizes; see README for full runs) ---"
.build/debug/operando-bench ring --records 1000000 --frames 200
.build/debug/operando-bench record --megabytes 64 --rounds 1
