#!/usr/bin/env python3
"""For the shell tests, with the standard library only, on mono WAV files (PCM 16-bit or IEEE
float 32-bit):
  wavstats.py FILE            prints "<samples> <rate> <rms> <non-finite count>"
  wavstats.py --rel-l2 A B    prints the relative L2 distance of A from B (same length, else
                              exits 1 saying so)"""
import math
import struct
import sys


def read_wav(path):
    data = open(path, "rb").read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a WAV file"
    pos, fmt, rate, bits, samples = 12, None, None, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if fmt == 0xFFFE:
                fmt = struct.unpack("<H", body[24:26])[0]
            assert channels == 1, "expected mono"
        elif cid == b"data":
            if (fmt, bits) == (3, 32):
                samples = struct.unpack("<%df" % (len(body) // 4), body[:len(body) // 4 * 4])
            elif (fmt, bits) == (1, 16):
                samples = [s / 32768 for s in struct.unpack("<%dh" % (len(body) // 2), body)]
            else:
                raise SystemExit("unsupported WAV format %s/%s" % (fmt, bits))
        pos += 8 + size + (size & 1)
    return rate, samples


def stats(path):
    rate, samples = read_wav(path)
    bad = sum(1 for s in samples if not math.isfinite(s))
    good = [s for s in samples if math.isfinite(s)]
    rms = math.sqrt(sum(s * s for s in good) / max(len(good), 1))
    print(len(samples), rate, "%.6f" % rms, bad)


def rel_l2(path, reference):
    _, a = read_wav(path)
    _, b = read_wav(reference)
    if len(a) != len(b):
        raise SystemExit("%s has %d samples, %s %d" % (path, len(a), reference, len(b)))
    diff = sum((x - y) ** 2 for x, y in zip(a, b))
    norm = sum(y * y for y in b)
    print("%.3g" % math.sqrt(diff / norm if norm > 0 else diff))


if __name__ == "__main__":
    if sys.argv[1] == "--rel-l2":
        rel_l2(sys.argv[2], sys.argv[3])
    else:
        stats(sys.argv[1])
