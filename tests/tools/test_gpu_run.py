#!/usr/bin/env python3
"""The device bundle's run script (tools/gpu-run.sh) and its summary (tools/summarize_gpu_run.py)
on a fake bundle whose programs are shell stubs: no GPU, no build and no torch needed.

usage: test_gpu_run.py TOOLS_DIR
Checks, in three runs of the script:
  - no GPU: every GPU step ends NO-GPU with the program's reason, the summary is written, and
    the exit status is 0 only with MOSHI_GPU_DRY_RUN=1;
  - a GPU (stubs that print what the real programs print): statuses PASS / FAIL / TIMEOUT / OOM,
    the figures table (floor, ratio against upstream), the files under $OUT (at most 8, as the
    device tool brings back);
  - a budget too small for everything: later steps are skipped, saying so.
Prints 'N passed, N failed' and exits non-zero on any failure. Standard library only.
"""

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

TOOLS = os.path.abspath(sys.argv[1])
passed = failed = 0


def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}" + (f"\n{detail}" if detail else ""))


def write(path, text, mode=0o755):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


NO_GPU = 'echo "SKIP: no CUDA device: CUDA driver version is insufficient"; exit 77\n'

GPU_PROGRAMS = {
    "moshi-copy-bandwidth": 'echo "device 0: NVIDIA H200"\necho "RESULT copy_gbs=4000 read_gbs=4400"\n',
    "test-ok": 'echo "100%: Checks: 3, Failures: 0, Errors: 0"\n',
    "test-bad": 'echo "50%: Checks: 2, Failures: 1, Errors: 0"\necho "test_x: element 3 is 1, want 2"\nexit 1\n',
    "test-slow": 'sleep 60\n',
    "moshi-tool": r'''
# the real tool names its benchmarks in its usage text: bench serve
case "$2" in
  lm) echo "model: random BF16 weights, 32 + 8 x 6 layers, dim 4096; device cuda; loaded in 30.0 s"
      echo "batch   1:     5.00 ms per step,   200.0 steps/s,    200.0 session-steps/s (1028 kernels in 1 graph launches, 0 cuBLAS, 1 host waits, 14.751 GB of weights per step: 2950 GB/s)"
      echo "batch   8:     6.00 ms per step,   166.7 steps/s,   1333.3 session-steps/s (1028 kernels in 1 graph launches, 0 cuBLAS, 1 host waits, 14.760 GB of weights per step: 2460 GB/s)"
      echo "moshi-tool: CUDA: cannot allocate 201326592000 bytes of device memory: out of memory"
      exit 1 ;;
  mimi) echo "threads 1: encode 1.50 ms/frame (RTF 0.019, max 2.00), decode 1.00 ms/frame (RTF 0.013, max 1.20), encode+decode RTF 0.031" ;;
  serve) echo "serve: 16 sessions, 80 ms frames, worst step 9 ms" ;;
esac
''',
}

PYTHON_STUB = r'''#!/usr/bin/env bash
# stands in for the device's python3 (torch, upstream moshi): pip, the import check, the benchmark
case "$1" in
  -m) exit 0 ;;
  -c) echo "python stub"; exit 0 ;;
  */bench_upstream.py)
    while [ $# -gt 0 ]; do
      [ "$1" = --save-mimi ] && { echo weights >"$2"; echo "random Mimi weights: $2"; exit 0; }
      shift
    done
    [ -n "${STUB_NO_GPU:-}" ] && { echo "SKIP: no CUDA device: Found no NVIDIA driver"; exit 77; }
    if [ -n "${NO_TORCH_COMPILE:-}" ]; then
      echo "RESULT what=torch_copy gbs=4100.000"
      echo "RESULT what=upstream_mimi encode_ms=10.000 decode_ms=15.000 total_ms=25.000 frames=50"
      echo "RESULT what=upstream_lm batch=1 ms_per_step=20.000 median_ms=20.000 min_ms=19.000 steps=20 gbs=770.000"
      echo "RESULT what=upstream_lm batch=8 ms_per_step=24.000 median_ms=24.000 min_ms=23.000 steps=20 gbs=640.000"
    else
      echo "RESULT what=upstream_lm batch=1 ms_per_step=16.000 median_ms=16.000 min_ms=15.000 steps=20 gbs=960.000"
    fi ;;
  *) exec python3 "$@" ;;
esac
'''

