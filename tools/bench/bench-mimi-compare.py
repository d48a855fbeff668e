#!/usr/bin/env python3
"""Compare Mimi streaming speed: upstream PyTorch (CPU), rustymimi, and gst-moshi.

All three run the streaming loop of spec mimi.md section 6.2 on the same weights file
(moshi-native safetensors, e.g. the `full` case written by tests/reference/gen_mimi.py):
batch 1, one 1920-sample frame per call, encode the frame then decode the codes it gave,
8 codebooks. The first frame is excluded from timing.

  (a) torch:     moshi.models.loaders.get_mimi(...) on CPU, `with mimi.streaming(1)`,
                 torch.set_num_threads(T) (+ OMP_NUM_THREADS/MKL_NUM_THREADS=T).
  (b) rustymimi: rustymimi.Tokenizer(path, num_codebooks=8), encode_step/decode_step.
                 candle's CPU backend sizes its rayon pool from RAYON_NUM_THREADS, which is
                 read once per process, so each thread count runs in its own subprocess.
  (c) ours:      <moshi-tool> bench mimi --model M --seconds S --threads T --json
                 (one JSON object per line: threads, frames, encode_ms_per_frame,
                 decode_ms_per_frame, rtf). Skipped with a note if the tool is missing.

(a) and (b) run in worker subprocesses of this script (one per thread count) and are fed
the same deterministic speech-like signal; moshi-tool generates its own input of the
same duration.

Usage:
  tools/bench/bench-mimi-compare.py --model tests/reference/out/full/model.safetensors \
      [--seconds 10] [--threads 1,2] [--moshi-tool build/tools/moshi-tool] \
      [--only torch,rustymimi,ours] [--json-out results.json]

Run it with a Python that has `moshi`, `torch` and `rustymimi` (tests/reference/
requirements.txt); a missing package only skips that implementation.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SR = 24000
FRAME = 1920
FRAME_MS = 1000.0 * FRAME / SR   # 80 ms
NUM_CODEBOOKS = 8


# ---------------------------------------------------------------------------
# Input signal
# ---------------------------------------------------------------------------
def speech_like(seconds: float, seed: int = 1234):
    """Deterministic speech-like signal (numpy float32, peak 0.5): a glottal-like harmonic
    source with a gliding f0 (90-220 Hz), three moving formant resonances, ~4 Hz syllabic
    envelope with short pauses, and a little breath noise."""
    import numpy as np
    n = int(round(seconds * SR))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.7 * t) + 20 * np.sin(2 * np.pi * 2.3 * t + 1.0)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    src = np.zeros(n)
    for h in range(1, 40):
        amp = 1.0 / h
        src += amp * np.sin(h * phase) * (h * f0 < 0.45 * SR)
    # formant weighting by a crude time-varying band emphasis
    out = np.zeros(n)
    for fc, bw, rate in ((600, 120, 3.1), (1500, 200, 2.2), (2600, 300, 1.4)):
        fct = fc * (1 + 0.25 * np.sin(2 * np.pi * rate * t))
        # weight each harmonic by its distance to the formant centre
        w = np.zeros(n)
        for h in range(1, 40):
            w += (1.0 / h) * np.exp(-0.5 * ((h * f0 - fct) / bw) ** 2) * np.sin(h * phase)
        out += w
    out = 0.3 * src + out
    env = np.clip(np.sin(2 * np.pi * 2.0 * t) * 0.5 + 0.6, 0, 1) ** 2
    env *= (np.sin(2 * np.pi * 0.35 * t) > -0.8)            # occasional pauses
    out = out * env + 0.01 * rng.standard_normal(n)
    out = out / np.max(np.abs(out)) * 0.5
    return out.astype(np.float32)


# ---------------------------------------------------------------------------
# Workers (run in subprocesses)
# ---------------------------------------------------------------------------
def _summary(impl, threads, enc, dec, wall, cpu, extra=None):
    enc_ms = 1000.0 * sum(enc) / len(enc)
    dec_ms = 1000.0 * sum(dec) / len(dec)
    srt_e, srt_d = sorted(enc), sorted(dec)
    res = {
        "impl": impl, "threads": threads, "frames": len(enc),
        "encode_ms_per_frame": enc_ms, "decode_ms_per_frame": dec_ms,
        "encode_ms_median": 1000.0 * srt_e[len(srt_e) // 2],
        "decode_ms_median": 1000.0 * srt_d[len(srt_d) // 2],
        "rtf": (enc_ms + dec_ms) / FRAME_MS,
        "cpu_utilisation": cpu / wall if wall > 0 else None,
    }
    if extra:
        res.update(extra)
    return res


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_torch(args) -> dict:
    import torch
    from moshi.models import loaders
    torch.set_num_threads(args.threads_one)
    config = None
    if args.config:
        config = json.loads(Path(args.config).read_text())
    mimi = loaders.get_mimi(args.model, config, device="cpu", num_codebooks=NUM_CODEBOOKS)
    mimi.eval()
    pcm = speech_like(args.seconds)
    nfr = len(pcm) // FRAME
    x = torch.from_numpy(pcm[: nfr * FRAME]).view(1, 1, -1)
    enc, dec = [], []
    with torch.no_grad(), mimi.streaming(1):
        # frame 0 (excluded): first call, allocations, lazy codebook cache
        c = mimi.encode(x[..., :FRAME])
        mimi.decode(c)
        w0, c0 = time.perf_counter(), _cpu_seconds()
        for i in range(1, nfr):
            t0 = time.perf_counter()
            c = mimi.encode(x[..., i * FRAME:(i + 1) * FRAME])
            t1 = time.perf_counter()
            y = mimi.decode(c)
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        wall, cpu = time.perf_counter() - w0, _cpu_seconds() - c0
    assert y.shape[-1] == FRAME
    return _summary("torch", args.threads_one, enc, dec, wall, cpu,
                    {"version": f"moshi {__import__('moshi').__version__}, torch {torch.__version__}",
                     "torch_threads": torch.get_num_threads()})


def worker_rustymimi(args) -> dict:
    import numpy as np
    import rustymimi
    tok = rustymimi.Tokenizer(args.model, num_codebooks=NUM_CODEBOOKS)
    pcm = speech_like(args.seconds)
    nfr = len(pcm) // FRAME
    x = pcm[: nfr * FRAME].reshape(1, 1, -1)
    frames = [np.ascontiguousarray(x[..., i * FRAME:(i + 1) * FRAME]) for i in range(nfr)]
    c = tok.encode_step(frames[0])
    tok.decode_step(c)
    enc, dec = [], []
    w0, c0 = time.perf_counter(), _cpu_seconds()
    for i in range(1, nfr):
        t0 = time.perf_counter()
        c = tok.encode_step(frames[i])
        t1 = time.perf_counter()
        y = tok.decode_step(c)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    wall, cpu = time.perf_counter() - w0, _cpu_seconds() - c0
    assert c is not None and c.shape == (1, NUM_CODEBOOKS, 1), None if c is None else c.shape
    assert y is not None and y.shape[-1] == FRAME
    try:
        from importlib.metadata import version
        ver = f"rustymimi {version('rustymimi')}"
    except Exception:  # noqa: BLE001
        ver = "rustymimi"
    return _summary("rustymimi", args.threads_one, enc, dec, wall, cpu,
                    {"version": ver, "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS")})


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------
def run_worker(kind: str, threads: int, args) -> dict | None:
    env = dict(os.environ)
    t = str(threads)
    env.update(RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t,
               OPENBLAS_NUM_THREADS=t)
    cmd = [args.python, os.path.abspath(__file__), "--worker", kind, "--threads-one", t,
           "--model", args.model, "--seconds", str(args.seconds)]
    if args.config:
        cmd += ["--config", args.config]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()
        msg = tail[-1] if tail else f"exit {p.returncode}"
        print(f"  {kind} threads={threads}: FAILED: {msg}", file=sys.stderr)
        return None
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(f"  {kind} threads={threads}: no result line", file=sys.stderr)
    return None


def run_ours(threads: int, args) -> list[dict]:
    tool = args.moshi_tool
    if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
        found = shutil.which(tool)
        if not found:
            return []
        tool = found
    cmd = [tool, "bench", "mimi", "--model", args.model, "--seconds", str(args.seconds),
           "--threads", str(threads), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()
        print(f"  ours threads={threads}: FAILED ({p.returncode}): "
              f"{tail[-1] if tail else ''}", file=sys.stderr)
        return []
    out = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "encode_ms_per_frame" not in r:
            continue
        r.setdefault("threads", threads)
        r["impl"] = "ours"
        if "rtf" not in r:
            r["rtf"] = (r["encode_ms_per_frame"] + r["decode_ms_per_frame"]) / FRAME_MS
        out.append(r)
    return out


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def print_table(results: list[dict]) -> None:
    ours = {r["threads"]: r for r in results if r["impl"] == "ours"}
    hdr = ("implementation", "threads", "enc ms/frame", "dec ms/frame", "total ms",
           "RTF", "enc x ours", "dec x ours", "total x ours")
    rows = []
    for r in results:
        e, d = r["encode_ms_per_frame"], r["decode_ms_per_frame"]
        o = ours.get(r["threads"])
        if o:
            oe, od = o["encode_ms_per_frame"], o["decode_ms_per_frame"]
            re_, rd_, rt_ = e / oe if oe else None, d / od if od else None, \
                (e + d) / (oe + od) if (oe + od) else None
        else:
            re_ = rd_ = rt_ = None
        rows.append((r["impl"], str(r["threads"]), fmt(e), fmt(d), fmt(e + d),
                     fmt((e + d) / FRAME_MS, ".3f"), fmt(re_), fmt(rd_), fmt(rt_)))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(hdr)]
    line = "  ".join(h.ljust(w) for h, w in zip(hdr, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"RTF = (encode + decode) / {FRAME_MS:.0f} ms; 'x ours' = time / ours at the same "
          "thread count (> 1: ours is faster).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="moshi-native Mimi safetensors (full config)")
    ap.add_argument("--config", default=None,
                    help="mimi config JSON for the torch run (default: config.json next to "
                         "the model if present, else the released config)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--moshi-tool", default="build/tools/moshi-tool")
    ap.add_argument("--only", default="torch,rustymimi,ours",
                    help="comma-separated subset of torch,rustymimi,ours")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter for the torch/rustymimi workers")
    ap.add_argument("--json-out", default=None, help="also write all results to this file")
    ap.add_argument("--worker", choices=["torch", "rustymimi"], help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        fn = worker_torch if args.worker == "torch" else worker_rustymimi
        print(json.dumps(fn(args)), flush=True)
        return 0

    args.model = os.path.abspath(args.model)
    if not os.path.isfile(args.model):
        print(f"model not found: {args.model}", file=sys.stderr)
        return 2
    if args.config is None:
        cand = Path(args.model).with_name("config.json")
        if cand.is_file():
            args.config = str(cand)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    nfr = int(round(args.seconds * SR)) // FRAME
    print(f"model {args.model}\n{args.seconds:g} s of speech-like audio = {nfr} frames of "
          f"{FRAME} samples, batch 1, 1 frame per call, {NUM_CODEBOOKS} codebooks, "
          f"first frame excluded; host CPUs: {os.cpu_count()}", flush=True)

    results: list[dict] = []
    if "ours" in only:
        for t in threads:
            rs = run_ours(t, args)
            if not rs and t == threads[0]:
                print(f"  ours: {args.moshi_tool} not available or failed; skipped",
                      file=sys.stderr)
                break
            results += rs
    for kind in ("torch", "rustymimi"):
        if kind not in only:
            continue
        for t in threads:
            print(f"  running {kind} threads={t} ...", file=sys.stderr, flush=True)
            r = run_worker(kind, t, args)
            if r:
                results.append(r)
    order = {"ours": 0, "torch": 1, "rustymimi": 2}
    results.sort(key=lambda r: (order.get(r["impl"], 9), r["threads"]))
    print()
    print_table(results)
    for r in results:
        if r.get("cpu_utilisation") is not None:
            print(f"  {r['impl']} threads={r['threads']}: CPU utilisation during the timed "
                  f"loop {r['cpu_utilisation']:.2f} cores; medians enc "
                  f"{fmt(r.get('encode_ms_median'))} / dec {fmt(r.get('decode_ms_median'))} ms"
                  + (f"; {r['version']}" if r.get("version") else ""))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
