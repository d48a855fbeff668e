#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step functions run through run_step (bash -c, exported)
# The device bundle's run script (copied to gpu-bundle/run.sh by tools/gpu-bundle.sh; see
# docs/cuda.md, "The device bundle"). On the GPU machine, from the repository root:
#
#   bash gpu-bundle/run.sh
#
# It prints nvidia-smi, measures the device's copy bandwidth once, runs the gpu suite (each test
# with a timeout), `moshi-tool bench lm --device cuda` on the 7B shape with random BF16 weights
# at batch 1,8,32,64, `bench mimi` on cuda, `bench serve` if the tool has it, upstream PyTorch
# moshi 0.2.13 on the same card (LMGen with its CUDA graphs at batch 1 and 8, Mimi encode +
# decode), and compute-sanitizer memcheck on the kernel test where the sanitizer is installed.
# Every step has a timeout inside one overall budget, so the whole run ends in time for one
# 10-minute device command; a step that finds no time left is skipped and says so.
#
# Logs: $OUT/run.log (this output), $OUT/steps.log (every step's full output), $OUT/summary.txt
# (the table printed last), $OUT/logs.tar.gz (one log per step). Without $OUT, a new folder
# under /tmp.
#
# Environment:
#   MOSHI_GPU_BUDGET   seconds for the whole run (default 420)
#   MOSHI_GPU_PYTHON   the Python with torch for the upstream steps (default python3)
#   MOSHI_CUBLAS_DIR   where libcublas lives, if the search below does not find it
#   MOSHI_GPU_STEPS    only these steps (space-separated names or prefixes: libs nvidia-smi
#                      bandwidth suite: bench-lm mimi-weights bench-mimi bench-serve upstream
#                      memcheck: upstream-compiled)
#   MOSHI_BENCH_LM_BATCH  batch sizes for bench lm (default 1,8,32,64)
#   MOSHI_GPU_TEST_TIMEOUT, MOSHI_GPU_SUITE_BUDGET  seconds per gpu-suite test (default 90) and
#                      for the whole suite (default 180)
#   MOSHI_BENCH_SERVE_ARGS  extra arguments for `moshi-tool bench serve`
#
# Exit status: 0 when every step passed or was skipped for a stated reason, 1 otherwise. Without
# a GPU every GPU step ends NO-GPU ("no CUDA device") and the status is 0 only with
# MOSHI_GPU_DRY_RUN=1 (the dry run on a machine without one).
set -euo pipefail

B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
START=$(date +%s)
BUDGET=${MOSHI_GPU_BUDGET:-420}
DEADLINE=$((START + BUDGET))
RESERVE=15            # seconds kept for the summary and the log archive
PY=${MOSHI_GPU_PYTHON:-python3}

if [ -z "${OUT:-}" ]; then
  OUT=$(mktemp -d /tmp/moshi-gpu-out.XXXXXX)
