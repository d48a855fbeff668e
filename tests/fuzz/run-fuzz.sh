#!/bin/sh
# Builds fuzz-safetensors with clang and the sanitizers in its own build directory and runs it
# for a bounded time. Exits non-zero when the fuzzer finds a crash, leak or sanitizer report;
# the input that triggered it is left in $BUILD_DIR/fuzz-artifacts/.
#
# usage: tests/fuzz/run-fuzz.sh [SECONDS]      (default 60)
# environment: BUILD_DIR (default build-fuzz in the source tree), FUZZ_JOBS (default 1),
#              FUZZ_ARGS (extra libFuzzer flags)
set -eu

seconds=${1:-60}
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$fuzz_dir/../.." && pwd)
build_dir=${BUILD_DIR:-$source_dir/build-fuzz}
jobs=${FUZZ_JOBS:-1}
# libFuzzer switches to separate worker processes (logging to fuzz-N.log) whenever -jobs is given,
# so a single job runs in this process.
parallel=
if [ "$jobs" -gt 1 ]; then
  parallel="-jobs=$jobs -workers=$jobs"
fi

if [ ! -f "$build_dir/build.ninja" ]; then
  CC=clang meson setup "$build_dir" "$source_dir" -Dfuzzing=true -Dgst=disabled -Dtests=enabled
fi
ninja -C "$build_dir" tests/fuzz/fuzz-safetensors

# New inputs go to a scratch corpus so that the committed seeds stay as make-corpus.py wrote them.
work_corpus=$(mktemp -d "${TMPDIR:-/tmp}/moshi-fuzz-corpus.XXXXXX")
trap 'rm -rf "$work_corpus"' EXIT
trap 'exit 130' INT TERM
artifacts="$build_dir/fuzz-artifacts"
mkdir -p "$artifacts"

# -rss_limit_mb and -timeout turn runaway memory or time on one input into reported failures.
# shellcheck disable=SC2086
"$build_dir/tests/fuzz/fuzz-safetensors" \
  -max_total_time="$seconds" \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -max_len=65536 \
  $parallel \
  -dict="$fuzz_dir/safetensors.dict" \
  -artifact_prefix="$artifacts/" \
  -print_final_stats=1 \
  ${FUZZ_ARGS:-} \
  "$work_corpus" "$fuzz_dir/corpus"
