#!/usr/bin/env python3
"""Random weights of the released Mimi shapes, for timing only (`moshi-tool bench mimi`).

The values are uniform in +-sqrt(3 / fan_in) (so activations stay of order 1 through the
layers), codebooks uniform in +-1 with cluster usage 1, norms and layer scales as initialised;
the key names are those of the released checkpoint (spec/mimi.md section 5), all F32, no
config needed. Unlike gen_mimi.py it needs neither torch nor the upstream package, and it
writes no goldens: nothing is checked against these weights.

Usage: python3 tests/reference/gen_mimi_shapes.py OUT.safetensors
"""

import array
import json
import math
import random
import struct
import sys

# spec/mimi.md section 1: SEANet, transformer and quantizer of the released model
FILTERS, DIM, RATIOS = 64, 512, (8, 6, 5, 4)      # ratios in decoder order
LAYERS, FF = 8, 2048
N_Q, BINS, CB_DIM = 32, 2048, 256

# One pool of random values, reused at every scale: drawing ~96M values one by one in Python
# would take minutes, and timing does not depend on them.
POOL = 1 << 20
_rng = random.Random(1003)
_unit = array.array("f", (_rng.uniform(-1.0, 1.0) for _ in range(POOL))).tobytes()


def uniform(count, bound):
    scaled = array.array("f", _unit)
    for i in range(len(scaled)):
        scaled[i] *= bound
    raw = scaled.tobytes()
    need = 4 * count
    return (raw * (need // len(raw) + 1))[:need]


def constant(count, value):
    return array.array("f", [value]).tobytes() * count


class Writer:
    def __init__(self):
        self.tensors = []
        self._cache = {}

    def random(self, name, shape, fan_in):
        count = math.prod(shape)
        bound = math.sqrt(3.0 / fan_in)
        key = (count, bound)
        if key not in self._cache:
            self._cache[key] = uniform(count, bound)
        self.tensors.append((name, shape, self._cache[key]))

    def const(self, name, shape, value):
        self.tensors.append((name, shape, constant(math.prod(shape), value)))

    def conv(self, prefix, c_in, c_out, k):
        self.random(prefix + ".weight", [c_out, c_in, k], c_in * k)
        self.random(prefix + ".bias", [c_out], c_in * k)

    def save(self, path):
        header, offset = {}, 0
        for name, shape, raw in self.tensors:
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
            offset += len(raw)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, _, raw in self.tensors:
                f.write(raw)


def seanet(w):
    # encoder (spec 2.4): strides are the ratios reversed
    w.conv("encoder.model.0.conv.conv", 1, FILTERS, 7)
    ch, idx = FILTERS, 1
    for stride in reversed(RATIOS):
        w.conv("encoder.model.%d.block.1.conv.conv" % idx, ch, ch // 2, 3)
        w.conv("encoder.model.%d.block.3.conv.conv" % idx, ch // 2, ch, 1)
        w.conv("encoder.model.%d.conv.conv" % (idx + 2), ch, 2 * ch, 2 * stride)
        ch, idx = 2 * ch, idx + 3
    w.conv("encoder.model.%d.conv.conv" % (idx + 1), ch, DIM, 3)
    # decoder (spec 2.5)
    w.conv("decoder.model.0.conv.conv", DIM, ch, 7)
    idx = 2
    for stride in RATIOS:
        w.random("decoder.model.%d.convtr.convtr.weight" % idx, [ch, ch // 2, 2 * stride], ch)
        w.random("decoder.model.%d.convtr.convtr.bias" % idx, [ch // 2], ch)
        ch //= 2
        w.conv("decoder.model.%d.block.1.conv.conv" % (idx + 1), ch, ch // 2, 3)
        w.conv("decoder.model.%d.block.3.conv.conv" % (idx + 1), ch // 2, ch, 1)
        idx += 3
    w.conv("decoder.model.%d.conv.conv" % idx, ch, 1, 3)


def transformers(w):
    for side in ("encoder", "decoder"):
        for layer in range(LAYERS):
            p = "%s_transformer.transformer.layers.%d." % (side, layer)
            w.random(p + "self_attn.in_proj_weight", [3 * DIM, DIM], DIM)
            w.random(p + "self_attn.out_proj.weight", [DIM, DIM], DIM)
            w.random(p + "linear1.weight", [FF, DIM], DIM)
            w.random(p + "linear2.weight", [DIM, FF], FF)
            for norm in ("norm1", "norm2"):
                w.const(p + norm + ".weight", [DIM], 1.0)
                w.const(p + norm + ".bias", [DIM], 0.0)
            for scale in ("layer_scale_1", "layer_scale_2"):
                w.const(p + scale + ".scale", [DIM], 0.01)


def quantizer(w):
    for split in ("rvq_first", "rvq_rest"):
        w.random("quantizer.%s.input_proj.weight" % split, [CB_DIM, DIM, 1], DIM)
        w.random("quantizer.%s.output_proj.weight" % split, [DIM, CB_DIM, 1], CB_DIM)
    for level in range(N_Q):
        if level == 0:
            p = "quantizer.rvq_first.vq.layers.0._codebook."
        else:
            p = "quantizer.rvq_rest.vq.layers.%d._codebook." % (level - 1)
        w.random(p + "embedding_sum", [BINS, CB_DIM], 3.0)   # bound 1
        w.const(p + "cluster_usage", [BINS], 1.0)
    w.random("downsample.conv.conv.conv.weight", [DIM, DIM, 4], DIM * 4)
    w.random("upsample.convtr.convtr.convtr.weight", [DIM, 1, 4], 4)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    w = Writer()
    seanet(w)
    transformers(w)
    quantizer(w)
    w.save(sys.argv[1])


if __name__ == "__main__":
    main()
