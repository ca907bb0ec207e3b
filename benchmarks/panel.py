"""A panel of generated cross-modal data sets shaped like the public feature files, for choosing
and checking the default training recipe on more than one kind of data.

Each set is built from the label model of dchml's synthetic set (multi-label items with
co-occurring, power-law labels, and per-modality label noise) and then rendered in the form a
public release ships its features in:

| name            | like                        | image                                   | text                         |
|-----------------|-----------------------------|-----------------------------------------|------------------------------|
| builtin         | dchml's own synthetic set   | 512-d standardised dense features       | 1000-d binary tags           |
| bovw-l1         | NUS-WIDE / MIRFlickr BoVW   | 500-d SIFT visual-word histograms, L1   | 1000-d binary tags           |
| cnn-relu        | fc7 CNN features            | 1024-d ReLU activations, 0-50, heavy    | 1386-d binary tags (24 lab.) |
| counts-tfidf    | MS-COCO BoW (80 labels)     | 1024-d ReLU activations                 | 2000-d raw term counts       |
| tfidf           | IAPR TC-12 (255 labels)     | 512-d dense GIST-like features          | 2912-d tf-idf                |
| wiki-topics     | Wikipedia (single-label)    | 128-d BoVW counts                       | 10-d LDA topic proportions   |

Every set is written at the scale real files use (not standardised); `scaled(data, image=a,
text=b)` multiplies a modality's features, for the scale-robustness check.
"""
from __future__ import annotations

import numpy as np
import torch

from dchml.data import CrossModalData, make_synthetic, paper_split
from dchml.data.synthetic import corrupt_labels, image_features, text_features, topic_labels

PANEL = ("builtin", "bovw-l1", "cnn-relu", "counts-tfidf", "tfidf", "wiki-topics")


def _base_labels(rng, n, c, *, single=False):
    if single:
        return topic_labels(rng, n, c, max(2, c // 2), 0.3, 0.0, 1)
    return topic_labels(rng, n, c, max(2, c // 4), 0.8, 1.0, min(5, c))


def _relu_heavy(rng, labels, d):
    """Non-negative heavy-tailed activations (values 0..~50, ~60% zeros), like ReLU fc7."""
    dense = image_features(rng, labels, d, 64, 1.5, 1.5)
    x = np.maximum(dense - 0.3, 0.0) ** 1.6 * 6.0
    return x.astype(np.float32)


def _bovw(rng, labels, words, lo, hi, l1):
    counts = text_features(rng, labels, words, lo, hi, 60, 0.75, True)
    if l1:
        counts = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    return counts.astype(np.float32)


def _tfidf(counts):
    df = (counts > 0).sum(0)
    idf = np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0
    return (counts * idf).astype(np.float32)


def _topics(rng, labels, k=10):
    """k-d topic proportions (rows sum to 1) from a label-dependent Dirichlet, like LDA output."""
    n, c = labels.shape
    prefs = rng.dirichlet(np.full(k, 0.3), size=c) * 8.0 + 0.05
    alpha = (labels @ prefs) / labels.sum(1, keepdims=True)
    props = np.stack([rng.dirichlet(a) for a in alpha])
    return props.astype(np.float32)


def make_panel_set(name: str, seed: int = 0) -> CrossModalData:
    if name == "builtin":
        return make_synthetic(seed=seed)
    r_lab, r_img, r_txt, r_split = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, PANEL.index(name)]).spawn(4))
    if name == "bovw-l1":
        n, c = 4000, 21
        labels = _base_labels(r_lab, n, c)
        image = _bovw(r_img, corrupt_labels(r_img, labels, 0.3), 500, 150, 400, l1=True)
        text = text_features(r_txt, corrupt_labels(r_txt, labels, 0.25), 1000, 8, 20, 40, 0.6, False)
    elif name == "cnn-relu":
        n, c = 4000, 24
        labels = _base_labels(r_lab, n, c)
        image = _relu_heavy(r_img, corrupt_labels(r_img, labels, 0.25), 1024)
        text = text_features(r_txt, corrupt_labels(r_txt, labels, 0.25), 1386, 5, 15, 40, 0.6, False)
    elif name == "counts-tfidf":
        n, c = 4000, 80
        labels = _base_labels(r_lab, n, c)
        image = _relu_heavy(r_img, corrupt_labels(r_img, labels, 0.25), 1024)
        text = text_features(r_txt, corrupt_labels(r_txt, labels, 0.25), 2000, 30, 120, 30, 0.6, True)
    elif name == "tfidf":
        n, c = 4000, 255
        labels = _base_labels(r_lab, n, c)
        image = image_features(r_img, corrupt_labels(r_img, labels, 0.25), 512, 64, 1.5, 1.5) * 0.08 + 0.2
        text = _tfidf(text_features(r_txt, corrupt_labels(r_txt, labels, 0.25), 2912, 10, 40, 30, 0.6, True))
    elif name == "wiki-topics":
        n, c = 2866, 10
        labels = _base_labels(r_lab, n, c, single=True)
        image = _bovw(r_img, corrupt_labels(r_img, labels, 0.3), 128, 100, 300, l1=False)
        text = _topics(r_txt, corrupt_labels(r_txt, labels, 0.3))
    else:
        raise ValueError(f"unknown panel set {name!r}; choose from {', '.join(PANEL)}")
    q, r, t = paper_split(n, seed=int(r_split.integers(2**31)))
    return CrossModalData(image=torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                          text=torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32)),
                          labels=torch.from_numpy(labels), query_idx=q, retrieval_idx=r, train_idx=t, name=name)


def scaled(data: CrossModalData, *, image: float = 1.0, text: float = 1.0) -> CrossModalData:
    return CrossModalData(image=data.image * image, text=data.text * text, labels=data.labels,
                          query_idx=data.query_idx, retrieval_idx=data.retrieval_idx, train_idx=data.train_idx,
                          name=f"{data.name} (image x{image:g}, text x{text:g})")
