#!/usr/bin/env python3
"""Upstream PyTorch `moshi` (0.2.13) on the same card as our benchmarks: the figures that
docs/performance.md compares `moshi-tool bench lm` and `bench mimi` against.

  LM:   a random-weight upstream LMModel of the Moshi 7B shape (moshi.models.loaders._lm_kwargs,
        built by loaders.get_moshi_lm(None, ...)) in BF16, driven by upstream LMGen with its
        own CUDA graphs (moshi.utils.compile.CUDAGraphed, on whenever the model is on cuda),
        at each batch size: ms per step. Each step feeds random user codes and brings the
        tokens back to the host (`.cpu()`), as a streaming server must; the first steps (the
        eager warm-up and the graph capture) are not timed.
  Mimi: a random-weight upstream MimiModel (loaders.get_mimi(None)), streaming at batch 1 with
        8 codebooks: encode one 1920-sample frame, then decode its codes; ms per frame for each
        and for both.

torch.compile: upstream compiles a few small functions lazily (moshi.utils.compile.
torch_compile_lazy) unless NO_TORCH_COMPILE is set; that is left to the caller's environment
and reported. NO_CUDA_GRAPH=1 turns upstream's graphs off (also reported).

  tools/bench_upstream.py [--device cuda] [--batch 1,8] [--steps 20] [--mimi-frames 50]
                          [--no-lm] [--no-mimi] [--save-mimi PATH] [--small]

--save-mimi PATH writes the random Mimi's weights (safetensors, upstream module names, f32):
what `moshi-tool bench mimi --model PATH` loads, so both Mimi figures come from the same
weights. With --no-mimi --save-mimi, only the weights are made (on --device). --small swaps
in a tiny LM and Mimi transformer (a dry run on the CPU: `--device cpu --small`).

Exit status: 0; 77 with "SKIP: no CUDA device: ..." for --device cuda without a usable GPU;
1 on an error. Each figure is printed as soon as it is measured, then one line per figure
"RESULT key=value ..." for the caller's summary.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

FRAME = 1920


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_batches(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        n = int(part)
        if n < 1:
            raise argparse.ArgumentTypeError(f"bad batch size {part!r}")
        out.append(n)
    return out


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lm_kwargs_for(loaders, small: bool) -> dict:
    kwargs = dict(loaders._lm_kwargs)
    if small:
        # the 7B's structure (delays, depformer weights per step, gating, norms) at toy widths
        kwargs.update(dim=128, num_heads=4, num_layers=2, context=64, depformer_dim=64,
                      depformer_num_heads=4, depformer_num_layers=1,
                      depformer_dim_feedforward=int(4.125 * 64))
    return kwargs


def mimi_config_for(loaders, small: bool) -> dict:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in loaders._mimi_config.items()}
    if small:
        cfg["transformer"].update(num_layers=1, dim_feedforward=256)
    return cfg


def bench_lm(torch, loaders, lm_mod, device, args) -> list[dict]:
    kwargs = lm_kwargs_for(loaders, args.small)
    t0 = time.perf_counter()
    torch.manual_seed(1234)
    model = loaders.get_moshi_lm(None, lm_kwargs=kwargs, device=device, dtype=torch.bfloat16)
    sync(torch, device)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    log(f"upstream LMModel: dim {kwargs['dim']}, {kwargs['num_layers']} + "
        f"{kwargs['dep_q']} x {kwargs['depformer_num_layers']} layers, "
        f"{n_params / 1e9:.3f} B parameters, {weight_bytes / 1e9:.3f} GB in "
        f"{next(model.parameters()).dtype}; built in {time.perf_counter() - t0:.1f} s")
    n_user = model.num_codebooks - model.dep_q - 1
    results = []
    for batch in args.batch:
        gen = lm_mod.LMGen(model, use_sampling=True, temp=0.8, temp_text=0.7, top_k=250,
                           top_k_text=25)
        warmup = max(args.warmup, gen.max_delay + 2)
        times = []
        try:
            with gen.streaming(batch):
                g = torch.Generator(device="cpu").manual_seed(batch)
                codes = torch.randint(0, model.card, (batch, n_user, 1), generator=g).to(device)
                t_first = time.perf_counter()
                for s in range(warmup + args.steps):
                    sync(torch, device)
                    t = time.perf_counter()
                    out = gen.step(codes)
                    if out is not None:
                        out = out.cpu()
                    sync(torch, device)
                    if s == warmup - 1:
                        log(f"  batch {batch}: {warmup} warm-up steps (eager, capture) in "
                            f"{time.perf_counter() - t_first:.1f} s")
                    if s >= warmup:
                        times.append((time.perf_counter() - t) * 1e3)
                if out is None:
                    raise RuntimeError("LMGen gave no tokens after the warm-up")
        except getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError) as e:
            log(f"  batch {batch}: out of device memory ({str(e).splitlines()[0]})")
            results.append({"what": "upstream_lm", "batch": batch, "error": "oom"})
            break
        finally:
            del gen
            if device.type == "cuda":
                torch.cuda.empty_cache()
        ms = statistics.mean(times)
        med = statistics.median(times)
        r = {"what": "upstream_lm", "batch": batch, "ms_per_step": ms, "median_ms": med,
             "min_ms": min(times), "steps": len(times),
             "gbs": weight_bytes / 1e9 / (ms / 1e3)}
        log(f"upstream LMGen batch {batch:3d}: {ms:8.2f} ms per step (median {med:.2f}, min "
            f"{min(times):.2f}; {len(times)} steps), {batch * 1e3 / ms:8.1f} session-steps/s, "
            f"{r['gbs']:.0f} GB/s of weights")
        results.append(r)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def randomise_mimi(torch, mimi) -> None:
    """Upstream initialises convolutions and linears at random already; its codebooks start
    as zeros with usage 1 and not `_initialized`. Give them random codewords (and mark them
    initialised) so that the RVQ search sees distinct codes."""
    g = torch.Generator(device="cpu").manual_seed(4321)
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.copy_(torch.randn(buf.shape, generator=g).to(buf.device, buf.dtype))
            elif name.endswith("cluster_usage") or name.endswith("_initialized"):
                buf.fill_(1.0)


def make_mimi(torch, loaders, device, args):
    torch.manual_seed(4321)
    mimi = loaders.get_mimi(None, mimi_config=mimi_config_for(loaders, args.small),
                            device=device, num_codebooks=8)
    randomise_mimi(torch, mimi)
    return mimi


def save_mimi(torch, mimi, path: str) -> None:
    from safetensors.torch import save_file
    state = {}
    for k, v in mimi.state_dict().items():
        if v is None or not v.is_floating_point():
            continue
        state[k] = v.detach().to("cpu", torch.float32).contiguous()
    tmp = path + ".part"
    save_file(state, tmp)
    os.replace(tmp, path)
    size = os.path.getsize(path)
    log(f"random Mimi weights: {path} ({len(state)} tensors, {size / 1e6:.1f} MB)")


def bench_mimi(torch, mimi, device, args) -> dict:
    g = torch.Generator(device="cpu").manual_seed(99)
    frames = [(0.1 * torch.randn((1, 1, FRAME), generator=g)).to(device)
              for _ in range(args.mimi_frames + 2)]
    enc, dec = [], []
    with torch.no_grad(), mimi.streaming(1):
        for i, pcm in enumerate(frames):
            sync(torch, device)
            t0 = time.perf_counter()
            codes = mimi.encode(pcm)
            sync(torch, device)
            t1 = time.perf_counter()
            out = mimi.decode(codes)
            out = out.cpu()
            t2 = time.perf_counter()
            if i >= 2:          # the first calls run eagerly and capture the graphs
                enc.append((t1 - t0) * 1e3)
                dec.append((t2 - t1) * 1e3)
    if codes.shape[1] != 8 or out.shape[-1] != FRAME:
        raise RuntimeError(f"unexpected shapes: codes {tuple(codes.shape)}, pcm {tuple(out.shape)}")
    e, d = statistics.mean(enc), statistics.mean(dec)
    log(f"upstream Mimi streaming, batch 1, 8 codebooks, {len(enc)} frames: encode {e:.2f} ms/frame"
        f" (median {statistics.median(enc):.2f}), decode {d:.2f} ms/frame (median "
        f"{statistics.median(dec):.2f}), encode+decode {e + d:.2f} ms per 80 ms frame")
    return {"what": "upstream_mimi", "encode_ms": e, "decode_ms": d, "total_ms": e + d,
            "frames": len(enc)}


def copy_bandwidth(torch, device) -> dict | None:
    """PyTorch's device-to-device copy, once, for comparison with moshi-copy-bandwidth."""
    if device.type != "cuda":
        return None
    n = 1 << 30
    a = torch.randint(0, 255, (n,), dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(10):
        start.record()
        b.copy_(a)
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop))
    gbs = 2 * n / (best * 1e-3) / 1e9
    log(f"torch copy_ 1 GiB device to device: best {best:.3f} ms, {gbs:.0f} GB/s (read + write)")
    del a, b
    torch.cuda.empty_cache()
    return {"what": "torch_copy", "gbs": gbs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--batch", type=parse_batches, default=[1, 8],
                    help="LM batch sizes, comma separated (default 1,8)")
    ap.add_argument("--steps", type=int, default=20, help="timed LM steps per batch (default 20)")
    ap.add_argument("--warmup", type=int, default=4,
                    help="untimed LM steps first (default 4; at least the delay + 2)")
    ap.add_argument("--mimi-frames", type=int, default=50, help="timed Mimi frames (default 50)")
    ap.add_argument("--no-lm", action="store_true", help="skip the LM")
    ap.add_argument("--no-mimi", action="store_true", help="skip the Mimi benchmark")
    ap.add_argument("--save-mimi", metavar="PATH", help="write the random Mimi weights here")
    ap.add_argument("--small", action="store_true",
                    help="tiny LM and Mimi transformer (a dry run on the CPU)")
    args = ap.parse_args()
    if args.steps < 1 or args.mimi_frames < 1:
        ap.error("--steps and --mimi-frames must be at least 1")

    try:
        import torch
    except ImportError as e:
        log(f"bench_upstream: torch is not importable: {e}")
        return 1
    if args.device == "cuda" and not torch.cuda.is_available():
        why = "torch.cuda.is_available() is False"
        try:
            torch.cuda.init()
        except Exception as e:            # the driver's own reason, where torch gives one
            why = str(e).splitlines()[0] if str(e) else why
        log(f"SKIP: no CUDA device: {why}")
        return 77
    device = torch.device(args.device)
    try:
        import moshi
        from moshi.models import loaders
        from moshi.models import lm as lm_mod
    except Exception as e:
        log(f"bench_upstream: upstream moshi is not importable: {type(e).__name__}: {e}")
        return 1
    log(f"torch {torch.__version__}, moshi {moshi.__version__} ({os.path.dirname(moshi.__file__)}), "
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; torch.compile {'off (NO_TORCH_COMPILE)' if os.environ.get('NO_TORCH_COMPILE') else 'on (upstream default)'}"
        + f", CUDA graphs {'off (NO_CUDA_GRAPH)' if os.environ.get('NO_CUDA_GRAPH') else 'on' if device.type == 'cuda' else 'n/a'}"
        + (", small test shapes" if args.small else ""))
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    results = []
    with torch.no_grad():
        bw = copy_bandwidth(torch, device)
        if bw:
            results.append(bw)
        if args.save_mimi or not args.no_mimi:
            mimi = make_mimi(torch, loaders, device, args)
            if args.save_mimi:
                save_mimi(torch, mimi, args.save_mimi)
            if not args.no_mimi:
                results.append(bench_mimi(torch, mimi, device, args))
            del mimi
        if not args.no_lm:
            results.extend(bench_lm(torch, loaders, lm_mod, device, args))
    for r in results:
        fields = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in r.items())
        log(f"RESULT {fields}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
