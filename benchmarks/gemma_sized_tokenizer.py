"""The tiny checkpoint's tokenizer grown to the size of Gemma 3's, so that benchmarks time loading a tokenizer of
the real size (transformers rebuilds it from tokenizer.json's vocabulary and merges at every start: seconds).

Gemma 3's tokenizer.json holds 262,144 ids, 6,000-odd of them reserved special tokens, and about 514,000 BPE
merges. The added pieces are made of CJK characters, which no benchmark prompt uses, so prompts keep the tiny
tokenizer's ids (and the image tokens theirs)."""

from __future__ import annotations

import random

from medgemma_desktop.core.tiny_checkpoint import _build_tokenizer, _vocabulary

SIZE = 262_144
RESERVED = 6_400


def filler(pieces: int, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """`pieces` pieces and the merges that make them: single characters, two-character pieces (one merge each)
    and three-character pieces made by two merges each (ab+c and a+bc; Gemma's merges often reach a piece by more
    than one split)."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0xA000)]
    pairs: list[str] = []
    by_first: dict[str, list[str]] = {}
    triples: list[str] = []
    made, merges = set(chars), []
    while len(pairs) < (pieces - len(chars)) * 2 // 5:
        a, b = rng.choice(chars), rng.choice(chars)
        if a + b not in made:
            made.add(a + b)
            pairs.append(a + b)
            by_first.setdefault(a, []).append(a + b)
            merges.append((a, b))
    while len(chars) + len(pairs) + len(triples) < pieces:
        ab = rng.choice(pairs)
        bc = rng.choice(by_first.get(ab[1], [""]))
        if bc and ab + bc[1] not in made:
            made.add(ab + bc[1])
            triples.append(ab + bc[1])
            merges += [(ab, bc[1]), (ab[0], bc)]
    return [*chars, *pairs, *triples], merges


def gemma_sized_tokenizer():  # -> PreTrainedTokenizerFast
    return _build_tokenizer(*filler(SIZE - RESERVED - len(_vocabulary())), reserved=RESERVED)
