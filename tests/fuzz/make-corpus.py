#!/usr/bin/env python3
"""Writes the seed corpus of fuzz-safetensors into tests/fuzz/corpus/.

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


def main():
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out_dir, exist_ok=True)
    for name, data in corpus():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
