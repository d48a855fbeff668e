#!/bin/sh
# Builds the libFuzzer targets with clang and the sanitizers in their own build directory and
# runs each for a bounded time: SECONDS in all (default 60), split evenly between the targets
# (at least 1 s each). Exits non-zero when a fuzzer finds a crash, leak or sanitizer report; the
# input that triggered it is left in $BUILD_DIR/fuzz-artifacts/<target>/. Every target runs even
# after one fails, so that one report does not hide another.
#
# usage: tests/fuzz/run-fuzz.sh [SECONDS [TARGET...]]
#        targets: safetensors lm-config mimi-config tokenizer wav codes mimi-tokens
#                 server-input rtp-mimi (default: all)
# environment: BUILD_DIR (default build-fuzz in the source tree), FUZZ_JOBS (default 1),
#              FUZZ_ARGS (extra libFuzzer flags)
set -eu

seconds=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-safetensors lm-config mimi-config tokenizer wav codes mimi-tokens server-input rtp-mimi}
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$fuzz_dir/../.." && pwd)
data_dir=$source_dir/tests/data
build_dir=${BUILD_DIR:-$source_dir/build-fuzz}
jobs=${FUZZ_JOBS:-1}
# libFuzzer switches to separate worker processes (logging to fuzz-N.log) whenever -jobs is given,
# so a single job runs in this process.
parallel=
if [ "$jobs" -gt 1 ]; then
  parallel="-jobs=$jobs -workers=$jobs"
fi

set -- $targets
each=$((seconds / $#))
[ "$each" -ge 1 ] || each=1

if [ ! -f "$build_dir/build.ninja" ]; then
  CC=clang meson setup "$build_dir" "$source_dir" -Dfuzzing=true -Dgst=disabled -Dtests=enabled
fi
for t in $targets; do
  ninja -C "$build_dir" "tests/fuzz/fuzz-$t"
done

# New inputs go to scratch corpora so that the committed seeds stay as make-corpus.py wrote them.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/moshi-fuzz-corpus.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
trap 'exit 130' INT TERM

# The seeds of each target: a directory of inputs (for the configs, those of the test data,
# copied since libFuzzer reads whole directories).
seeds () {
  dir=$scratch/seeds-$1
  mkdir -p "$dir"
  case $1 in
    safetensors) echo "$fuzz_dir/corpus"; return ;;
    wav) echo "$fuzz_dir/corpus-wav"; return ;;
    lm-config)
      for f in "$data_dir"/lm/*/config.json "$data_dir"/lm/*.json; do
        cp "$f" "$dir/$(echo "$f" | tr / _)"
      done ;;
    mimi-config)
      for f in "$data_dir"/mimi/*/config.json; do
        cp "$f" "$dir/$(echo "$f" | tr / _)"
      done ;;
    tokenizer|codes|mimi-tokens|server-input|rtp-mimi) echo "$fuzz_dir/corpus-$1"; return ;;
  esac
  echo "$dir"
}

dict () {
  case $1 in
    safetensors|codes) echo "-dict=$fuzz_dir/safetensors.dict" ;;
    lm-config|mimi-config) echo "-dict=$fuzz_dir/config.dict" ;;
  esac
}

failed=
for t in $targets; do
  echo "=== fuzz-$t: $each s ==="
  artifacts="$build_dir/fuzz-artifacts/$t"
  mkdir -p "$artifacts" "$scratch/new-$t"
  # -rss_limit_mb and -timeout turn runaway memory or time on one input into reported failures.
  # shellcheck disable=SC2046,SC2086
  if ! "$build_dir/tests/fuzz/fuzz-$t" \
      -max_total_time="$each" \
      -timeout=10 \
      -rss_limit_mb=2048 \
      -max_len=65536 \
      $parallel \
      $(dict "$t") \
      -artifact_prefix="$artifacts/" \
      -print_final_stats=1 \
      ${FUZZ_ARGS:-} \
      "$scratch/new-$t" "$(seeds "$t")"; then
    failed="$failed $t"
  fi
done
if [ -n "$failed" ]; then
  echo "fuzzing failed:$failed (inputs in $build_dir/fuzz-artifacts/)" >&2
  exit 1
fi
