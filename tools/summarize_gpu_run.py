#!/usr/bin/env python3
"""The figures of a device bundle run (tools/gpu-run.sh): reads the step logs in LOGDIR and
prints the table that issue 9 asks for: the measured copy bandwidth, our 7B LM step per batch
against the bandwidth floor and against upstream PyTorch on the same card, and Mimi per frame.

  summarize_gpu_run.py LOGDIR

Steps that did not run (no GPU, skipped) leave their cells as '-'. Standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def read(logdir: Path, name: str) -> str:
    p = logdir / f"{name}.log"
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def results(text: str) -> list[dict]:
    """The 'RESULT k=v ...' lines of a log."""
    out = []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            r = {}
            for kv in line[len("RESULT "):].split():
                k, _, v = kv.partition("=")
                try:
                    r[k] = float(v)
                except ValueError:
                    r[k] = v
            out.append(r)
    return out


BENCH_LM = re.compile(r"^batch\s+(\d+):\s+([\d.]+) ms per step")
BENCH_LM_STATS = re.compile(r"\((\d+) kernels in (\d+) graph launches, (\d+) cuBLAS, "
                            r"(\d+) host waits, ([\d.]+) GB of weights per step")
BENCH_MIMI = re.compile(r"encode ([\d.]+) ms/frame.*?decode ([\d.]+) ms/frame")


def fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    logdir = Path(sys.argv[1])

    bw = {}
    for r in results(read(logdir, "bandwidth")):
        bw.update(r)
    copy_gbs, read_gbs = bw.get("copy_gbs"), bw.get("read_gbs")
    torch_copy = next((r.get("gbs") for r in results(read(logdir, "upstream"))
                       if r.get("what") == "torch_copy"), None)
    print("figures")
    print(f"  copy bandwidth: memcpy D2D {fmt(copy_gbs, '.0f')} GB/s (read + write), read-only "
          f"kernel {fmt(read_gbs, '.0f')} GB/s, torch copy_ {fmt(torch_copy, '.0f')} GB/s")

    ours = {}
    for line in read(logdir, "bench-lm").splitlines():
        m = BENCH_LM.match(line.strip())
        if not m:
            continue
        k = BENCH_LM_STATS.search(line)
        ours[int(m.group(1))] = {"ms": float(m.group(2)),
                                 "kernels": int(k.group(1)) if k else None,
                                 "graphs": int(k.group(2)) if k else None,
                                 "gb": float(k.group(5)) if k else None}
    ups = {}
    for name in ("upstream", "upstream-compiled"):
        for r in results(read(logdir, name)):
            if r.get("what") == "upstream_lm" and "ms_per_step" in r:
                ups.setdefault(name, {})[int(r["batch"])] = r["ms_per_step"]
    up = ups.get("upstream", {})
    upc = ups.get("upstream-compiled", {})

    print("  LM 7B step, random BF16 weights (ours: moshi-tool bench lm --device cuda; upstream: "
          "LMGen + CUDA graphs, torch.compile off / on)")
    print(f"  {'batch':>5} {'ms/step':>8} {'kernels':>7} {'GB/step':>7} {'GB/s':>6} "
          f"{'floor ms':>8} {'x floor':>7} {'upstream':>8} {'up/ours':>7} {'up+comp':>8} "
          f"{'up/ours':>7}")
    for b in sorted(set(ours) | set(up) | set(upc)):
        o = ours.get(b, {})
        ms, gb = o.get("ms"), o.get("gb")
        gbs = gb / (ms / 1e3) if ms and gb else None
        floor = gb / copy_gbs * 1e3 if gb and copy_gbs else None
        xf = ms / floor if ms and floor else None
        u, uc = up.get(b), upc.get(b)
        print(f"  {b:>5} {fmt(ms):>8} {fmt(o.get('kernels'), 'd'):>7} {fmt(gb, '.3f'):>7} "
              f"{fmt(gbs, '.0f'):>6} {fmt(floor):>8} {fmt(xf):>7} {fmt(u):>8} "
              f"{fmt(u / ms if u and ms else None):>7} {fmt(uc):>8} "
              f"{fmt(uc / ms if uc and ms else None):>7}")
    if not ours and not up:
        print("  (no LM figures: the benchmarks did not run)")
    for name in ("bench-lm", "upstream", "upstream-compiled"):
        for line in read(logdir, name).splitlines():
            if line.startswith("moshi-tool:") or "out of device memory" in line:
                print(f"  {name}: {line.strip()[:160]}")

    m = BENCH_MIMI.search(read(logdir, "bench-mimi"))
    me, md = (float(m.group(1)), float(m.group(2))) if m else (None, None)
    um = next((r for r in results(read(logdir, "upstream")) if r.get("what") == "upstream_mimi"),
              {})
    ue, ud = um.get("encode_ms"), um.get("decode_ms")
    tot = me + md if me is not None else None
    utot = ue + ud if ue is not None else None
    print(f"  Mimi per 80 ms frame (batch 1, 8 codebooks): ours encode {fmt(me)} + decode "
          f"{fmt(md)} = {fmt(tot)} ms; upstream {fmt(ue)} + {fmt(ud)} = {fmt(utot)} ms; "
          f"upstream/ours {fmt(utot / tot if tot and utot else None)}")

    serve = read(logdir, "bench-serve").strip().splitlines()
    if serve:
        print(f"  bench serve: {serve[-1][:150]}")

    print("  targets (issue 9):")
    o1 = ours.get(1, {})
    if o1.get("ms") and o1.get("gb") and copy_gbs:
        floor = o1["gb"] / copy_gbs * 1e3
        ok = "met" if o1["ms"] <= 2 * floor else "NOT met"
        print(f"    batch 1 step <= 2 x floor ({o1['gb']:.3f} GB / {copy_gbs:.0f} GB/s = "
              f"{floor:.2f} ms, so {2 * floor:.2f} ms): {o1['ms']:.2f} ms, {ok}")
    else:
        print("    batch 1 step <= 2 x floor: not measured")
    for b in (1, 8):
        u = min([x for x in (up.get(b), upc.get(b)) if x] or [0]) or None
        ms = ours.get(b, {}).get("ms")
        if u and ms:
            ok = "met" if u / ms >= 3 else "NOT met"
            print(f"    >= 3x faster than upstream at batch {b}: {u / ms:.2f}x "
                  f"(upstream's best {u:.2f} ms, ours {ms:.2f} ms), {ok}")
        else:
            print(f"    >= 3x faster than upstream at batch {b}: not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