SANITIZER_STUB = r'''#!/usr/bin/env bash
for last; do :; done
if "$last"; then
  echo "========= ERROR SUMMARY: 0 errors"
else
  echo "========= Invalid __global__ write of size 4 bytes"
  echo "========= ERROR SUMMARY: 1 error"
  exit 3
fi
'''


def make_bundle(root, gpu):
    b = os.path.join(root, "gpu-bundle")
    os.makedirs(os.path.join(b, "lib"), exist_ok=True)
    os.makedirs(os.path.join(b, "python"), exist_ok=True)
    os.makedirs(os.path.join(b, "wheels"), exist_ok=True)
    shutil.copy(os.path.join(TOOLS, "gpu-run.sh"), os.path.join(b, "run.sh"))
    shutil.copy(os.path.join(TOOLS, "summarize_gpu_run.py"), os.path.join(b, "python"))
    write(os.path.join(b, "python", "bench_upstream.py"), "# the stub python runs this\n")
    write(os.path.join(b, "wheels", "moshi-0.2.13-py3-none-any.whl"), "", 0o644)
    write(os.path.join(b, "lib", "libmoshi-cuda.so"), "", 0o644)
    for name, body in GPU_PROGRAMS.items():
        write(os.path.join(b, "bin", name), "#!/usr/bin/env bash\n" + (body if gpu else NO_GPU))
    write(os.path.join(b, "tests.list"),
          "# name\ttimeout\tenvironment\tprogram\targuments\n"
          "test-gpu-kernels\t600\tCK_FORK=no MOSHI_TEST_DATA=@B@/data/tests\ttest-ok\t\n"
          "test-lm-gpu-golden\t900\tCK_RUN_CASE=golden\ttest-bad\t--flag\n"
          "test-lm-gpu-hibiki\t900\tCK_RUN_CASE=hibiki\ttest-slow\t\n"
          "test-lm-gpu-sampling\t900\tCK_RUN_CASE=sampling\ttest-bad\t\n", 0o644)
    return b


def run(root, bundle, env_extra):
    out = os.path.join(root, "out")
    shutil.rmtree(out, ignore_errors=True)
    cublas = os.path.join(root, "cublas")
    write(os.path.join(cublas, "libcublas.so.13"), "", 0o644)
    stubs = os.path.join(root, "stubs")
    write(os.path.join(stubs, "python"), PYTHON_STUB)
    env = dict(os.environ, OUT=out, MOSHI_GPU_PYTHON=os.path.join(stubs, "python"),
               MOSHI_CUBLAS_DIR=cublas, MOSHI_GPU_TEST_TIMEOUT="6")
    env.update(env_extra)
    p = subprocess.run(["bash", os.path.join(bundle, "run.sh")], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)
    summary = ""
    if os.path.exists(os.path.join(out, "summary.txt")):
        summary = open(os.path.join(out, "summary.txt")).read()
    return p, summary, out


