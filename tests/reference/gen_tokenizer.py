#!/usr/bin/env python3
"""Test asset for the text-tokenizer display code: a tiny SentencePiece model.

Trains a small unigram SentencePiece model with byte fallback and Moshi's special-id layout
(0 <unk>, 1 <s>, 2 </s>, 3 <pad>) on an embedded English text, and records what the
upstream Python code shows for token ids (spec lm.md section 6):

- `display`: the rule of moshi/server.py and moshi/run_inference.py: for each id not in
  {0, 3}, `id_to_piece(id).replace("\u2581", " ")`, concatenated;
- `decode`: `SentencePieceProcessor.decode(ids)`.

Usage:
    python tests/reference/gen_tokenizer.py [--out DIR] [--check]

Writes DIR/tiny.model and DIR/golden.json (default DIR tests/data/tokenizer/). Training runs
single-threaded on a fixed in-memory corpus with a fixed seed, so reruns are byte-identical
(`--check` trains twice and compares). Only *calls* the `sentencepiece` package.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import sys
from pathlib import Path

import sentencepiece as spm

GENERATOR_VERSION = "1"
REPO_ROOT = Path(__file__).resolve().parents[2]

# 4 special pieces + 256 byte pieces (byte_fallback) + normal pieces. SentencePiece needs
# vocab_size > 260 with byte fallback, so "about 200" normal-piece budgets are impossible;
# 360 leaves 100 normal pieces (all ASCII characters of the corpus + frequent subwords).
VOCAB_SIZE = 360
SEED = 1234

# Pure ASCII on purpose: every non-ASCII character is then spelled with byte pieces.
CORPUS = """\
Moshi is a speech-text foundation model and a full-duplex spoken dialogue framework.
It listens and speaks at the same time, and it thinks in text while it talks.
The model predicts text tokens that are aligned with its own speech, one frame at a time.
Twelve and a half frames per second are produced by the audio codec, each frame a small
stack of discrete codes. The temporal transformer looks at the past, and the depth
transformer predicts the codes of the current frame one after the other.
When Moshi has nothing new to say, it writes padding, and just before a word starts it
writes an end-of-padding token, so the words land right where the speech says them.
Hello there! How are you doing today? I am fine, thank you. What would you like to talk about?
Let us talk about the weather, the rain in the hills, the wind over the sea, and the sun
that comes back in the afternoon. It is warm, then cold, then warm again.
Numbers such as one, two, three, four, five, six, seven, eight, nine and ten are common.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
A streaming system must answer quickly: every step has a budget of eighty milliseconds.
The tokenizer is only needed to show the words; the language model never reads text back.
"""

SENTENCES = [line for line in CORPUS.splitlines() if line.strip()]

# Texts to encode for the samples (the non-ASCII ones exercise byte fallback).
SAMPLE_TEXTS = [
    ("plain", "Hello there! How are you doing today?"),
    ("words", "the quick brown fox"),
    ("unseen_word", "Zebras quizzically vex jumpy wizards."),
    ("accent_e", "café au lait"),
    ("y_diaeresis", "ÿ"),
    ("y_diaeresis_in_word", "naÿve"),
    ("euro_and_emoji", "5 € 🙂"),
    ("digits", "3000 frames = 240 s"),
    ("spaces", "  two  spaces"),
]


def train(extra: dict | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs = dict(
        sentence_iterator=iter(SENTENCES),
        model_writer=buf,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        hard_vocab_limit=True,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    if extra:
        kwargs.update(extra)
    spm.set_random_generator_seed(SEED)   # a process-global setting, not a TrainerSpec field
    spm.SentencePieceTrainer.train(**kwargs)
    return buf.getvalue()


def piece_type(sp: spm.SentencePieceProcessor, i: int) -> str:
    # No user-defined symbols are configured, so anything else is NORMAL.
    if sp.is_unknown(i):
        return "unknown"
    if sp.is_control(i):
        return "control"
    if sp.is_byte(i):
        return "byte"
    if sp.is_unused(i):
        return "unused"
    return "normal"


def display(sp: spm.SentencePieceProcessor, ids: list[int]) -> str:
    """Upstream display rule (moshi/server.py, run_inference.py): skip 0 and 3, otherwise
    id_to_piece with every U+2581 replaced by a space."""
    return "".join(sp.id_to_piece(i).replace("\u2581", " ") for i in ids if i not in (0, 3))


def build_golden(model: bytes) -> dict:
    sp = spm.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    pieces = [{"id": i, "piece": sp.id_to_piece(i), "type": piece_type(sp, i),
               "score": sp.get_score(i)} for i in range(n)]
    samples = []
    for name, text in SAMPLE_TEXTS:
        ids = sp.encode(text)
        samples.append({"name": name, "text": text, "ids": ids,
                        "pieces": [sp.id_to_piece(i) for i in ids],
                        "display": display(sp, ids), "decode": sp.decode(ids)})
    # Sequences as the LM could emit them: PAD (3) / EPAD (0) between words, BOS/EOS (1/2).
    w = sp.encode("hello there")
    e = sp.encode("café")
    hand = [
        ("lm_stream_with_pad_epad", [3, 3, 0] + w[:1] + [3, 0] + w[1:] + [3, 3]),
        ("control_bos_eos", [1] + w + [2]),
        ("eos_then_pad", w + [2, 3, 3]),
        ("bytes_with_pad_inside", e[:-1] + [3] + e[-1:]),
        ("lone_continuation_byte", [sp.piece_to_id("<0xA9>")]),
        ("only_skipped", [0, 3, 3, 0]),
        ("unk_only", [0]),
        ("every_byte_A_to_D", [sp.piece_to_id(f"<0x{b:02X}>") for b in range(0x41, 0x45)]),
    ]
    for name, ids in hand:
        samples.append({"name": name, "text": None, "ids": ids,
                        "pieces": [sp.id_to_piece(i) for i in ids],
                        "display": display(sp, ids), "decode": sp.decode(ids)})
    counts: dict[str, int] = {}
    for p in pieces:
        counts[p["type"]] = counts.get(p["type"], 0) + 1
    return {
        "generator": "tests/reference/gen_tokenizer.py",
        "generator_version": GENERATOR_VERSION,
        "reference": {"sentencepiece": spm.__version__, "python": platform.python_version()},
        "model": "tiny.model",
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "training": {"model_type": "unigram", "vocab_size": VOCAB_SIZE, "byte_fallback": True,
                     "character_coverage": 1.0, "random_seed": SEED, "num_threads": 1,
                     "normalization_rule_name": "nmt_nfkc", "corpus_lines": len(SENTENCES)},
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(),
                        "pad": sp.pad_id()},
        "display_rule": "for each id not in {0, 3}: id_to_piece(id) with every U+2581 "
                        "replaced by ' ', concatenated (moshi/server.py, run_inference.py)",
        "piece_count": n,
        "type_counts": counts,
        "pieces": pieces,
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "data" / "tokenizer")
    ap.add_argument("--check", action="store_true",
                    help="train a second time and require byte-identical output")
    args = ap.parse_args()
    model = train()
    golden = build_golden(model)
    text = json.dumps(golden, indent=1, ensure_ascii=False) + "\n"
    if args.check:
        model2 = train()
        assert model2 == model, "second training run differs"
        assert json.dumps(build_golden(model2), indent=1, ensure_ascii=False) + "\n" == text
        print("[gen_tokenizer] rerun byte-identical")
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert golden["type_counts"].get("byte") == 256
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiny.model").write_bytes(model)
    (args.out / "golden.json").write_text(text, encoding="utf-8")
    print(f"[gen_tokenizer] wrote {args.out / 'tiny.model'} ({len(model)} bytes), "
          f"{args.out / 'golden.json'} ({len(text.encode())} bytes); "
          f"types {golden['type_counts']}")
    for s in golden["samples"]:
        print(f"  {s['name']}: ids {s['ids']} display {s['display']!r} decode {s['decode']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
