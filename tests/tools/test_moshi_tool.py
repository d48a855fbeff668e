#!/usr/bin/env python3
"""End-to-end checks of moshi-tool against the committed Mimi goldens (standard library only).

usage: test_moshi_tool.py MOSHI_TOOL DATA_DIR
Prints 'N passed, N failed' and exits non-zero on any failure."""

import json
import math
import os
import stat
import struct
import subprocess
import sys
import tempfile

TOOL, DATA = sys.argv[1], sys.argv[2]
SMALL = os.path.join(DATA, "mimi", "small")
MODEL = os.path.join(SMALL, "model.safetensors")
CONFIG = os.path.join(SMALL, "config.json")
DTYPES = {"F32": ("f", 4), "I64": ("q", 8), "I32": ("i", 4), "BOOL": ("B", 1)}
LM = os.path.join(DATA, "lm", "small7b")


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        fmt, size = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = blob[8 + n + begin:8 + n + end]
        tensors[name] = (info["shape"], list(struct.unpack("<%d%s" % (len(raw) // size, fmt), raw)))
    return tensors


def write_safetensors(path, tensors):
    """tensors: name -> (dtype, shape, flat values)"""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        fmt, size = DTYPES[dtype]
        raw = struct.pack("<%d%s" % (len(values), fmt), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_float_wav(path, samples, rate):
    data = struct.pack("<%df" % len(samples), *samples)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt ")
        f.write(struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * 4, 4, 32))
        f.write(b"data" + struct.pack("<I", len(data)) + data)


def read_float_wav(path):
    with open(path, "rb") as f:
        blob = f.read()
    pos = blob.index(b"data")
    (n,) = struct.unpack("<I", blob[pos + 4:pos + 8])
    return list(struct.unpack("<%df" % (n // 4), blob[pos + 8:pos + 8 + n]))


def rel_l2(a, b):
    num = sum((x - y) ** 2 for x, y in zip(a, b))
    den = sum(y * y for y in b)
    return math.sqrt(num / den) if den else math.sqrt(num)


def run(*args, expect_ok=True, env=None):
    proc = subprocess.run([TOOL, *args], capture_output=True, text=True, env=env)
    if expect_ok and proc.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(args), proc.stderr))
    if not expect_ok and proc.returncode == 0:
        raise AssertionError("%s should have failed" % " ".join(args))
    return proc


results = []


def check(name, func):
    try:
        func()
        results.append((name, None))
        print("PASS", name)
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        results.append((name, e))
        print("FAIL", name, e)


golden = read_safetensors(os.path.join(SMALL, "golden.safetensors"))
tmp = tempfile.mkdtemp(prefix="moshi-tool-test-")
speech_wav = os.path.join(tmp, "speech.wav")
write_float_wav(speech_wav, golden["speech.pcm"][1], 24000)


def test_info():
    out = run("info", MODEL).stdout
    assert "mimi" in out, out
    assert "encoder.model.0.conv.conv.weight" in out, out
    out = run("info", "--summary", os.path.join(SMALL, "golden.safetensors")).stdout
    assert "tensors: " in out and "encoder.model" not in out, out


def encode_and_compare(extra, golden_name):
    codes_path = os.path.join(tmp, "codes-%s.safetensors" % golden_name)
    run("encode", "--model", MODEL, "--config", CONFIG, "--codebooks", "8", *extra, speech_wav, codes_path)
    shape, codes = read_safetensors(codes_path)["codes"]
    want_shape, want = golden["speech." + golden_name]
    assert shape == want_shape, (shape, want_shape)
    assert codes == want, "codes differ from the reference"
    return codes_path


def test_encode_one_shot():
    encode_and_compare([], "codes")


def test_encode_streaming():
    encode_and_compare(["--streaming"], "stream_codes")


def test_decode():
    codes_path = encode_and_compare([], "codes")
    out_wav = os.path.join(tmp, "decoded.wav")
    run("decode", "--model", MODEL, "--config", CONFIG, codes_path, out_wav)
    pcm = read_float_wav(out_wav)
    want = golden["speech.decoded"][1]
    assert len(pcm) == len(want), (len(pcm), len(want))
    err = rel_l2(pcm, want)
    assert err <= 1e-4, err


def test_wrong_rate_is_named():
    bad = os.path.join(tmp, "speech-16k.wav")
    write_float_wav(bad, golden["speech.pcm"][1][:16000], 16000)
    err = run("encode", "--model", MODEL, "--config", CONFIG, bad, os.path.join(tmp, "x.safetensors"),
              expect_ok=False).stderr
    assert bad in err and "16000 Hz" in err and "24000 Hz mono" in err, err


def test_bad_model_is_named():
    err = run("encode", "--model", speech_wav, speech_wav, os.path.join(tmp, "x.safetensors"),
              expect_ok=False).stderr
    assert speech_wav in err, err


lm_golden = read_safetensors(os.path.join(LM, "golden.safetensors"))


def test_lm_forward():
    codes_path = os.path.join(tmp, "tf-codes.safetensors")
    shape, codes = lm_golden["tf.codes"]
    write_safetensors(codes_path, {"codes": ("I64", shape, codes)})
    out = os.path.join(tmp, "tf-out.safetensors")
    run("lm-forward", "--config", os.path.join(LM, "config.json"), "--weights",
        os.path.join(LM, "model.safetensors"), "--codes", codes_path, "--out", out)
    got = read_safetensors(out)
    for name in ("mask", "text_mask"):
        assert got[name] == lm_golden["tf." + name], name
    for name in ("logits", "text_logits"):
        a = [x for x in got[name][1] if not math.isnan(x)]
        b = [x for x in lm_golden["tf." + name][1] if not math.isnan(x)]
        assert got[name][0] == lm_golden["tf." + name][0], name
        assert rel_l2(a, b) <= 1e-4, (name, rel_l2(a, b))


def test_lm_generate_greedy():
    user_path = os.path.join(tmp, "user-codes.safetensors")
    shape, user = lm_golden["gen.user_codes"]
    write_safetensors(user_path, {"codes": ("I64", shape, user)})
    out = os.path.join(tmp, "gen-out.safetensors")
    err = run("lm-generate", "--config", os.path.join(LM, "config.json"), "--weights",
              os.path.join(LM, "model.safetensors"), "--user-codes", user_path, "--out", out,
              "--text-temperature", "0", "--audio-temperature", "0", "--progress").stderr
    # --progress: a progress line even though stderr is a pipe, ending on the whole count
    steps = shape[2]
    assert err.rstrip("\n").splitlines()[-1].startswith("step %d/%d (100%%)" % (steps, steps)), err
    got = read_safetensors(out)
    assert got["text_tokens"] == lm_golden["gen.text_tokens"], "text tokens differ"
    assert got["audio_codes"] == lm_golden["gen.audio_codes"], "audio codes differ"


def test_chat_rejects_mismatched_models():
    err = run("chat", "--model", os.path.join(LM, "model.safetensors"), "--lm-config",
              os.path.join(LM, "config.json"), "--mimi-model", MODEL, "--mimi-config", CONFIG,
              speech_wav, os.path.join(tmp, "chat.wav"), expect_ok=False).stderr
    assert "audio vocabulary of 32" in err and MODEL in err, err


DIALOG = os.path.join(DATA, "lm", "dialog")
TOKENIZER = os.path.join(DATA, "tokenizer", "tiny.model")
MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"


def chat_and_compare(*model_args, env=None):
    """Runs chat greedily with model_args naming the models; checks the transcript and the
    audio against the dialog golden. Returns the process."""
    gold = read_safetensors(os.path.join(DIALOG, "golden.safetensors"))
    speech = golden["speech.pcm"][1]
    frames = len(gold["gen.text_tokens"][1])
    cycle = speech[: len(speech) // 1920 * 1920] + [0.0] * (10 * 1920)
    audio = (cycle * 3)[: frames * 1920]
    wav_in = os.path.join(tmp, "dialog-in.wav")
    write_float_wav(wav_in, audio, 24000)
    wav_out = os.path.join(tmp, "dialog-out.wav")
    proc = run("chat", *model_args, "--mimi-config", CONFIG, "--greedy", wav_in, wav_out, env=env)
    with open(os.path.join(DATA, "tokenizer", "golden.json")) as f:
        pieces = [p["piece"] for p in json.load(f)["pieces"]]
    want = "".join(pieces[i].replace("\u2581", " ") for i in gold["gen.text_tokens"][1]
                   if i >= 0 and i not in (0, 3))
    assert want and ("transcript:" + want + "\n") in proc.stdout, (want, proc.stdout)
    pcm = read_float_wav(wav_out)
    assert len(pcm) == frames * 1920, len(pcm)
    assert rel_l2(pcm, gold["gen.decoded_pcm"][1]) <= 1e-4
    return proc


def test_chat_greedy_transcript():
    chat_and_compare("--model", os.path.join(DIALOG, "model.safetensors"), "--lm-config",
                     os.path.join(DIALOG, "config.json"), "--mimi-model", MODEL,
                     "--tokenizer", TOKENIZER)


def test_chat_from_folder():
    # Kyutai's file names in one folder: config.json is the LM's config.
    folder = os.path.join(tmp, "moshi-folder")
    os.makedirs(folder, exist_ok=True)
    for name, target in (("model.safetensors", os.path.join(DIALOG, "model.safetensors")),
                         ("config.json", os.path.join(DIALOG, "config.json")),
                         (MIMI_FILE, MODEL), ("tokenizer_spm_32k_3.model", TOKENIZER)):
        link = os.path.join(folder, name)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(target), link)
    chat_and_compare("--hf-repo", folder)


def test_chat_downloads_hf_repo():
    # The same files on a stand-in hub: downloaded into the cache, a progress line each.
    server_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hub-server.py")
    root = tempfile.mkdtemp(prefix="moshi-tool-hub-", dir=tmp)
    files = os.path.join(root, "repos", "test", "moshi", "files")
    os.makedirs(files)
    with open(os.path.join(root, "repos", "test", "moshi", "commit"), "w") as f:
        f.write("0123456789abcdef0123456789abcdef01234567")
    for name, src in (("model.safetensors", os.path.join(DIALOG, "model.safetensors")),
                      ("config.json", os.path.join(DIALOG, "config.json")),
                      (MIMI_FILE, MODEL), ("tokenizer_spm_32k_3.model", TOKENIZER)):
        with open(src, "rb") as i, open(os.path.join(files, name), "wb") as o:
            o.write(i.read())
    server = subprocess.Popen([sys.executable, server_script, root], stdout=subprocess.PIPE,
                              text=True)
    try:
        port = server.stdout.readline().strip()
        env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:" + port,
                   HF_HUB_CACHE=os.path.join(root, "cache"), HF_HOME=os.path.join(root, "home"))
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_TOKEN", None)
        probe = run("chat", "--hf-repo", "test/none", speech_wav, os.path.join(tmp, "x.wav"),
                    expect_ok=False, env=env).stderr
        if "libsoup" in probe:
            print("(built without the downloader: %s)" % probe.strip())
            return
        assert "404" in probe and "test/none" in probe, probe
        proc = chat_and_compare("--hf-repo", "test/moshi", env=env)
        for name in ("model.safetensors", MIMI_FILE):
            assert "downloaded %s from test/moshi" % name in proc.stderr, proc.stderr
        # Cached now: offline works, and a repo missing from the cache says why.
        env["HF_HUB_OFFLINE"] = "1"
        chat_and_compare("--hf-repo", "test/moshi", env=env)
        err = run("chat", "--hf-repo", "test/other", speech_wav, os.path.join(tmp, "x.wav"),
                  expect_ok=False, env=env).stderr
        assert "test/other" in err and "HF_HUB_OFFLINE" in err and "Moshi LM" in err, err
    finally:
        server.terminate()
        server.wait()


def write_wav(path, samples, rate, bits=32, extra_chunk=False, unset_size=False):
    """A float WAV (32 or 64 bits), optionally with an odd-sized chunk before the data and the
    data size left unset as a streaming writer leaves it."""
    data = struct.pack("<%d%s" % (len(samples), "f" if bits == 32 else "d"), *samples)
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, rate, rate * bits // 8, bits // 8, bits)
    if extra_chunk:
        fmt += b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"
    size = 0xFFFFFFFF if unset_size else len(data)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + len(fmt) + 8 + len(data)) + b"WAVE" + fmt)
        f.write(b"data" + struct.pack("<I", size) + data)


def test_chat_streams_its_input():
    # issue 14: chat read the whole WAV and built the whole output in memory; it now goes frame
    # by frame. The output must be what the whole-file version wrote: the last frame padded
    # with silence, the same bytes whatever the encoding and layout of the input, a header that
    # states the exact sizes, and the same result through a device.
    dialog = os.path.join(DATA, "lm", "dialog")
    speech = golden["speech.pcm"][1][: 5 * 1920 + 700]
    padded = speech + [0.0] * (1920 - 700)
    inputs = {"plain": {}, "f64-extra-chunk": {"bits": 64, "extra_chunk": True},
              "unset-size": {"unset_size": True}}
    args = ["chat", "--model", os.path.join(dialog, "model.safetensors"), "--lm-config",
            os.path.join(dialog, "config.json"), "--mimi-model", MODEL, "--mimi-config", CONFIG,
            "--greedy"]
    outputs = {}
    for name, options in list(inputs.items()) + [("padded", None)]:
        wav_in = os.path.join(tmp, "stream-%s.wav" % name)
        write_wav(wav_in, padded if options is None else speech, 24000, **(options or {}))
        wav_out = os.path.join(tmp, "stream-%s-out.wav" % name)
        run(*args, wav_in, wav_out)
        with open(wav_out, "rb") as f:
            outputs[name] = f.read()
    for name, blob in outputs.items():
        assert blob == outputs["padded"], name
    blob = outputs["padded"]
    assert len(blob) == 58 + 6 * 1920 * 4, len(blob)
    assert struct.unpack("<I", blob[4:8]) == (len(blob) - 8,), blob[:8]
    assert blob[38:42] == b"fact" and struct.unpack("<I", blob[46:50]) == (6 * 1920,), blob[38:50]
    assert blob[50:54] == b"data" and struct.unpack("<I", blob[54:58]) == (6 * 1920 * 4,)
    null, full = device_node("null", 3), device_node("full", 7)
    if null:
        run(*args, os.path.join(tmp, "stream-plain.wav"), null)
    if full:
        err = run_failing(*args, os.path.join(tmp, "stream-plain.wav"), full)
        assert full in err and "No space" in err, err


def test_bench_serve_footprint_without_weights():
    """The 7B shape's footprint and paper estimate, from the shapes alone."""
    out = run("bench", "serve", "--json").stdout.strip().splitlines()
    assert len(out) == 1, out
    fp = json.loads(out[0])
    assert fp["context"] == 3000 and fp["kv"] == "bf16", fp
    # BF16 KV caches: 32 layers x 3000 positions x 4096 x (K, V) x 2 bytes, at most 1.6 GB
    assert fp["kv_bytes_per_conversation"] == 32 * 3000 * 4096 * 2 * 2, fp
    assert fp["kv_bytes_per_conversation"] <= 1.6e9, fp
    f32 = json.loads(run("bench", "serve", "--json", "--kv", "f32").stdout)
    assert f32["kv_bytes_per_conversation"] == 2 * fp["kv_bytes_per_conversation"], f32
    # FP8: a byte a value and an f32 scale per head and position: at most 0.85 GB
    fp8 = json.loads(run("bench", "serve", "--json", "--kv", "fp8").stdout)
    assert fp8["kv_bytes_per_conversation"] == 32 * 3000 * 2 * (4096 + 32 * 4), fp8
    assert fp8["kv_bytes_per_conversation"] <= 0.85e9, fp8
    assert fp8["H100_max_conversations"] >= 64, fp8
    # int8 linear layers: about half of BF16's weights, Moshi 7B within a 16 GB GPU
    int8 = json.loads(run("bench", "serve", "--json", "--weights", "int8").stdout)
    assert int8["weight_bytes"] < 0.55 * fp["weight_bytes"] and int8["weight_bytes"] < 9e9, int8
    assert 15.0e9 < fp["weight_bytes"] < 15.6e9, fp
    assert fp["H100_max_conversations"] > 0 and fp["H200_max_conversations"] > fp["H100_max_conversations"], fp
    text = run("bench", "serve").stdout
    assert "real-time conversations" in text and "H200" in text, text


def test_bench_serve_runs_conversations():
    dialog = os.path.join(DATA, "lm", "dialog")
    out = run("bench", "serve", "--json", "--device", "cpu", "--seconds", "0.5",
              "--conversations", "1,3", "--compare-alone",
              "--config", os.path.join(dialog, "config.json"),
              "--weights", os.path.join(dialog, "model.safetensors"),
              "--mimi-model", MODEL, "--mimi-config", CONFIG).stdout.strip().splitlines()
    rows = [json.loads(line) for line in out[1:]]
    assert [(r["conversations"], r["scheduler"]) for r in rows] == \
        [(1, True), (1, False), (3, True), (3, False)], rows
    for r in rows:
        for key in ("tick_ms_p50", "tick_ms_p99", "deadline_misses", "kv_bytes_per_conversation",
                    "weight_bytes"):
            assert key in r, (key, r)
        assert r["frames"] == 6 * r["conversations"], r
    assert rows[2]["ticks"] > 0 and rows[2]["tick_ms_p99"] >= rows[2]["tick_ms_p50"] > 0, rows


def test_bench_serve_bad_options():
    for args, needle in ((["--conversations", "0"], "bad conversation count"),
                         (["--kv", "f16"], "expected bf16, fp8 or f32"),
                         (["--seconds", "0"], "--seconds")):
        err = run("bench", "serve", *args, expect_ok=False).stderr
        assert needle in err, (args, err)


def run_failing(*args, code=1, timeout=60):
    """Runs a command that must fail cleanly: exit status `code`, not a signal or a hang."""
    proc = subprocess.run([TOOL, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr)
    return proc.stderr


def test_config_errors_name_the_config():
    # issue 14, defect 10: a config that does not fit the weights was blamed on the weights alone
    lm_weights = os.path.join(LM, "model.safetensors")
    other = os.path.join(DATA, "lm", "dialog", "config.json")
    err = run_failing("lm-forward", "--weights", lm_weights, "--config", other, "--codes", "x",
                      "--out", os.path.join(tmp, "f.safetensors"))
    assert lm_weights in err and other in err, err
    tiny = os.path.join(DATA, "mimi", "tiny", "config.json")
    err = run_failing("encode", "--model", MODEL, "--config", tiny, speech_wav,
                      os.path.join(tmp, "t.safetensors"))
    assert MODEL in err and tiny in err, err


def test_non_finite_weights_are_refused():
    # issue 14, defect 10: one infinity in the weights gave an all-inf WAV without complaint
    tensors = read_safetensors(MODEL)
    name = "decoder.model.0.conv.conv.weight"
    shape, values = tensors[name]
    values[5] = float("inf")
    bad = os.path.join(tmp, "inf-mimi.safetensors")
    write_safetensors(bad, {n: ("F32", sh, v) for n, (sh, v) in tensors.items()})
    err = run_failing("encode", "--model", bad, "--config", CONFIG, speech_wav,
                      os.path.join(tmp, "i.safetensors"))
    assert bad in err and name in err and "non-finite" in err, err


def test_option_values_are_checked():
    # issue 14, defect 6: these crashed (SIGSEGV, SIGFPE) or wrote an empty file
    out = os.path.join(tmp, "opt.safetensors")
    cases = [
        (["encode", "--codebooks", "0"], "--codebooks=0"),
        (["encode", "--streaming", "--codebooks", "0"], "--codebooks=0"),
        (["encode", "--codebooks", "65"], "--codebooks=65"),
        (["encode", "--threads", "-1"], "--threads=-1"),
    ]
    for extra, what in cases:
        err = run_failing(extra[0], "--model", MODEL, "--config", CONFIG, *extra[1:], speech_wav, out,
                          code=2)
        assert what in err, err
    assert not os.path.exists(out)
    for extra, what in [(["--codebooks", "0"], "--codebooks=0"),
                        (["--frames-per-call", "0"], "--frames-per-call=0"),
                        (["--seconds", "-1"], "--seconds=-1"),
                        (["--threads", "1,x"], "'x'"),
                        (["--batch", "0"], "'0'")]:
        err = run_failing("bench", "--model", MODEL, "--config", CONFIG, *extra, "mimi", code=2)
        assert what in err, err
    err = run_failing("bench", "lm", "--batch", "2x", code=2)
    assert "'2x'" in err, err


def test_bench_long_calls():
    # 2048 frames per call overflowed a stack buffer (SIGSEGV); one call timed nothing (NaN)
    out = run("bench", "--model", MODEL, "--config", CONFIG, "--frames-per-call", "2048",
              "--seconds", "1", "--threads", "1", "mimi").stdout
    assert "threads 1:" in out and "nan" not in out, out


def test_bench_batched_streams():
    # --batch: N streams stepped alone and as one batch, a JSON line for each N
    out = run("bench", "--model", MODEL, "--config", CONFIG, "--seconds", "0.5", "--threads", "1",
              "--batch", "1,3", "--json", "mimi").stdout.strip().splitlines()
    rows = [json.loads(line) for line in out if "streams" in line]
    assert [r["streams"] for r in rows] == [1, 3], out
    for r in rows:
        assert r["alone_frames_per_s"] > 0 and r["batched_frames_per_s"] > 0, r
        assert math.isclose(r["speedup"], r["batched_frames_per_s"] / r["alone_frames_per_s"],
                            rel_tol=1e-2), r


def test_crafted_codes_dimensions():
    # issue 14, defect 5: 2^31 frames became a negative int and aborted in an allocation
    path = os.path.join(tmp, "huge-codes.safetensors")
    write_safetensors(path, {"codes": ("I64", [1, 0, 2 ** 31], [])})
    err = run_failing("decode", "--model", MODEL, "--config", CONFIG, path, os.path.join(tmp, "h.wav"))
    assert path in err and "2147483648" in err, err
    write_safetensors(path, {"codes": ("I64", [1, 2 ** 32 + 1, 0], [])})
    err = run_failing("decode", "--model", MODEL, "--config", CONFIG, path, os.path.join(tmp, "h.wav"))
    assert path in err and "4294967297" in err, err


def test_shapes_are_shown_whole():
    # issue 14, defect 10: an 8-dimension shape of large sizes was cut short in the message
    path = os.path.join(tmp, "wide-codes.safetensors")
    dims = [0] + [2 ** 62 + d for d in range(7)]
    write_safetensors(path, {"codes": ("I64", dims, [])})
    err = run_failing("decode", "--model", MODEL, "--config", CONFIG, path, os.path.join(tmp, "w.wav"))
    want = "[" + ", ".join(str(d) for d in dims) + "]"
    assert want in err, err


def test_errors_name_the_input():
    # issue 14, defects 9 and 10: the NaN error named no file, and --streaming leaked on it
    nan_wav = os.path.join(tmp, "nan.wav")
    write_float_wav(nan_wav, [0.0] * 1000 + [float("nan")] + [0.0] * 3000, 24000)
    for extra in ([], ["--streaming"]):
        err = run_failing("encode", "--model", MODEL, "--config", CONFIG, *extra, nan_wav,
                          os.path.join(tmp, "n.safetensors"))
        assert nan_wav in err and "not finite" in err, err
    bad_codes = os.path.join(tmp, "bad-codes.safetensors")
    write_safetensors(bad_codes, {"codes": ("I64", [1, 2, 2], [0, 1, 99999, 2])})
    for extra in ([], ["--streaming"]):
        err = run_failing("decode", "--model", MODEL, "--config", CONFIG, *extra, bad_codes,
                          os.path.join(tmp, "b.wav"))
        assert bad_codes in err, err


def test_inputs_must_be_regular_files():
    # issue 14, defect 7: a FIFO blocked forever, /dev/zero as a config grew without end
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    out = os.path.join(tmp, "f.safetensors")
    for args in (["--model", MODEL, "--config", fifo, speech_wav],
                 ["--model", fifo, "--config", CONFIG, speech_wav],
                 ["--model", MODEL, "--config", CONFIG, fifo],
                 ["--model", MODEL, "--config", "/dev/zero", speech_wav],
                 ["--model", MODEL, "--config", CONFIG, "/dev/zero"]):
        err = run_failing("encode", *args, out, timeout=20)
        assert "FIFO" in err or "character device" in err, err
    lm_config = os.path.join(LM, "config.json")
    for args in (["--lm-config", fifo], ["--lm-config", lm_config, "--tokenizer", fifo]):
        err = run_failing("chat", "--model", os.path.join(LM, "model.safetensors"),
                          "--mimi-model", MODEL, "--mimi-config", CONFIG, *args, speech_wav,
                          os.path.join(tmp, "c.wav"), timeout=20)
        assert fifo in err and "FIFO" in err, err
    big = os.path.join(tmp, "big.json")
    with open(big, "wb") as f:
        f.truncate(17 << 20)
    err = run_failing("encode", "--model", MODEL, "--config", big, speech_wav, out)
    assert big in err and "larger than" in err, err
    os.unlink(fifo)


def device_node(name, minor):
    """A character device like /dev/<name>. As root, a private node in tmp, so that a regression
    that renames over its output replaces that node and not the system's /dev/null; otherwise
    /dev/<name> itself, which an unprivileged rename cannot replace."""
    if os.geteuid() != 0:
        return "/dev/" + name if os.path.exists("/dev/" + name) else None
    path = os.path.join(tmp, name)
    if not os.path.exists(path):
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    try:
        with open(path, "wb"):
            pass
    except OSError:  # tmp mounted nodev
        return None
    return path


def test_outputs_that_are_not_regular_files():
    # issue 14, defect 8: the output was written beside the target and renamed over it, which
    # replaced a device node with a regular file
    codes_path = encode_and_compare([], "codes")
    null, full = device_node("null", 3), device_node("full", 7)
    if null:
        run("decode", "--model", MODEL, "--config", CONFIG, codes_path, null)
        run("encode", "--model", MODEL, "--config", CONFIG, speech_wav, null)
    if full:
        err = run_failing("decode", "--model", MODEL, "--config", CONFIG, codes_path, full)
        assert full in err and "No space" in err, err
        err = run_failing("encode", "--model", MODEL, "--config", CONFIG, speech_wav, full)
        assert full in err and "No space" in err, err
    if null:
        # through a symbolic link, as /dev/stdout is one: the link stays a link
        link = os.path.join(tmp, "null-link")
        os.symlink(null, link)
        run("decode", "--model", MODEL, "--config", CONFIG, codes_path, link)
        assert os.path.islink(link), link
        os.unlink(link)
    for dev in (null, full):
        if dev:
            assert stat.S_ISCHR(os.stat(dev).st_mode), dev
            assert not [n for n in os.listdir(os.path.dirname(dev))
                        if n.startswith(os.path.basename(dev) + ".")], dev


def test_unknown_command():
    err = run("frobnicate", expect_ok=False).stderr
    assert "unknown command" in err, err


def test_version():
    out = run("--version").stdout
    assert out.startswith("moshi-tool ") and out.split()[1][0].isdigit(), out


def test_messages_in_the_locale_charset():
    # GOption quotes the bad value with U+201C/U+201D; without setlocale GLib prints '?'
    err = run("bench", "lm", "--steps", "x", expect_ok=False, env=dict(os.environ, LC_ALL="C.UTF-8")).stderr
    assert "\u201cx\u201d" in err, err


def test_bench_help_lists_every_benchmark():
    out = run("bench", "--help").stdout
    for name in ("mimi", "lm", "serve"):
        assert "\n  %s " % name in out, (name, out)


def test_repo_ids_resolve_in_the_hub_cache():
    # a hub cache laid out as huggingface_hub leaves it, holding the small Mimi
    cache = os.path.join(tmp, "hub")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = os.path.join(cache, "models--test--small-mimi")
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    os.symlink(MODEL, os.path.join(snap, "tokenizer-e351c8d8-checkpoint125.safetensors"))
    codes_path = os.path.join(tmp, "codes-repo.safetensors")
    run("encode", "--model", "test/small-mimi", "--config", CONFIG, "--codebooks", "8", speech_wav,
        codes_path, env=dict(os.environ, HF_HUB_CACHE=cache))
    assert read_safetensors(codes_path)["codes"][1] == golden["speech.codes"][1]
    err = run("encode", "--model", "test/absent", speech_wav, codes_path, expect_ok=False,
              env=dict(os.environ, HF_HUB_CACHE=cache)).stderr
    assert "test/absent" in err and "hub cache" in err, err


def test_reduced_model_without_config_is_hinted():
    err = run("encode", "--model", MODEL, speech_wav, os.path.join(tmp, "x.safetensors"),
              expect_ok=False).stderr
    assert "no Mimi config was given" in err and CONFIG in err, err


for name, func in list(globals().items()):
    if name.startswith("test_") and callable(func):
        check(name, func)

failed = sum(1 for _, e in results if e is not None)
print("%d passed, %d failed" % (len(results) - failed, failed))
sys.exit(1 if failed else 0)