def statuses(summary):
    out = {}
    for line in summary.splitlines():
        m = re.match(r"^(\S+)\s+(PASS|FAIL|TIMEOUT|OOM|NO-GPU|SKIP)\s", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


with tempfile.TemporaryDirectory() as root:
    # 1. no GPU: stubs that say so, no nvidia-smi, no compute-sanitizer
    b = make_bundle(root, gpu=False)
    p, summary, out = run(root, b, {"MOSHI_GPU_DRY_RUN": "1", "STUB_NO_GPU": "1"})
    st = statuses(summary)
    check(p.returncode == 0, "dry run without a GPU exits 0", p.stdout[-3000:])
    for step in ("nvidia-smi", "bandwidth", "suite:test-gpu-kernels", "suite:test-lm-gpu-golden",
                 "bench-lm", "bench-mimi", "upstream"):
        check(st.get(step) == "NO-GPU", f"no GPU: {step} is NO-GPU (got {st.get(step)})", summary)
    check(st.get("memcheck") == "SKIP" or st.get("memcheck:test-gpu-kernels") == "NO-GPU",
          "no GPU: memcheck skipped or NO-GPU", summary)
    check("no CUDA device" in summary, "no GPU: the reason is in the summary", summary)
    check(p.stdout.rstrip().splitlines()[-1].startswith("logs:"), "the summary is printed last",
          p.stdout[-2000:])
    p, summary, out = run(root, b, {"STUB_NO_GPU": "1"})
    check(p.returncode == 1, "without MOSHI_GPU_DRY_RUN, no GPU is a failure", p.stdout[-2000:])

    # 2. a GPU: nvidia-smi and compute-sanitizer stubs on PATH
    shutil.rmtree(root + "/gpu-bundle")
    b = make_bundle(root, gpu=True)
    tools_dir = os.path.join(root, "gpu-tools")
    write(os.path.join(tools_dir, "nvidia-smi"), '#!/usr/bin/env bash\necho "NVIDIA H200 stub"\n')
    write(os.path.join(tools_dir, "compute-sanitizer"), SANITIZER_STUB)
    p, summary, out = run(root, b, {"PATH": tools_dir + ":" + os.environ["PATH"]})
    st = statuses(summary)
    check(p.returncode == 1, "a failing test makes the run fail", p.stdout[-2000:])
    want = {"libs": "PASS", "nvidia-smi": "PASS", "bandwidth": "PASS",
            "suite:test-gpu-kernels": "PASS", "suite:test-lm-gpu-golden": "FAIL",
            "suite:test-lm-gpu-hibiki": "TIMEOUT", "bench-lm": "OOM", "upstream-install": "PASS",
            "mimi-weights": "PASS", "bench-mimi": "PASS", "bench-serve": "PASS", "upstream": "PASS",
            "memcheck:test-gpu-kernels": "PASS", "memcheck:test-lm-gpu-sampling": "FAIL",
            "suite:test-lm-gpu-sampling": "FAIL",
            "upstream-compiled": "PASS"}
    for step, s in want.items():
        check(st.get(step) == s, f"GPU: {step} is {s} (got {st.get(step)})", summary)
    check("element 3 is 1, want 2" in p.stdout, "a failing test's output is shown", p.stdout[-3000:])
    check("Invalid __global__ write" in p.stdout, "memcheck's finding is shown", p.stdout[-3000:])
    # figures: floor 14.751 GB / 4000 GB/s = 3.69 ms; upstream 20 / 5 = 4.00 (best of the two: 16)
    check(re.search(r"^\s+1\s+5\.00\s+1028\s+14\.751\s+2950\s+3\.69\s+1\.36\s+20\.00\s+4\.00\s+16\.00\s+3\.20",
                    summary, re.M) is not None, "GPU: the batch-1 row of the figures", summary)
    check("batch 1 step <= 2 x floor" in summary and ", met" in summary, "GPU: the floor target",
          summary)
    check(">= 3x faster than upstream at batch 1: 3.20x" in summary,
          "GPU: the upstream target uses upstream's best time", summary)
    check(">= 3x faster than upstream at batch 8: 4.00x" in summary, "GPU: batch 8 ratio", summary)
    check("ours encode 1.50 + decode 1.00 = 2.50 ms; upstream 10.00 + 15.00 = 25.00 ms; "
          "upstream/ours 10.00" in summary, "GPU: the Mimi figures", summary)
    check("cannot allocate" in summary, "GPU: the out-of-memory batch is named", summary)
    files = sorted(os.listdir(out))
    check(files == ["logs.tar.gz", "run.log", "steps.log", "summary.txt"],
          f"$OUT holds 4 files (got {files})")
    check("memcheck" in open(os.path.join(out, "steps.log")).read(), "steps.log has every step")

    # 3. a budget too small for the whole run: what no longer fits is skipped, saying so
    p, summary, out = run(root, b, {"PATH": tools_dir + ":" + os.environ["PATH"],
                                    "MOSHI_GPU_BUDGET": "25", "MOSHI_GPU_STEPS": "suite: bench-"})
    st = statuses(summary)
    check(st.get("suite:test-lm-gpu-hibiki") == "TIMEOUT", "small budget: the slow test times out",
          summary)
    check(st.get("bench-lm") == "SKIP" and "no time left" in summary,
          "small budget: the benchmarks after it are skipped for want of time", summary)
    check("upstream" not in st and "nvidia-smi" not in st, "MOSHI_GPU_STEPS selects steps", summary)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
