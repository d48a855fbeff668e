#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU and no network:
#   1. the release-style build (debugoptimized) and its full test suite;
#   2. the same unit tests built with AddressSanitizer + UndefinedBehaviorSanitizer;
#   3. the safetensors fuzz target for a bounded time (FUZZ_SECONDS, default 60).
# Usage: tools/run-tests.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

tools/setup-deps.sh --with-fuzz

jobs=$(nproc)

echo "=== build (debugoptimized) ==="
if [[ ! -d build ]]; then
  meson setup build -Dtests=enabled
fi
ninja -C build -j"$jobs"
echo "=== tests ==="
meson test -C build --print-errorlogs --num-processes "$jobs"

echo "=== tests under ASan + UBSan ==="
if [[ ! -d build-asan ]]; then
  meson setup build-asan -Dtests=enabled -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug
fi
ninja -C build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --suite unit --print-errorlogs --num-processes "$jobs" --timeout-multiplier 4

echo "=== fuzz: safetensors parser (${FUZZ_SECONDS:-60} s) ==="
tests/fuzz/run-fuzz.sh "${FUZZ_SECONDS:-60}"

echo "all tests passed"
