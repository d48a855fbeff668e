#!/usr/bin/env python3
"""Prints "<samples> <rate> <rms> <non-finite count>" of a mono WAV file (PCM 16-bit or IEEE
float 32-bit), with the standard library only, for the shell tests."""
import math
import struct
import sys


def main(path):
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
    bad = sum(1 for s in samples if not math.isfinite(s))
    good = [s for s in samples if math.isfinite(s)]
    rms = math.sqrt(sum(s * s for s in good) / max(len(good), 1))
    print(len(samples), rate, "%.6f" % rms, bad)


if __name__ == "__main__":
    main(sys.argv[1])
