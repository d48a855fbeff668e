#!/usr/bin/env python3
"""Proves that the CUDA kernel tests catch kernel bugs: runs test-cuda-kernels linked with
kernels built with a planted bug and checks that it fails, in the tests of the kernels that
carry the bug and nowhere else, and says why.

  plant-barrier: -DMOSHI_PLANT_MISSING_BARRIER drops the __syncthreads between the warps'
                 partial sums and their reduction in block_sum (common.cuh), used by
                 layer_norm, rms_norm and the softmax of attention, and the one between
                 zeroing the top-k histogram and counting into it in the sampling kernel.
  plant-oob:     -DMOSHI_PLANT_OOB makes the tail check of elu_2d off by one (c > cols),
                 so the last thread of a row writes one float past it.

Usage: check-planted-bugs.py TEST-EXE-PLANT-BARRIER TEST-EXE-PLANT-OOB"""
import os
import re
import subprocess
import sys


def run(exe, schedule):
    env = dict(os.environ, MOSHI_CUDA_EMU_SCHEDULE=schedule)
    env.pop("MOSHI_CUDA_EMU_QUIET", None)
    p = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=1100)
    out = p.stdout + p.stderr
    failed = {}
    for line in out.splitlines():
        # Check: file:line:F:tcase:test_name:iteration: message (E for errors)
        m = re.match(r"^[^:]+:\d+:[FE]:[^:]+:(test_\w+):\d+: (.*)$", line)
        if m:
            failed.setdefault(m.group(1), m.group(2))
    return p.returncode, failed, out


def check(name, exe, must_fail, may_fail, want_text):
    ok = True
    for schedule in ("forward", "reverse"):
        rc, failed, out = run(exe, schedule)
        print(f"== {name}, schedule {schedule}: exit status {rc}")
        for test, msg in sorted(failed.items()):
            print(f"   {test} FAILED: {msg[:300]}")
        for line in out.splitlines():
            if line.startswith("moshi-cuda-emu:"):
                print("   " + line[:300])
                break
        if rc == 0:
            print(f"   ERROR: the planted bug went unnoticed")
            ok = False
        missing = must_fail - set(failed)
        if missing:
            print(f"   ERROR: these tests should have failed: {sorted(missing)}")
            ok = False
        extra = set(failed) - must_fail - may_fail
        if extra:
            print(f"   ERROR: tests of kernels without the bug failed: {sorted(extra)}")
            ok = False
        if not any(re.search(want_text, msg) for msg in failed.values()) \
                and not re.search(want_text, out):
            print(f"   ERROR: no failure message matches '{want_text}'")
            ok = False
    return ok


barrier_exe, oob_exe = sys.argv[1:3]
ok = check("missing barrier in block_sum", barrier_exe,
           must_fail={"test_layer_norm", "test_rms_norm", "test_sample"},
           may_fail={"test_attention", "test_decode_rows"},
           want_text=r"(layer|rms)_norm .*element \d+ is")
ok = check("off-by-one tail in elu_2d", oob_exe,
           must_fail={"test_elu_2d"}, may_fail=set(),
           want_text=r"elu_2d case \d+|out-of-bounds|illegal memory access") and ok
print("planted bugs detected" if ok else "A PLANTED BUG WAS NOT DETECTED")
sys.exit(0 if ok else 1)
