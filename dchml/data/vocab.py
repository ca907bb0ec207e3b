"""Raw captions and tags -> bag-of-words rows: the tokeniser and `Vocabulary` (top-N terms of the
training items, weighted as binary presence, counts or tf-idf).

A vocabulary is saved as plain data (`to_state()`: strings, lists, floats), so it travels in a
checkpoint read with `torch.load(weights_only=True)` and in a .npz file read with
`allow_pickle=False`, and `dchml encode --modality text --input captions.txt` turns a sentence
into the same row the model was trained on.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

import torch

from .dataset import DataError

WEIGHTINGS = ("binary", "count", "tfidf")
DEFAULT_MAX_TERMS = 2000

# Letters and digits of any script; underscores and punctuation split words.
_WORD = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Words of `text`: Unicode NFKC-normalised, case-folded, split at every character that is not
    a letter or digit (punctuation, spaces, underscores). Non-ASCII words are kept as they are
    ("Café" -> "café", "東京タワー!" -> "東京タワー")."""
    if not isinstance(text, str):
        raise DataError(f"a caption must be a string, got {type(text).__name__}")
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


@dataclass(frozen=True)
class Vocabulary:
    """The terms (most frequent first) and how a caption becomes a row of len(terms) values.

    weighting: "binary" (1 if the term occurs: the public BoW of MIRFlickr / NUS-WIDE), "count",
    or "tfidf" (count x idf, each row scaled to unit L2 norm; idf = ln((1 + n) / (1 + df)) + 1
    over the n fitting items).
    """

    terms: tuple
    weighting: str = "binary"
    idf: tuple | None = None

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise DataError(f"vocabulary weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if not self.terms:
            raise DataError("a vocabulary needs at least one term")
        if len(set(self.terms)) != len(self.terms):
            raise DataError("vocabulary terms must be unique")
        if (self.weighting == "tfidf") != (self.idf is not None):
            raise DataError("idf weights are given with, and only with, weighting 'tfidf'")
        if self.idf is not None and len(self.idf) != len(self.terms):
            raise DataError(f"vocabulary has {len(self.terms)} terms but {len(self.idf)} idf weights")

    def __len__(self) -> int:
        return len(self.terms)

    @classmethod
    def fit(cls, texts, *, max_terms: int = DEFAULT_MAX_TERMS, min_df: int = 1,
            weighting: str = "binary") -> "Vocabulary":
        """The `max_terms` terms found in most of `texts` (at least `min_df` of them); ties broken
        alphabetically, so the result depends only on the texts."""
        for name, value in (("max_terms", max_terms), ("min_df", min_df)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"{name} must be a positive integer, got {value!r}")
        texts = list(texts)
        if not texts:
            raise DataError("cannot fit a vocabulary on zero captions")
        df = Counter()
        for text in texts:
            df.update(set(tokenize(text)))
        ranked = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:max_terms]
        if not ranked:
            raise DataError(f"no word occurs in at least {min_df} of the {len(texts)} fitting captions")
        idf = None
        if weighting == "tfidf":
            idf = tuple(math.log((1 + len(texts)) / (1 + df[t])) + 1.0 for t in ranked)
        return cls(tuple(ranked), weighting, idf)

    def transform(self, texts) -> torch.Tensor:
        """(n, len(self)) float32 rows for `texts` (a caption with no known word gives zeros)."""
        index = {t: j for j, t in enumerate(self.terms)}
        texts = list(texts)
        out = torch.zeros(len(texts), len(self.terms), dtype=torch.float32)
        for i, text in enumerate(texts):
            counts = Counter(index[w] for w in tokenize(text) if w in index)
            if not counts:
                continue
            cols = torch.tensor(list(counts), dtype=torch.int64)
            if self.weighting == "binary":
                out[i, cols] = 1.0
            else:
                out[i, cols] = torch.tensor(list(counts.values()), dtype=torch.float32)
        if self.weighting == "tfidf":
            out *= torch.tensor(self.idf, dtype=torch.float32)
            out /= out.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return out

    def known_words(self, text: str) -> int:
        """How many of the words of `text` are in the vocabulary (0: its row is all zeros)."""
        terms = set(self.terms)
        return sum(w in terms for w in tokenize(text))

    def to_state(self) -> dict:
        """Plain data (str, list, float) for checkpoints and .npz files; from_state inverts it."""
        return {"kind": "vocabulary", "weighting": self.weighting, "terms": list(self.terms),
                "idf": None if self.idf is None else [float(v) for v in self.idf]}

    @classmethod
    def from_state(cls, state) -> "Vocabulary":
        if not isinstance(state, dict) or state.get("kind") != "vocabulary":
            raise DataError("not a saved vocabulary (expected a dict with kind 'vocabulary')")
        terms = state.get("terms")
        if not isinstance(terms, (list, tuple)) or not all(isinstance(t, str) for t in terms):
            raise DataError("a saved vocabulary's terms must be a list of strings")
        idf = state.get("idf")
        return cls(tuple(terms), state.get("weighting", "binary"), None if idf is None else tuple(map(float, idf)))
