#!/usr/bin/env bash
# Sets up, builds and runs every test that needs no GPU and no network:
#   1. the release-style build (debugoptimized) and its full test suite (with the 'network'
#      suite: a browser talking to the WebRTC demo, on loopback only);
#   2. the same unit tests built with AddressSanitizer + UndefinedBehaviorSanitizer, but those
#      whose sanitizer run would only repeat what other sanitized tests already execute:
#      suites 'eager', 'emu-slow' and 'not-sanitized' (see below);
#   3. the GStreamer element tests under valgrind (GLib's and our own suppressions), and beside
#      them, in the background,
#   4. the fuzz targets (every parser and entry point that takes outside bytes) for a bounded
#      time, FUZZ_SECONDS in all (default 135), split evenly between them; their output follows
#      the valgrind stage's.
# Ends with one line 'N passed, N failed, N skipped' over all the test runs.
# Usage: tools/run-tests.sh            (from the repository root)
#
# Time on the 2-core CI machine, and what the sanitizer run leaves out for it. The ASan + UBSan
# stage was the longest (about 520 s of 930); its slowest tests were emulated-CUDA runs whose
# code other sanitized tests already execute:
#   - test-mimi-cuda-emu-golden (~160-180 s) and test-lm-cuda-emu-golden (~115 s): every kernel
#     they launch is launched by the emulated-backend tests that stay (LM upstream, sampling,
#     hibiki, the dialog conversation, accounting, the backend test); the emulator bounds-checks
#     device memory in every build; the Mimi and LM code above the backend runs its golden cases
#     sanitized on the CPU. What goes: sanitizing the CUDA backend's host code at the golden
#     cases' particular shapes (one-shot and chunked Mimi calls, the golden LMs' greedy runs).
#   - cuda-planted-bugs (~135-165 s): a test of the kernel tests on deliberately broken kernels
#     that are never shipped; the kernel tests on the real kernels stay sanitized.
#   - gpu-run-script (~14 s): Python and shell stubs, nothing of the sanitizer build.
# Together about 420 s of test time, about 210 s of wall time on two processes. The fuzzers run
# on one core while valgrind runs the four GStreamer suites on two processes; those are uneven
# (under valgrind gst-rtp-mimi and gst-moshi-dialog take 1.5 min each, gst-mimi-elements
# several), so one core idles in the stage's tail and the fuzzers mostly fill it; at worst they
# add their own FUZZ_SECONDS.
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
  meson test -C build-asan --suite unit --no-suite eager --no-suite emu-slow \
  --no-suite not-sanitized --print-errorlogs \
  --num-processes "$jobs" \
  --timeout-multiplier 4

fuzz_seconds=${FUZZ_SECONDS:-135}
echo "=== fuzz: the parsers and entry points (${fuzz_seconds} s in all), in the background ==="
fuzz_log=build/fuzz.log
tests/fuzz/run-fuzz.sh "$fuzz_seconds" > "$fuzz_log" 2>&1 &
# No trap needed: each fuzzer stops after its share (-max_total_time), and an interrupt from the
# terminal reaches this background job too (same process group).
fuzz_pid=$!

echo "=== GStreamer tests under valgrind ==="
valgrind_status=0
meson test -C build --setup valgrind --suite gst --print-errorlogs --num-processes "$jobs" \
  || valgrind_status=$?

fuzz_status=0
wait "$fuzz_pid" || fuzz_status=$?
echo "=== fuzz: output ==="
cat "$fuzz_log"
if [[ $valgrind_status -ne 0 || $fuzz_status -ne 0 ]]; then
  echo "failed: valgrind stage status $valgrind_status, fuzz status $fuzz_status" >&2
  exit 1
fi

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
