#!/usr/bin/env python3
"""Reference-data generator for the Mimi conformance tests.

Builds a Mimi model with seeded random (but well-conditioned) weights through the
upstream `moshi` package (PyPI 0.2.13), saves it as safetensors with the upstream
key names, and records inputs and reference outputs produced by upstream code
(CPU, float32) into golden.safetensors.

Usage:
    python tests/reference/gen_mimi.py --case {tiny,small,full} [--out DIR]
                                       [--threads N] [--verify]

This script only *calls* upstream (moshi.models.loaders.get_mimi, MimiModel.encode,
MimiModel.decode, the streaming API, ...). See tests/data/mimi/README.md for the
description of the files it writes and the Mimi specification (mimi.md) sections 3, 4, 8-10.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch
from torch import nn

import moshi
from moshi.models import loaders
from moshi.modules.conv import pad_for_conv1d
from moshi.modules.transformer import LayerScale
from moshi.quantization.core_vq import EuclideanCodebook
from safetensors.torch import save_file, load_file

GENERATOR_VERSION = "1"
REPO_ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------
# Seeds (recorded in manifest.json and tests/data/mimi/README.md)
# ---------------------------------------------------------------------------
SEED_WEIGHTS = {"tiny": 1001, "small": 1002, "full": 1003}   # conv/linear/norm/layer-scale
SEED_CODEBOOK_OFFSET = 100                                   # codebooks: SEED_WEIGHTS[case] + 100
SEED_SIGNALS = 2024                                           # noise signals (numpy default_rng)

# ---------------------------------------------------------------------------
# Texts for espeak-ng (the resampled waveform is saved, so the exact espeak
# version only matters when regenerating; see README)
# ---------------------------------------------------------------------------
TEXT_SPEECH = (
    "The quick brown fox jumps over the lazy dog. "
    "Streaming neural audio codecs turn speech into a small number of discrete tokens, "
    "twelve and a half times per second, and turn those tokens back into sound. "
    "A causal encoder sees only the past, so every frame can be sent as soon as it is ready. "
    "Seven silly seals sang sixty songs on a sunny Sunday afternoon."
)
TEXT_CLIPPED = (
    "Loud signals are clipped hard before they reach the encoder, "
    "which makes the waveform square and rich in harmonics."
)
TEXT_TRAIN = (
    "Peter Piper picked a peck of pickled peppers. How much wood would a woodchuck chuck "
    "if a woodchuck could chuck wood? She sells sea shells by the sea shore. "
    "Around the rugged rocks the ragged rascal ran. Unique New York, you know you need unique New York. "
    "The rain in Spain stays mainly in the plain, while the wind whistles through the willow trees. "
    "Numbers like three hundred and forty two, nine thousand, and seventeen are read out slowly."
)


# ---------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------
def case_config(case: str) -> dict:
    cfg = copy.deepcopy(loaders._mimi_config)
    if case == "full":
        return cfg
    if case == "tiny":
        cfg["frame_rate"] = 250.0  # 24000 / 96
        cfg["seanet"].update(n_filters=8, ratios=[4, 3, 2, 2], dimension=32)
        cfg["transformer"].update(d_model=32, num_heads=4, num_layers=2, dim_feedforward=64,
                                  context=12, input_dimension=32, output_dimensions=[32])
        cfg["quantizer"].update(dimension=16, n_q=6, bins=64,
                                input_dimension=32, output_dimension=32)
        return cfg
    if case == "small":
        cfg["frame_rate"] = 12.5
        cfg["seanet"].update(n_filters=4, ratios=[8, 6, 5, 4], dimension=32)
        cfg["transformer"].update(d_model=32, num_heads=2, num_layers=2, dim_feedforward=64,
                                  context=25, input_dimension=32, output_dimensions=[32])
        cfg["quantizer"].update(dimension=16, n_q=16, bins=256,
                                input_dimension=32, output_dimension=32)
        return cfg
    raise ValueError(case)


# Per case: K (codebooks of the main goldens), attention key naming on save,
# codeword scale, clamp test, signal lengths (samples), training-audio seconds.
CASES = {
    "tiny": dict(K=6, names="checkpoint", cb_scale=0.6, clamp_codebooks=[0, 3],
                 signals={"speech": 7200, "silence": 1920, "clipped": 4800, "noise_odd": 4837},
                 train_seconds=8.0, chunked=False, extra_codes=False),
    "small": dict(K=8, names="module", cb_scale=0.6, clamp_codebooks=[],
                  signals={"speech": 42240, "silence": 7680, "clipped": 15360, "noise_odd": 15693},
                  train_seconds=12.0, chunked=True, extra_codes=True),
    "full": dict(K=8, names="checkpoint", cb_scale=0.3, clamp_codebooks=[],
                 signals={"speech": 288000, "silence": 48000, "clipped": 48000, "noise_odd": 49001},
                 train_seconds=30.0, chunked=False, extra_codes=True),
}
SR = 24000
CLAMP_STEP = 7            # every 7th codebook entry (0, 7, 14, ...) gets cluster_usage 1e-7
CLAMP_USAGE = 1e-7
CODEBOOK_EPS = 1e-5       # EuclideanCodebook epsilon


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------
def espeak(text: str, extra_args: list[str]) -> np.ndarray:
    """Runs espeak-ng and returns the float waveform at its native rate (22050 Hz)."""
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "out.wav")
        subprocess.run(["espeak-ng", *extra_args, "-w", path, text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with wave.open(path, "rb") as w:
            assert w.getsampwidth() == 2 and w.getnchannels() == 1
            rate = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert rate == 22050, rate
    return data.astype(np.float64) / 32768.0


def resample_sinc(x: np.ndarray, sr_in: int, sr_out: int, half_width: int = 32,
                  beta: float = 8.6) -> np.ndarray:
    """Kaiser-windowed sinc interpolation (float64). Deterministic; the output is the
    saved test input, so the exact resampler does not matter for conformance."""
    n_out = int(math.floor(len(x) * sr_out / sr_in))
    fc = min(1.0, sr_out / sr_in) * 0.97            # cutoff relative to the input Nyquist
    t = np.arange(n_out, dtype=np.float64) * (sr_in / sr_out)   # position in input samples
    base = np.floor(t).astype(np.int64)
    out = np.zeros(n_out, dtype=np.float64)
    xp = np.concatenate([np.zeros(half_width + 1), x, np.zeros(half_width + 1)])
    for k in range(-half_width + 1, half_width + 1):
        idx = base + k
        d = t - idx
        w = np.i0(beta * np.sqrt(np.clip(1.0 - (d / half_width) ** 2, 0.0, 1.0))) / np.i0(beta)
        h = fc * np.sinc(fc * d) * w
        out += xp[idx + half_width + 1] * h
    return out


def trim_leading_silence(x: np.ndarray, rel: float = 0.02, keep: int = 240) -> np.ndarray:
    thr = rel * np.max(np.abs(x))
    nz = np.nonzero(np.abs(x) > thr)[0]
    start = max(0, int(nz[0]) - keep) if len(nz) else 0
    return x[start:]


def speech_24k(text: str, extra_args: list[str], length: int) -> np.ndarray:
    """espeak-ng speech resampled to 24 kHz, leading silence trimmed, looped/cut to length."""
    y = trim_leading_silence(resample_sinc(espeak(text, extra_args), 22050, SR))
    parts, total = [], 0
    while total < length:
        parts.append(y)
        parts.append(np.zeros(SR // 5))
        total += len(y) + SR // 5
    return np.concatenate(parts)[:length]


def peak_normalize(x: np.ndarray, peak: float) -> np.ndarray:
    m = np.max(np.abs(x))
    return x * (peak / m) if m > 0 else x


def make_signals(case: str) -> dict[str, np.ndarray]:
    spec = CASES[case]["signals"]
    rng = np.random.default_rng(SEED_SIGNALS)
    sig = {}
    sig["speech"] = peak_normalize(speech_24k(TEXT_SPEECH, ["-v", "en-us", "-s", "165"],
                                              spec["speech"]), 0.5)
    sig["silence"] = np.zeros(spec["silence"])
    loud = peak_normalize(speech_24k(TEXT_CLIPPED, ["-v", "en-gb", "-s", "170", "-p", "60"],
                                     spec["clipped"]), 1.0)
    sig["clipped"] = np.clip(loud * 8.0, -1.0, 1.0)
    sig["noise_odd"] = 0.1 * rng.standard_normal(spec["noise_odd"])
    return {k: v.astype(np.float32) for k, v in sig.items()}


def make_training_audio(seconds: float) -> np.ndarray:
    """Audio used only to derive codebook statistics (never a test input)."""
    rng = np.random.default_rng(SEED_SIGNALS + 1)
    n = int(seconds * SR)
    n_extra = int(0.5 * SR)
    n_speech = max(n - 3 * n_extra, SR)
    sp = peak_normalize(speech_24k(TEXT_TRAIN, ["-v", "en-us", "-s", "150", "-p", "70"],
                                   n_speech), 0.6)
    noise = 0.05 * rng.standard_normal(n_extra)
    tt = np.arange(n_extra) / SR
    f0, f1 = 80.0, 8000.0
    k = (f1 / f0) ** (1.0 / tt[-1])
    chirp = 0.3 * np.sin(2 * np.pi * f0 * (k ** tt - 1) / np.log(k))
    clipped = np.clip(8.0 * peak_normalize(sp[:n_extra], 1.0), -1.0, 1.0)
    return np.concatenate([sp, noise, chirp, clipped]).astype(np.float32)


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------
ENCODER_CONV_GAIN = 1.3   # SEANet encoder convs: std = 1.3/sqrt(fan_in), see below
CONV_BIAS_STD = 0.02


def fill_random_weights(model: nn.Module, gen: torch.Generator) -> None:
    """Fan-in scaled convs/linears, LayerNorm ~1, layer_scale 0.1-0.5 (spec section 10).
    Codebook buffers are handled by build_codebooks().

    The SEANet *encoder* convs get a gain of 1.3 (std 1.3/sqrt(fan_in)): with gain 1 the
    signal part of the encoder output stays ~0.15 rms, and the encoder transformer (whose
    LayerNorm-normalised branches add ~0.3 per layer whatever the input) then makes the
    latent of silence almost as large as that of speech. With 1.3 the latent is dominated
    by the input (speech latent rms ~0.8-1.3, of which the speech/silence difference is most).
    Everything else uses gain 1."""
    done = set()
    with torch.no_grad():
        for name, mod in model.named_modules():
            gain = ENCODER_CONV_GAIN if name.startswith("encoder.") else 1.0
            if isinstance(mod, nn.ConvTranspose1d):
                cin, _, k = mod.weight.shape
                fan = (cin // mod.groups) * k / mod.stride[0]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (gain / math.sqrt(fan)))
                done.add(name + ".weight")
                if mod.bias is not None:
                    mod.bias.copy_(CONV_BIAS_STD * torch.randn(mod.bias.shape, generator=gen))
                    done.add(name + ".bias")
            elif isinstance(mod, nn.Conv1d):
                _, cin_g, k = mod.weight.shape
                fan = cin_g * k
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (gain / math.sqrt(fan)))
                done.add(name + ".weight")
                if mod.bias is not None:
                    mod.bias.copy_(CONV_BIAS_STD * torch.randn(mod.bias.shape, generator=gen))
                    done.add(name + ".bias")
            elif isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen)
                                 / math.sqrt(mod.in_features))
                done.add(name + ".weight")
                if mod.bias is not None:
                    mod.bias.copy_(0.02 * torch.randn(mod.bias.shape, generator=gen))
                    done.add(name + ".bias")
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.05 * torch.randn(mod.bias.shape, generator=gen))
                done.update([name + ".weight", name + ".bias"])
            elif isinstance(mod, LayerScale):
                mod.scale.copy_(0.1 + 0.4 * torch.rand(mod.scale.shape, generator=gen))
                done.add(name + ".scale")
    missing = [k for k in model.state_dict() if k not in done and "._codebook." not in k]
    assert not missing, f"weights not initialised: {missing}"


def codebooks_in_order(model) -> list[tuple[str, EuclideanCodebook]]:
    """[(state-dict prefix, codebook)] in codes order: semantic first, then acoustic."""
    q = model.quantizer
    out = [(f"quantizer.rvq_first.vq.layers.{i}._codebook", l._codebook)
           for i, l in enumerate(q.rvq_first.vq.layers)]
    out += [(f"quantizer.rvq_rest.vq.layers.{i}._codebook", l._codebook)
            for i, l in enumerate(q.rvq_rest.vq.layers)]
    return out


def codebook_vectors(embedding_sum: torch.Tensor, cluster_usage: torch.Tensor) -> torch.Tensor:
    """E = embedding_sum / max(cluster_usage, 1e-5), float32 as in the reference, returned f64."""
    e = embedding_sum.float() / cluster_usage.float().clamp(min=CODEBOOK_EPS)[:, None]
    return e.double()


def nearest(r: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """r [N, d] f64, e [bins, d] f64 -> exact squared distances sum((r - e)^2), [N, bins]
    (no |r|^2 + |e|^2 - 2 r.e expansion), computed in row chunks to bound memory."""
    step = max(1, (1 << 22) // max(1, e.numel()))
    out = [((r[i:i + step, None, :] - e[None, :, :]) ** 2).sum(-1)
           for i in range(0, r.shape[0], step)]
    return torch.cat(out, 0)


def build_codebooks(sd: dict, cfg: dict, latent: torch.Tensor, case: str,
                    gen: torch.Generator, log) -> dict:
    """Sets every codebook level by level from the statistics of that level's residual on
    the training latents (spec section 10). Returns per-level statistics."""
    qcfg = cfg["quantizer"]
    bins, dim, n_q = qcfg["bins"], qcfg["dimension"], qcfg["n_q"]
    a = CASES[case]["cb_scale"]
    clamp_levels = set(CASES[case]["clamp_codebooks"])
    z = latent[0].double()                                # [D, T]
    w_first = sd["quantizer.rvq_first.input_proj.weight"][:, :, 0].double()
    w_rest = sd["quantizer.rvq_rest.input_proj.weight"][:, :, 0].double()
    stats = []
    residuals = [(w_first @ z).T.contiguous()]            # semantic level input [T, dim]
    r = (w_rest @ z).T.contiguous()
    for level in range(n_q):
        if level == 0:
            prefix = "quantizer.rvq_first.vq.layers.0._codebook"
            res = residuals[0]
        else:
            prefix = f"quantizer.rvq_rest.vq.layers.{level - 1}._codebook"
            res = r
        mean = res.mean(0)
        std = res.std(0)
        # round the statistics so that ulp-level differences of the training latents
        # (thread count, BLAS) do not change the drawn codewords
        mean = mean.float().half().double()
        std = std.float().half().double()
        code = mean[None, :] + a * std[None, :] * torch.randn((bins, dim), generator=gen,
                                                               dtype=torch.float64)
        usage = 0.5 + 1.5 * torch.rand((bins,), generator=gen, dtype=torch.float64)
        emb_sum = code * usage[:, None]
        if level in clamp_levels:
            idx = torch.arange(0, bins, CLAMP_STEP)
            usage[idx] = CLAMP_USAGE
            # cluster_usage 1e-7 is clamped to 1e-5 by the reference: store
            # embedding_sum = codeword * 1e-5 so that the *clamped* vector is the drawn
            # codeword (an implementation without the clamp sees it 100x too large).
            emb_sum[idx] = code[idx] * CODEBOOK_EPS
        sd[prefix + ".cluster_usage"] = usage.float()
        sd[prefix + ".embedding_sum"] = emb_sum.float().contiguous()
        sd[prefix + "._initialized"] = torch.ones(1, dtype=torch.float32)
        e = codebook_vectors(sd[prefix + ".embedding_sum"], sd[prefix + ".cluster_usage"])
        d = nearest(res, e)
        idx = d.argmin(-1)
        before = float((res ** 2).sum(-1).mean())
        after_r = res - e[idx]
        after = float((after_r ** 2).sum(-1).mean())
        used = int(torch.unique(idx).numel())
        stats.append(dict(level=level, energy_before=before, energy_after=after,
                          ratio=after / before, used_entries=used))
        log(f"  codebook {level:2d}: residual energy {before:.4g} -> {after:.4g} "
            f"(x{after / before:.3f}), {used}/{bins} entries used on training latents")
        if level > 0:
            r = after_r
    return {"levels": stats, "scale": a}


RENAMES_TO_CHECKPOINT = {
    ".self_attn.in_projs.0.weight": ".self_attn.in_proj_weight",
    ".self_attn.out_projs.0.weight": ".self_attn.out_proj.weight",
}


def to_saved_names(sd: dict, names: str) -> dict:
    out = {}
    for k, v in sd.items():
        if names == "checkpoint":
            for a, b in RENAMES_TO_CHECKPOINT.items():
                if k.endswith(a):
                    k = k[: -len(a)] + b
        out[k] = v.detach().to(torch.float32).contiguous().clone()
    return out


# ---------------------------------------------------------------------------
# Golden computation
# ---------------------------------------------------------------------------
def code_gaps(model, latent: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """For each reference code: (d_second - d_chosen) / max(d_chosen, tiny), float64, where
    d_chosen is the squared distance to the code chosen by the reference and d_second the
    smallest distance to any other entry, on the residual obtained with the reference codes.
    Negative values mean float64 would choose a different entry (a near-tie)."""
    K = codes.shape[1]
    cbs = codebooks_in_order(model)
    q = model.quantizer
    z = latent[0].double()
    u_first = (q.rvq_first.input_proj.weight[:, :, 0].double() @ z).T
    r = (q.rvq_rest.input_proj.weight[:, :, 0].double() @ z).T
    gaps = torch.zeros((1, K, codes.shape[2]), dtype=torch.float64)
    for level in range(K):
        cb = cbs[level][1]
        e = codebook_vectors(cb.embedding_sum, cb.cluster_usage)
        res = u_first if level == 0 else r
        d = nearest(res, e)
        c = codes[0, level].long()
        d1 = d.gather(1, c[:, None])[:, 0]
        d_other = d.clone()
        d_other.scatter_(1, c[:, None], float("inf"))
        d2 = d_other.min(-1).values
        gaps[0, level] = (d2 - d1) / torch.clamp(d1, min=1e-30)
        if level > 0:
            r = r - e[c]
    return gaps.float()


def frames_of(x: torch.Tensor, frame: int) -> list[torch.Tensor]:
    """Splits [1,1,L] into whole frames, zero-padding the last partial frame."""
    xp = pad_for_conv1d(x, frame, frame)
    return [xp[..., i * frame:(i + 1) * frame] for i in range(xp.shape[-1] // frame)]


def compute_goldens(model, signals: dict, case: str, log) -> dict:
    opts = CASES[case]
    K = opts["K"]
    n_q = model.total_codebooks
    frame = model.frame_size
    g: dict[str, torch.Tensor] = {}
    for name, pcm_np in signals.items():
        t0 = time.time()
        x = torch.from_numpy(pcm_np).view(1, 1, -1).contiguous()
        g[f"{name}.pcm"] = x.clone()
        model.set_num_codebooks(K)
        latent = model._encode_to_unquantized_latent(x)
        codes = model.encode(x)
        assert codes.shape[1] == K
        g[f"{name}.latent"] = latent.clone()
        g[f"{name}.codes"] = codes.clone()
        g[f"{name}.code_gap"] = code_gaps(model, latent, codes)
        decoded = model.decode(codes)
        g[f"{name}.decoded"] = decoded.clone()
        if opts["extra_codes"]:
            model.set_num_codebooks(n_q)
            codes_all = model.encode(x)
            model.set_num_codebooks(K)
            g[f"{name}.codes_all"] = codes_all.clone()
            g[f"{name}.code_gap_all"] = code_gaps(model, latent, codes_all)
        N = codes.shape[-1]

        # Streaming: one frame per call, encode then decode of the resulting codes,
        # in one streaming context (the encoder and decoder states are independent).
        chunks = frames_of(x, frame)
        assert len(chunks) == N
        sc, sd_ = [], []
        with model.streaming(1):
            for ch in chunks:
                c = model.encode(ch)
                sc.append(c)
                sd_.append(model.decode(c))
        g[f"{name}.stream_codes"] = torch.cat(sc, -1)
        g[f"{name}.stream_decoded"] = torch.cat(sd_, -1)

        if name == "speech":
            # intermediates (non-streaming), cheap
            xp = pad_for_conv1d(x, frame, frame)
            seanet_out = model.encoder(xp)
            (enc_tr_out,) = model.encoder_transformer(seanet_out)
            lat2 = model._to_framerate(enc_tr_out)
            assert torch.equal(lat2, latent), "intermediate chain != _encode_to_unquantized_latent"
            g["speech.seanet_out"] = seanet_out.clone()
            g["speech.enc_tr_out"] = enc_tr_out.clone()
            dl = model.decode_latent(codes)
            up = model._to_encoder_framerate(dl)
            (dec_tr_out,) = model.decoder_transformer(up)
            g["speech.decode_latent"] = dl.clone()
            g["speech.upsampled"] = up.clone()
            g["speech.dec_tr_out"] = dec_tr_out.clone()
            assert torch.equal(model.decoder(dec_tr_out), decoded)

            # reset in mid-stream
            split = N // 2
            rc = []
            with model.streaming(1):
                for i in range(split):
                    rc.append(model.encode(chunks[i]))
                model.reset_streaming()
                for i in range(split, N):
                    rc.append(model.encode(chunks[i]))
            g["speech.reset_codes"] = torch.cat(rc, -1)
            g["speech.reset_split"] = torch.tensor([split], dtype=torch.int64)

            if opts["chunked"]:
                xp_all = torch.cat(chunks, -1)
                cc, dd = [], []
                with model.streaming(1):
                    for i in range(0, N, 3):
                        n = min(3, N - i)
                        cc.append(model.encode(xp_all[..., i * frame:(i + n) * frame]))
                    codes_ch = torch.cat(cc, -1)
                    i, pattern, p = 0, [1, 2, 3], 0
                    while i < N:
                        n = min(pattern[p % 3], N - i)
                        dd.append(model.decode(codes_ch[..., i:i + n]))
                        i += n
                        p += 1
                g["speech.stream_codes_chunked"] = codes_ch
                g["speech.stream_decoded_chunked"] = torch.cat(dd, -1)

            if opts["extra_codes"]:
                g["decode_k1"] = model.decode(codes[:, :1]).clone()
                g["decode_k3"] = model.decode(codes[:, :3]).clone()
        log(f"  {name}: L={x.shape[-1]} N={N} ({time.time() - t0:.1f}s)")
    return g


def sanity(g: dict, model, cfg: dict, signals: dict, case: str, log) -> dict:
    """Checks that goldens make sense; returns numbers recorded in manifest.json."""
    K = CASES[case]["K"]
    frame = model.frame_size
    steps_per_frame = int(round(model.encoder_frame_rate / model.frame_rate))
    ctx = cfg["transformer"]["context"]
    win_frames = ctx // steps_per_frame    # frames fully inside the window
    out = {"context_steps": ctx, "steps_per_frame": steps_per_frame,
           "frames_within_window": win_frames, "signals": {}}

    def rel(a, b):
        return float((a - b).norm() / max(float(b.norm()), 1e-30))

    for name in signals:
        c = g[f"{name}.codes"]
        sc = g[f"{name}.stream_codes"]
        N = c.shape[-1]
        diff = (c != sc)[0]                      # [K, N]
        frame_diff = diff.any(0)
        first_bad = int(torch.nonzero(frame_diff)[0, 0]) if frame_diff.any() else None
        n_in = min(N, win_frames)
        s = {
            "N": N,
            "stream_vs_oneshot_code_mismatch_within_window": int(diff[:, :n_in].sum()),
            "stream_vs_oneshot_code_mismatch_beyond_window": int(diff[:, n_in:].sum()),
            "codes_beyond_window": int(diff[:, n_in:].numel()),
            "first_mismatching_frame": first_bad,
            "min_code_gap": float(g[f"{name}.code_gap"].min()),
        }
        dec, sdec = g[f"{name}.decoded"], g[f"{name}.stream_decoded"]
        ns = n_in * frame
        # decode of the *same* codes only where the codes agree
        s["decoded_rel_err_stream_vs_oneshot_within_window"] = rel(sdec[..., :ns], dec[..., :ns])
        s["decoded_rms"] = float(dec.pow(2).mean().sqrt())
        s["pcm_rms"] = float(g[f"{name}.pcm"].pow(2).mean().sqrt())
        s["latent_rms"] = float(g[f"{name}.latent"].pow(2).mean().sqrt())
        # residual reduction per level on this signal (float64)
        if f"{name}.codes_all" in g:
            ca = g[f"{name}.codes_all"]
            s["codes_all_prefix_equals_codes"] = bool(torch.equal(ca[:, :K], c))
            s["min_code_gap_all"] = float(g[f"{name}.code_gap_all"].min())
        s["residual_energy_ratio_per_level"] = residual_ratios(model, g[f"{name}.latent"],
                                                               g.get(f"{name}.codes_all", c))
        if name == "speech":
            split = int(g["speech.reset_split"][0])
            rc = g["speech.reset_codes"]
            s["reset_first_part_equals_stream"] = bool(torch.equal(rc[..., :split],
                                                                   sc[..., :split]))
            # after reset_streaming() the stream must behave like a fresh one (spec 4.5)
            chunks = frames_of(g["speech.pcm"], frame)[split:]
            with model.streaming(1):
                fresh = torch.cat([model.encode(ch) for ch in chunks], -1)
            s["reset_second_part_equals_fresh_stream"] = bool(torch.equal(rc[..., split:], fresh))
            log(f"  speech reset at frame {split}: first part == stream "
                f"{s['reset_first_part_equals_stream']}, second part == fresh stream "
                f"{s['reset_second_part_equals_fresh_stream']}")
            if "speech.stream_codes_chunked" in g:
                # T steps per call changes which keys the ring cache still holds once the
                # stream is longer than the context (spec 4.4): compare inside the window
                cd = (g["speech.stream_codes_chunked"] != sc)[0]
                s["chunked_vs_stream_code_mismatch_within_window"] = int(cd[:, :n_in].sum())
                s["chunked_vs_stream_code_mismatch_beyond_window"] = int(cd[:, n_in:].sum())
                s["chunked_decoded_rel_err_vs_stream_within_window"] = rel(
                    g["speech.stream_decoded_chunked"][..., :ns], sdec[..., :ns])
                log(f"  speech chunked (3-frame encode, 1/2/3-frame decode) vs 1-frame stream: "
                    f"code mismatches within window {s['chunked_vs_stream_code_mismatch_within_window']}"
                    f", beyond {s['chunked_vs_stream_code_mismatch_beyond_window']}; PCM rel err "
                    f"in window {s['chunked_decoded_rel_err_vs_stream_within_window']:.2g}")
        if name == "silence":
            s["silence_codes_distinct_per_level"] = [int(torch.unique(c[0, k]).numel())
                                                     for k in range(c.shape[1])]
        out["signals"][name] = s
        log(f"  {name}: N={N} stream-vs-oneshot mismatches: within window "
            f"{s['stream_vs_oneshot_code_mismatch_within_window']}/{min(N, win_frames) * K}, "
            f"beyond {s['stream_vs_oneshot_code_mismatch_beyond_window']}/"
            f"{s['codes_beyond_window']} (first frame {first_bad}); min code_gap "
            f"{s['min_code_gap']:.3g}; stream-vs-oneshot PCM rel err in window "
            f"{s['decoded_rel_err_stream_vs_oneshot_within_window']:.2g}")
    return out


def residual_ratios(model, latent, codes) -> list[float]:
    """Mean residual energy after each level / before it, with the reference codes."""
    cbs = codebooks_in_order(model)
    q = model.quantizer
    z = latent[0].double()
    r = (q.rvq_rest.input_proj.weight[:, :, 0].double() @ z).T
    u = (q.rvq_first.input_proj.weight[:, :, 0].double() @ z).T
    out = []
    for level in range(codes.shape[1]):
        cb = cbs[level][1]
        e = codebook_vectors(cb.embedding_sum, cb.cluster_usage)
        c = codes[0, level].long()
        res = u if level == 0 else r
        before = float((res ** 2).sum(-1).mean())
        new = res - e[c]
        after = float((new ** 2).sum(-1).mean())
        out.append(round(after / max(before, 1e-30), 4))
        if level > 0:
            r = new
    return out


# ---------------------------------------------------------------------------
# Optional: re-verification of the saved files
# ---------------------------------------------------------------------------
def verify(out_dir: Path, case: str, log) -> dict:
    cfg = json.loads((out_dir / "config.json").read_text())
    g = load_file(str(out_dir / "golden.safetensors"))
    man = json.loads((out_dir / "manifest.json").read_text())
    K = man["K"]
    model = loaders.get_mimi(str(out_dir / "model.safetensors"), cfg, num_codebooks=K)
    res = {}
    with torch.no_grad():
        for name in man["signals"]:
            x = g[f"{name}.pcm"]
            c = model.encode(x)
            d = model.decode(g[f"{name}.codes"])
            res[name] = dict(codes_equal=bool(torch.equal(c, g[f"{name}.codes"])),
                             decoded_max_abs=float((d - g[f"{name}.decoded"]).abs().max()))
            log(f"  verify {name}: codes equal {res[name]['codes_equal']}, decoded max abs diff "
                f"{res[name]['decoded_max_abs']:.3g}")
    return res


def verify_rustymimi(out_dir: Path, case: str, log) -> dict:
    """Loads model.safetensors with rustymimi (released frame structure only) and compares its
    streaming encode with the reference streaming codes inside the window."""
    try:
        import rustymimi
    except ImportError:
        log("  rustymimi not importable; skipped")
        return {"skipped": "not installed"}
    g = load_file(str(out_dir / "golden.safetensors"))
    man = json.loads((out_dir / "manifest.json").read_text())
    K = man["K"]
    try:
        tok = rustymimi.Tokenizer(str(out_dir / "model.safetensors"), num_codebooks=K)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        log(f"  rustymimi refused the file: {msg}")
        return {"loaded": False, "error": msg}
    res = {"loaded": True}
    frame = man["frame_size"]
    win = man["sanity"]["frames_within_window"]

    def run(tok, name):
        x = g[f"{name}.pcm"].numpy()
        N = g[f"{name}.codes"].shape[-1]
        xp = np.zeros((1, 1, N * frame), dtype=np.float32)
        xp[..., : x.shape[-1]] = x
        cs, ds = [], []
        for i in range(N):
            c = tok.encode_step(np.ascontiguousarray(xp[..., i * frame:(i + 1) * frame]))
            cs.append(c)
            ds.append(tok.decode_step(c))
        return (torch.from_numpy(np.concatenate(cs, -1).astype(np.int64)),
                torch.from_numpy(np.concatenate(ds, -1)))

    def compare(name, rc, rd):
        N = rc.shape[-1]
        ref = g[f"{name}.stream_codes"]
        n_in = min(N, win)
        mism_in = int((rc[..., :n_in] != ref[..., :n_in]).sum())
        mism_out = int((rc[..., n_in:] != ref[..., n_in:]).sum())
        refd = g[f"{name}.stream_decoded"][..., : n_in * frame]
        rel = float((rd[..., : n_in * frame] - refd).norm() / max(float(refd.norm()), 1e-30))
        return dict(code_mismatch_within_window=mism_in, codes_within_window=n_in * K,
                    code_mismatch_beyond=mism_out, stream_decoded_rel_err_within_window=rel)

    try:
        for name in man["signals"]:
            # a fresh Tokenizer per signal: rustymimi 0.4.1's reset() is not equivalent to
            # a fresh stream (checked below)
            tok = rustymimi.Tokenizer(str(out_dir / "model.safetensors"), num_codebooks=K)
            r = compare(name, *run(tok, name))
            res[name] = r
            log(f"  rustymimi {name}: streaming codes vs reference streaming: mismatches within "
                f"window {r['code_mismatch_within_window']}/{r['codes_within_window']}, beyond "
                f"{r['code_mismatch_beyond']}; decoded rel err (window) "
                f"{r['stream_decoded_rel_err_within_window']:.2g}")
        # reset check: run some speech, reset(), then the speech again from the start
        tok = rustymimi.Tokenizer(str(out_dir / "model.safetensors"), num_codebooks=K)
        run(tok, "speech")
        tok.reset()
        r = compare("speech", *run(tok, "speech"))
        res["speech_after_reset"] = r
        log(f"  rustymimi speech after Tokenizer.reset(): mismatches within window "
            f"{r['code_mismatch_within_window']}/{r['codes_within_window']}; decoded rel err "
            f"(window) {r['stream_decoded_rel_err_within_window']:.2g}")
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        log(f"  rustymimi failed: {msg}")
        res["error"] = msg
    return res


# ---------------------------------------------------------------------------
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def espeak_version() -> str:
    try:
        return subprocess.run(["espeak-ng", "--version"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "unavailable"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--out", type=Path, default=None,
                    help="output directory (default tests/data/mimi/<case>/)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, for bit-reproducible files)")
    ap.add_argument("--verify", action="store_true",
                    help="afterwards reload the saved files with get_mimi and re-check; "
                         "also try rustymimi")
    args = ap.parse_args()

    case = args.case
    out_dir = args.out or (REPO_ROOT / "tests" / "data" / "mimi" / case)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED_WEIGHTS[case])
    np.random.seed(SEED_SIGNALS)

    def log(msg):
        print(msg, flush=True)

    cfg = case_config(case)
    opts = CASES[case]
    K = opts["K"]
    log(f"[gen_mimi] case={case} out={out_dir} torch={torch.__version__} "
        f"moshi={moshi.__version__} threads={args.threads}")

    with torch.no_grad():
        # ---- pass 1: random weights, latents of the training audio ----
        t0 = time.time()
        model = loaders.get_mimi(None, cfg, device="cpu", num_codebooks=K)
        gen = torch.Generator().manual_seed(SEED_WEIGHTS[case])
        fill_random_weights(model, gen)
        train = make_training_audio(opts["train_seconds"])
        latent_train = model._encode_to_unquantized_latent(
            torch.from_numpy(train).view(1, 1, -1))
        log(f"[gen_mimi] pass 1: training latents {tuple(latent_train.shape)} rms "
            f"{float(latent_train.pow(2).mean().sqrt()):.4g} ({time.time() - t0:.1f}s)")
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        del model
        gen_cb = torch.Generator().manual_seed(SEED_WEIGHTS[case] + SEED_CODEBOOK_OFFSET)
        cb_stats = build_codebooks(sd, cfg, latent_train, case, gen_cb, log)

        saved = to_saved_names(sd, opts["names"])
        model_path = out_dir / "model.safetensors"
        # no __metadata__: safetensors writes it from a hash map, in an order that changes
        # from run to run, which would make the files differ byte-wise (all provenance is
        # in manifest.json instead)
        save_file(saved, str(model_path))
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        log(f"[gen_mimi] wrote {model_path} ({len(saved)} tensors, "
            f"{model_path.stat().st_size} bytes, names={opts['names']})")

        # ---- pass 2: FRESH model loaded from the saved file (codebook cache pitfall) ----
        model = loaders.get_mimi(str(model_path), cfg, device="cpu", num_codebooks=K)
        model.eval()
        signals = make_signals(case)
        t0 = time.time()
        g = compute_goldens(model, signals, case, log)
        log(f"[gen_mimi] goldens computed ({time.time() - t0:.1f}s)")
        log("[gen_mimi] sanity:")
        san = sanity(g, model, cfg, signals, case, log)
        if opts["clamp_codebooks"]:
            hits = {}
            for lvl in opts["clamp_codebooks"]:
                n = 0
                for name in signals:
                    c = g[f"{name}.codes"][0, lvl]
                    n += int((c % CLAMP_STEP == 0).sum())
                hits[str(lvl)] = n
            san["clamped_entries_chosen"] = hits
            log(f"  clamped entries (usage 1e-7) chosen: {hits} (codebook: count)")

    g = {k: v.contiguous() for k, v in g.items()}
    for k, v in g.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    golden_path = out_dir / "golden.safetensors"
    save_file(g, str(golden_path))

    frame = int(cfg["sample_rate"] / cfg["frame_rate"])
    manifest = {
        "generator": "tests/reference/gen_mimi.py",
        "generator_version": GENERATOR_VERSION,
        "case": case,
        "command": f"python tests/reference/gen_mimi.py --case {case}"
                   + ("" if args.out is None else f" --out {args.out}")
                   + ("" if args.threads == 1 else f" --threads {args.threads}"),
        "reference": {"moshi": moshi.__version__, "torch": torch.__version__,
                      "numpy": np.__version__, "python": platform.python_version(),
                      "espeak-ng": espeak_version(), "device": "cpu", "dtype": "float32",
                      "threads": args.threads},
        "seeds": {"weights": SEED_WEIGHTS[case],
                  "codebooks": SEED_WEIGHTS[case] + SEED_CODEBOOK_OFFSET,
                  "signals": SEED_SIGNALS, "training_audio_noise": SEED_SIGNALS + 1},
        "sample_rate": cfg["sample_rate"],
        "frame_size": frame,
        "K": K,
        "n_q": cfg["quantizer"]["n_q"],
        "bins": cfg["quantizer"]["bins"],
        "attention_key_names": opts["names"],
        "signals": {n: {"length": int(v.shape[-1]), "frames": int(math.ceil(v.shape[-1] / frame))}
                    for n, v in signals.items()},
        "streaming": "stream_codes/stream_decoded: one streaming context (batch 1), per frame "
                     "encode(frame) then decode(codes of that frame); final partial frame "
                     "zero-padded",
        "codebook_construction": cb_stats,
        "clamp": {"codebooks": opts["clamp_codebooks"], "every": CLAMP_STEP,
                  "cluster_usage": CLAMP_USAGE,
                  "embedding_sum": "codeword * 1e-5 (so the clamped vector is the codeword)"},
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                    for k, v in sorted(g.items())},
        "sha256": {"model.safetensors": sha256(model_path),
                   "golden.safetensors": sha256(golden_path)},
        "sanity": san,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"[gen_mimi] wrote {golden_path} ({len(g)} tensors, {golden_path.stat().st_size} bytes)")

    if args.verify:
        log("[gen_mimi] verify (fresh get_mimi from the saved files):")
        verify(out_dir, case, log)
        verify_rustymimi(out_dir, case, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
