#!/usr/bin/env python3
"""Writes the seed corpora of fuzz-safetensors (tests/fuzz/corpus/), fuzz-wav (corpus-wav/),
fuzz-tokenizer (corpus-tokenizer/), fuzz-codes (corpus-codes/), fuzz-mimi-tokens
(corpus-mimi-tokens/), fuzz-server-input (corpus-server-input/) and fuzz-rtp-mimi
(corpus-rtp-mimi/).

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


def codes_corpus():
    """Codes files as `moshi-tool encode` writes them, and near misses."""
    codes = [[1, 2, 3], [4, 5, 6]]
    flat = [c for row in codes for c in row]
    yield "i64-1x2x3.safetensors", image(
        {"codes": tensor("I64", [1, 2, 3], 0, 48)}, struct.pack("<6q", *flat))
    yield "i32-2x3.safetensors", image(
        {"codes": tensor("I32", [2, 3], 0, 24)}, struct.pack("<6i", *flat))
    yield "i64-beyond-int32.safetensors", image(
        {"codes": tensor("I64", [1, 1, 2], 0, 16)}, struct.pack("<2q", 1 << 40, -(1 << 40)))
    yield "no-frames.safetensors", image({"codes": tensor("I64", [1, 8, 0], 0, 0)})
    yield "wrong-batch.safetensors", image(
        {"codes": tensor("I64", [2, 1, 1], 0, 16)}, struct.pack("<2q", 0, 0))


def mimi_tokens_corpus():
    """A codebook-count byte, then audio/x-mimi u16le frames for the tiny Mimi (64 bins, 6
    codebooks)."""
    def frames(codebooks, n):
        return bytes([codebooks - 1]) + b"".join(
            struct.pack("<H", (7 * f + 11 * k) % 64) for f in range(n) for k in range(codebooks))
    yield "6x4.tokens", frames(6, 4)
    yield "2x30.tokens", frames(2, 30)
    yield "8x1-too-many-codebooks.tokens", frames(8, 1)
    yield "bad-code.tokens", bytes([0]) + struct.pack("<2H", 3, 64)


def ogg_page(packets, flags=0, granule=0, seq=0):
    """An Ogg page (CRC left 0: the server does not check it) holding whole packets."""
    lacing = b""
    for p in packets:
        lacing += b"\xff" * (len(p) // 255) + bytes([len(p) % 255])
    header = b"OggS" + bytes([0, flags]) + struct.pack("<qIII", granule, 1, seq, 0)
    return header + bytes([len(lacing)]) + lacing + b"".join(packets)


def messages(*payloads):
    """fuzz-server-input's framing: a 2-byte LE length, then a WebSocket message."""
    return b"".join(struct.pack("<H", len(p)) + p for p in payloads)


def server_input_corpus():
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 4) + b"test" + struct.pack("<I", 0)
    # TOC 0x78: hybrid fullband 20 ms, one frame
    audio = [bytes([0x78]) + bytes(range(i, i + 40)) for i in range(3)]
    stream = ogg_page([head], flags=2) + ogg_page([tags], seq=1) + ogg_page(audio, seq=2)
    yield "whole-stream.msgs", messages(b"\x01" + stream)
    cut = len(stream) // 3
    yield "split-pages.msgs", messages(b"\x01" + stream[:cut], b"\x01" + stream[cut:])
    yield "text-and-audio.msgs", messages(b"\x02hello", b"\x01" + ogg_page(audio[:1]))
    # the query string of upstream's web client, then the stream
    yield "query-then-stream.msgs", (
        b"?text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250&seed=42"
        b"&=text_seed=%31\x00" + messages(b"\x01" + stream))
    # a 300-byte packet continued from one page onto the next
    long = bytes([0x7b, 3]) + bytes(298)
    first = b"OggS" + bytes([0, 0]) + struct.pack("<qIII", -1, 1, 0, 0) + b"\x01\xff" + long[:255]
    yield "continued-packet.msgs", messages(
        b"\x01" + first + ogg_page([long[255:]], flags=1, seq=1))


def rtp_mimi_corpus():
    """The fuzz target's 4 layout bytes (codebooks - 1, codebook-size - 2 LE, code-bits - 1),
    then payloads packed as rtpmimipay packs them (MSB first, each frame padded to a byte)."""
    def packed(codebooks, size, bits, frames):
        out = b""
        for frame in frames:
            value, nbits = 0, 0
            for code in frame:
                value = value << bits | code
                nbits += bits
            pad = -nbits % 8
            out += (value << pad).to_bytes((nbits + pad) // 8, "big")
        return bytes([codebooks - 1]) + struct.pack("<H", size - 2) + bytes([bits - 1]) + out
    yield "released-2-frames.rtp", packed(8, 2048, 11, [list(range(8)), [2047] * 8])
    yield "wide-code-bits.rtp", packed(4, 1000, 16, [[999, 0, 1, 500]])
    yield "one-bit.rtp", packed(3, 2, 1, [[1, 0, 1], [0, 1, 1]])


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
    write(os.path.join(here, "corpus-codes"), codes_corpus())
    write(os.path.join(here, "corpus-mimi-tokens"), mimi_tokens_corpus())
    write(os.path.join(here, "corpus-server-input"), server_input_corpus())
    write(os.path.join(here, "corpus-rtp-mimi"), rtp_mimi_corpus())
    return 0


if __name__ == "__main__":
    sys.exit(main())
