#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU and no network:
#   1. the release-style build (debugoptimized) and its full test suite (with the 'network'
#      suite: a browser talking to the WebRTC demo, on loopback only);
#   2. the same unit tests built with AddressSanitizer + UndefinedBehaviorSanitizer (but the
#      'eager' variants of the recorded-step tests and the slow scheduler runs on the
#      emulated CUDA backend, suite 'emu-slow');
#   3. the GStreamer element tests under valgrind (GLib's and our own suppressions);
#   4. the fuzz targets (safetensors, LM and Mimi configs, tokenizer, WAV) for a bounded time,
#      FUZZ_SECONDS in all (default 60), split evenly between them.
# Ends with one line 'N passed, N failed, N skipped' over all the test runs.
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
  meson test -C build-asan --suite unit --no-suite eager --no-suite emu-slow --print-errorlogs \
  --num-processes "$jobs" \
  --timeout-multiplier 4

echo "=== GStreamer tests under valgrind ==="
meson test -C build --setup valgrind --suite gst --print-errorlogs --num-processes "$jobs"

echo "=== fuzz: the parsers (${FUZZ_SECONDS:-60} s in all) ==="
tests/fuzz/run-fuzz.sh "${FUZZ_SECONDS:-60}"

# One summary over the three meson runs (each test log is JSON lines with a "result").
python3 - build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
    build/meson-logs/testlog-valgrind.json <<'PY'
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0}
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            result = json.loads(line).get("result", "")
            key = "OK" if result == "OK" else "SKIP" if result == "SKIP" else "FAIL"
            counts[key] += 1
print("%d passed, %d failed, %d skipped" % (counts["OK"], counts["FAIL"], counts["SKIP"]))
PY
