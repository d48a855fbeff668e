#!/usr/bin/env python3
"""Writes the seed corpora of fuzz-safetensors (tests/fuzz/corpus/), fuzz-wav (corpus-wav/) and
fuzz-tokenizer (corpus-tokenizer/).

The config targets start from the configs of the test data instead (see run-fuzz.sh).

A few tiny safetensors files, valid and invalid, so that the fuzzer starts from inputs that get
past the 8-byte length and into the header checks. Standard library only; rerun after changing
it and commit the outputs.
"""

import json
import os
import struct
import sys


def image(header, data=b"", header_len=None, pad=True):
    """The bytes of a safetensors file: u64 LE header length, JSON header, data."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        # Spaces so that the data section starts 8-byte aligned, as the library's writer does.
        text += b" " * (-(8 + len(text)) % 8)
    length = len(text) if header_len is None else header_len
    return struct.pack("<Q", length) + text + data


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def corpus():
    yield "valid-small.safetensors", image(
        {
            "__metadata__": {"format": "pt"},
            "w": tensor("F32", [2, 2], 0, 16),
            "b": tensor("BF16", [3], 16, 22),
        },
        struct.pack("<4f", 1.0, -2.0, 0.5, 3.25) + struct.pack("<3H", 0x3F80, 0xC000, 0x7FC0),
    )
    yield "valid-scalar-empty.safetensors", image(
        {
            "step": tensor("I64", [], 0, 8),
            "none": tensor("U8", [0, 4], 8, 8),
            "mask": tensor("BOOL", [3], 8, 11),
        },
        struct.pack("<q", 42) + b"\x01\x00\x01",
        pad=False,
    )
    yield "invalid-overlap.safetensors", image(
        {"a": tensor("F16", [4], 0, 8), "b": tensor("I32", [2], 4, 12)},
        bytes(range(12)),
    )
    yield "invalid-dtype.safetensors", image(
        {"q": tensor("F8_E4M3", [4], 0, 4)},
        b"\x00\x01\x02\x03",
    )
    yield "invalid-truncated.safetensors", image(
        {"t": tensor("F64", [2], 0, 16)},
        b"\x00" * 8,
        header_len=200,
    )


def wav(fmt_tag, channels, rate, bits, data, extensible=False, extra_chunk=b""):
    """A RIFF/WAVE file: fmt chunk (plain or WAVE_FORMAT_EXTENSIBLE), optional chunk, data."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else fmt_tag, channels, rate, rate * block,
                      block, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", fmt_tag) + b"\x00" * 14
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def wav_corpus():
    yield "pcm16-mono.wav", wav(1, 1, 24000, 16, struct.pack("<4h", 0, 32767, -32768, 100))
    yield "pcm24-stereo.wav", wav(1, 2, 48000, 24, bytes(range(12)))
    yield "pcm8.wav", wav(1, 1, 8000, 8, bytes([0, 128, 255]))
    yield "float32.wav", wav(3, 1, 24000, 32, struct.pack("<3f", 0.5, -1.0, 0.25))
    yield "float64-extensible.wav", wav(3, 1, 24000, 64, struct.pack("<2d", 0.5, -0.5), True)
    yield "pcm32-list-chunk.wav", wav(1, 1, 16000, 32, struct.pack("<2i", 1, -1),
                                      extra_chunk=b"LIST" + struct.pack("<I", 3) + b"abc\x00")


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire, payload):
    if wire == 2:
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    return varint(number << 3 | wire) + payload


def spm_model(pieces, trailer=b""):
    """A SentencePiece ModelProto: one field-1 message per (piece, score, type)."""
    out = b""
    for piece, score, kind in pieces:
        body = field(1, 2, piece.encode("utf-8")) + field(2, 5, struct.pack("<f", score))
        body += field(3, 0, varint(kind))
        out += field(1, 2, body)
    return out + trailer


def tokenizer_corpus():
    # types: 1 normal, 2 unknown, 3 control, 6 byte
    base = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<0x0A>", 0.0, 6),
            ("\u2581the", -1.5, 1), ("\u2581a", -2.0, 1), ("ing", -3.25, 1), ("\u2581", -4.0, 1)]
    yield "small.model", spm_model(base)
    # trainer_spec (field 2) and normalizer_spec (field 3), which the reader skips
    yield "with-specs.model", spm_model(base[:3], field(2, 2, field(1, 2, b"x")) + field(3, 2, b""))


def write(out_dir, items):
    os.makedirs(out_dir, exist_ok=True)
    for name, data in items:
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    write(os.path.join(here, "corpus"), corpus())
    write(os.path.join(here, "corpus-wav"), wav_corpus())
    write(os.path.join(here, "corpus-tokenizer"), tokenizer_corpus())
    return 0


if __name__ == "__main__":
    sys.exit(main())