fi
mkdir -p "$OUT"
chmod +x "$B"/bin/* 2>/dev/null || true      # in case the copy to the device lost the modes
WORK=$(mktemp -d /tmp/moshi-gpu-work.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
: >"$OUT/steps.log"
: >"$WORK/results.tsv"
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!
# at exit: remove the work folder (the Mimi weights are 385 MB), let tee write run.log's end
finish () {
  rm -rf "$WORK"
  exec 1>&- 2>&-
  wait "$TEE_PID" 2>/dev/null || true
}
trap finish EXIT

NO_GPU_RE='no usable CUDA device|no usable CUDA GPU|SKIP: no CUDA device|no CUDA-capable device|CUDA driver version is insufficient|Found no NVIDIA driver|nvidia-smi: not found|NVIDIA-SMI has failed'

echo "gst-moshi GPU bundle run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${BUDGET} s"
echo "bundle: $B"
[ -f "$B/BUILD-INFO" ] && sed 's/^/  /' "$B/BUILD-INFO"
echo "logs: $OUT"

# ---------------------------------------------------------------- steps

# clip FILE BYTES: FILE's first and last BYTES/2, with a line saying what was cut (the device
# tool brings back files of at most 16 MiB)
clip () {
  local f=$1 max=$2 size
  size=$(stat -c %s "$f")
  if [ "$size" -le "$max" ]; then
    cat "$f"
  else
    head -c $((max / 2)) "$f"
    printf '\n[... %d bytes cut ...]\n' $((size - max))
    tail -c $((max / 2)) "$f"
  fi
}

# record NAME STATUS SECONDS NOTE
record () {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/results.tsv"
}

# passed NAME: whether step NAME ran and passed
passed () {
  awk -F '\t' -v n="$1" '$1 == n && $2 == "PASS" { ok = 1 } END { exit !ok }' "$WORK/results.tsv"
}

wanted () {
  local name=$1 s
  [ -z "${MOSHI_GPU_STEPS:-}" ] && return 0
  for s in $MOSHI_GPU_STEPS; do
    case "$name" in "$s"*) return 0 ;; esac
  done
  return 1
}

# run_step NAME MAX_SECONDS CMD...: runs CMD with its output in $LOGS/NAME.log, under a timeout
# of MAX_SECONDS or what is left of the budget, whichever is less; records PASS, FAIL, TIMEOUT,
# NO-GPU (the step needs a GPU and there is none) or SKIP (exit 77 for another stated reason).
run_step () {
  local name=$1 max=$2
  shift 2
  wanted "$name" || return 0
  local now left t log rc=0 t0 t1 status note=""
  now=$(date +%s)
  left=$((DEADLINE - now - RESERVE))
  t=$max
  [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -lt 5 ]; then
    echo "=== $name: skipped, no time left in the ${BUDGET} s budget"
    record "$name" SKIP 0 "no time left in the ${BUDGET} s budget"
    return 0
  fi
  log="$LOGS/${name//[^A-Za-z0-9._-]/_}.log"
  echo "=== $name (timeout ${t} s): $*"
  t0=$(date +%s.%N)
  # (bash -c: CMD may be one of the functions below, exported)
  timeout -k 10 "$t" bash -c '"$@"' "$name" "$@" >"$log" 2>&1 </dev/null || rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then
    status=PASS
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=TIMEOUT
    note="killed after ${t} s"
  elif grep -Eq "$NO_GPU_RE" "$log"; then
    status=NO-GPU
    note=$(grep -Em1 "$NO_GPU_RE" "$log" | cut -c1-150)
  elif grep -Eq 'out of memory|cannot allocate' "$log"; then
    status=OOM          # reported, not a failure: e.g. 64 sessions' f32 KV caches of the 7B
    note=$(grep -Em1 'out of memory|cannot allocate' "$log" | cut -c1-150)
  elif [ "$rc" -eq 77 ]; then
    status=SKIP
    note=$(grep -m1 'SKIP' "$log" | cut -c1-150 || true)
  else
    status=FAIL
    note="exit status $rc"
  fi
  {
    echo "==================== $name: $status (exit $rc, $secs s): $*"
    clip "$log" 600000
    echo
  } >>"$OUT/steps.log"
  # the end of the step's output, so that the command's reply shows it
  local n=8
  if [ "$status" = FAIL ] || [ "$status" = TIMEOUT ]; then n=30; fi
  tail -n "$n" "$log" | cut -c1-400 | sed 's/^/  | /'
  echo "--- $name: $status ($secs s) ${note}"
  record "$name" "$status" "$secs" "$note"
}

# ---------------------------------------------------------------- libraries

SYSLIB=$WORK/syslib
mkdir -p "$SYSLIB"
if [ -f "$B/syslib.tar.xz" ]; then
  if ! tar -C "$SYSLIB" -xJf "$B/syslib.tar.xz" 2>/dev/null; then
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$B/syslib.tar.xz" "$SYSLIB"
  fi
fi

# cuBLAS is not bundled (libcublasLt alone is over 500 MB): the device's own, CUDA 13.
find_cublas () {
  local want=libcublas.so.13 d
  [ -f "$B/device-libs.txt" ] && want=$(grep -m1 '^libcublas\.so' "$B/device-libs.txt" || echo libcublas.so.13)
  for d in ${MOSHI_CUBLAS_DIR:-} /usr/local/cuda/lib64 /usr/local/cuda/lib \
           /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/lib; do
    if [ -e "$d/$want" ]; then echo "$d"; return 0; fi
  done
  d=$(ldconfig -p 2>/dev/null | awk -v w="$want" '$1 == w { print $NF; exit }')
  if [ -n "$d" ]; then dirname "$d"; return 0; fi
  d=$("$PY" - "$want" 2>/dev/null <<'EOF' || true
import glob, os, site, sys
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for hit in glob.glob(os.path.join(sp, "nvidia", "**", sys.argv[1]), recursive=True):
        print(os.path.dirname(hit))
        raise SystemExit(0)
EOF
)
  if [ -n "$d" ]; then echo "$d"; return 0; fi
  d=$(timeout 30 find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$want" -print 2>/dev/null | head -n1 || true)
  [ -n "$d" ] && dirname "$d"
  return 0
}
CUBLAS_DIR=$(find_cublas)
LDP="$B/lib:$SYSLIB"
[ -n "$CUBLAS_DIR" ] && LDP="$LDP:$CUBLAS_DIR"
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [ -d "$d" ] && LDP="$LDP:$d"
done
[ -n "${LD_LIBRARY_PATH:-}" ] && LDP="$LDP:$LD_LIBRARY_PATH"
echo "cuBLAS: ${CUBLAS_DIR:-not found (set MOSHI_CUBLAS_DIR)}"
echo "LD_LIBRARY_PATH for the bundle's programs: $LDP"

# ours: runs one of the bundle's programs with its libraries (python3 and nvidia-smi keep the
# machine's own)
ours () {
  env LD_LIBRARY_PATH="$LDP" MOSHI_CUDA_MODULE="$B/lib/libmoshi-cuda.so" "$@"
}

check_libs () {
  local f bad=0
  echo "this machine: $(ldd --version | head -n1); the bundle needs glibc $(grep -o 'glibc [0-9.]*' "$B/BUILD-INFO" 2>/dev/null || echo '?')"
  for f in "$B"/bin/* "$B"/lib/*.so*; do
    if LD_LIBRARY_PATH="$LDP" ldd "$f" | grep -q 'not found'; then
      echo "$f:"
      LD_LIBRARY_PATH="$LDP" ldd "$f" | grep 'not found'
      bad=1
    fi
  done
  LD_LIBRARY_PATH="$LDP" ldd "$B/lib/libmoshi-cuda.so"
  [ "$bad" -eq 0 ] && echo "every library resolves"
  return "$bad"
}
export B LDP PY SYSLIB
export -f ours check_libs
run_step libs 30 check_libs

# ---------------------------------------------------------------- the card

gpu_info () {
  if ! command -v nvidia-smi >/dev/null; then
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
    return 77
  fi
  nvidia-smi || return $?
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu --format=csv
}
export -f gpu_info
run_step nvidia-smi 30 gpu_info
run_step bandwidth 60 ours "$B/bin/moshi-copy-bandwidth" 2048

# ---------------------------------------------------------------- the gpu suite

# tests.list (written by tools/gpu-bundle.sh from meson's test list): name, timeout, environment
# (K=V ...), program, arguments; @B@ is the bundle folder.
run_suite_test () {
  local envs=$1 exe=$2 args=$3
  local -a env_args=() arg_list=()
  local kv a
  for kv in ${envs//@B@/$B}; do env_args+=("$kv"); done
  for a in ${args//@B@/$B}; do arg_list+=("$a"); done
  ours env "${env_args[@]}" "$B/bin/$exe" "${arg_list[@]}"
}
export -f run_suite_test
# Each test gets at most MOSHI_GPU_TEST_TIMEOUT seconds, the suite as a whole MOSHI_GPU_SUITE_BUDGET
# (so that a hanging suite leaves the benchmarks their time).
SUITE_CAP=${MOSHI_GPU_TEST_TIMEOUT:-90}
SUITE_END=$(( $(date +%s) + ${MOSHI_GPU_SUITE_BUDGET:-180} ))
while IFS=$'\t' read -r name timeout envs exe args; do
  [ -z "$name" ] && continue
  case "$name" in \#*) continue ;; esac
  [ "$timeout" -gt "$SUITE_CAP" ] && timeout=$SUITE_CAP
  suite_left=$((SUITE_END - $(date +%s)))
  [ "$timeout" -gt "$suite_left" ] && timeout=$suite_left
  if [ "$timeout" -lt 5 ]; then
    wanted "suite:$name" && record "suite:$name" SKIP 0 "the suite's ${MOSHI_GPU_SUITE_BUDGET:-180} s are spent"
    continue
  fi
  run_step "suite:$name" "$timeout" run_suite_test "$envs" "$exe" "$args"
done <"$B/tests.list"

# ---------------------------------------------------------------- benchmarks

run_step bench-lm 240 ours "$B/bin/moshi-tool" bench lm --device cuda \
  --batch "${MOSHI_BENCH_LM_BATCH:-1,8,32,64}" --steps 20

# upstream moshi from the bundled wheel, for this run only (and for the Mimi weights)
SITE=$WORK/site
install_upstream () {
  local whl
  whl=$(ls "$B"/wheels/*.whl 2>/dev/null || true)
  if [ -z "$whl" ]; then
    echo "SKIP: no wheels in the bundle (tools/gpu-bundle.sh could not download moshi 0.2.13)"
    return 77
  fi
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $whl \
    || return 1
  PYTHONPATH="$SITE" "$PY" -c 'import sys, torch, moshi; print("python", sys.version.split()[0], "torch", torch.__version__, "moshi", moshi.__version__, moshi.__file__)'
}
upy () {
  env PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$PY" "$@"
}
export SITE
export -f install_upstream upy
run_step upstream-install 60 install_upstream

# upstream_step NAME MAX_SECONDS ARGS...: a step of the upstream Python, once it is installed
upstream_step () {
  local name=$1 max=$2
  shift 2
  wanted "$name" || return 0
  if passed upstream-install; then
    run_step "$name" "$max" "$@"
  else
    record "$name" SKIP 0 "upstream moshi is not installed (see upstream-install)"
  fi
}

MIMI_WEIGHTS=$WORK/mimi-random.safetensors
# the random Mimi (upstream's module names) that both Mimi benchmarks load, made on the CPU
upstream_step mimi-weights 90 upy "$B/python/bench_upstream.py" --device cpu --no-lm --no-mimi \
  --save-mimi "$MIMI_WEIGHTS"
if [ -f "$MIMI_WEIGHTS" ]; then
  run_step bench-mimi 90 ours "$B/bin/moshi-tool" bench mimi --model "$MIMI_WEIGHTS" \
    --device cuda --threads 1 --seconds 10
else
  wanted bench-mimi && record bench-mimi SKIP 0 "no Mimi weights (see mimi-weights)"
fi

if grep -aq 'bench serve' "$B/bin/moshi-tool"; then
  # shellcheck disable=SC2086
  # live 7B conversations (random BF16 weights, codes in and out) through the scheduler at real
  # time: 1, 16 and 64 of them with BF16 KV caches (64 x 1.57 GB fit an H200's 141 GB)
  run_step bench-serve 120 ours "$B/bin/moshi-tool" bench serve --device cuda \
    ${MOSHI_BENCH_SERVE_ARGS:---random-weights --conversations 1,16,64 --seconds 3}
else
  wanted bench-serve && record bench-serve SKIP 0 "moshi-tool has no 'bench serve' in this build"
fi

# upstream with its CUDA graphs (torch.compile off: a bounded warm-up); then, time permitting,
# as its server runs by default (torch.compile of its small functions on, graphs on)
upstream_step upstream 180 env NO_TORCH_COMPILE=1 PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 "$PY" \
  "$B/python/bench_upstream.py" --device cuda --batch 1,8 --steps 20 --mimi-frames 50

# ---------------------------------------------------------------- compute-sanitizer

SANITIZER=$(command -v compute-sanitizer || true)
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer /opt/nvidia/compute-sanitizer; do
  [ -z "$SANITIZER" ] && [ -x "$d/compute-sanitizer" ] && SANITIZER=$d/compute-sanitizer
done
memcheck () {
  local exe=$1 envs=$2
  local -a env_args=()
  local kv rc out
  for kv in ${envs//@B@/$B}; do env_args+=("$kv"); done
  out=$(mktemp)
  ours env "${env_args[@]}" "$SANITIZER" --tool memcheck --leak-check no --error-exitcode 3 \
    --print-limit 20 "$B/bin/$exe" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  # gVisor machines: the sanitizer refuses the device (KINDS.md, 2026-11-04)
  if grep -q 'Device not supported' "$out"; then
    rm -f "$out"
    echo "SKIP: compute-sanitizer does not support this device or runtime"
    return 77
  fi
  rm -f "$out"
  return "$rc"
}
export SANITIZER
export -f memcheck
if [ -n "$SANITIZER" ]; then
  for t in test-gpu-kernels test-lm-gpu-sampling; do
    line=$(awk -F '\t' -v n="$t" '$1 == n' "$B/tests.list")
    [ -z "$line" ] && continue
    IFS=$'\t' read -r _ _ envs exe _ <<<"$line"
    run_step "memcheck:$t" 100 memcheck "$exe" "$envs"
  done
else
  wanted memcheck && record memcheck SKIP 0 "compute-sanitizer not found on this machine"
fi

upstream_step upstream-compiled 150 env PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 "$PY" \
  "$B/python/bench_upstream.py" --device cuda --batch 1,8 --steps 20 --no-mimi

# ---------------------------------------------------------------- summary

for f in "$LOGS"/*.log; do
  [ -f "$f" ] || continue
  if [ "$(stat -c %s "$f")" -gt 4000000 ]; then
    clip "$f" 4000000 >"$f.clipped" && mv "$f.clipped" "$f"
  fi
done
tar -C "$WORK" -czf "$OUT/logs.tar.gz" logs results.tsv 2>/dev/null || true
{
  echo
  echo "==================== summary ($(( $(date +%s) - START )) s of ${BUDGET} s)"
  printf '%-34s %-8s %7s  %s\n' step status seconds note
  while IFS=$'\t' read -r name status secs note; do
    printf '%-34s %-8s %7s  %s\n' "$name" "$status" "$secs" "${note:0:100}"
  done <"$WORK/results.tsv"
  echo
  # the figures (best effort: a parse failure leaves the table above)
  "$PY" "$B/python/summarize_gpu_run.py" "$LOGS" 2>&1 || echo "(figures: summarize_gpu_run.py failed)"
} >"$OUT/summary.txt"
cat "$OUT/summary.txt"

n_fail=$(awk -F '\t' '$2 == "FAIL" || $2 == "TIMEOUT"' "$WORK/results.tsv" | wc -l)
n_nogpu=$(awk -F '\t' '$2 == "NO-GPU"' "$WORK/results.tsv" | wc -l)
echo "logs: $OUT (run.log, steps.log, summary.txt, logs.tar.gz)"
if [ "$n_fail" -gt 0 ]; then
  echo "$n_fail step(s) failed or timed out"
  exit 1
fi
if [ "$n_nogpu" -gt 0 ] && [ "${MOSHI_GPU_DRY_RUN:-0}" != 1 ]; then
  echo "$n_nogpu step(s) found no GPU"
  exit 1
fi
exit 0
