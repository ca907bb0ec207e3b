"""The built-in synthetic cross-modal data set (the default of `dchml demo`): multi-label items
with label co-occurrence, dense image features and sparse bag-of-words text, both generated from
the labels with noise (or one of them, for single-modality data). Deterministic from a seed
(numpy default_rng, never global state). The generative model is documented in docs/data.md; keep the two in step."""
from __future__ import annotations

import numpy as np
import torch

from .dataset import CrossModalData, DataError
from .splits import default_split_sizes, paper_split


def make_synthetic(n: int = 12_000, n_labels: int = 21, image_dim: int = 512, text_dim: int = 1000, *,
                   seed: int = 0, n_query: int | None = None, n_train: int | None = None,
                   n_topics: int | None = None, label_power: float = 0.8, mean_extra_labels: float = 1.0,
                   max_labels: int = 5, latent_dim: int = 64, image_noise: float = 1.5,
                   label_noise: float = 0.25,
                   nuisance_scale: float = 1.5, words_per_item: tuple[int, int] = (20, 40),
                   words_per_label: int = 40, text_background: float = 0.6, text_counts: bool = False,
                   modalities: tuple = ("image", "text"), name: str = "synthetic") -> CrossModalData:
    """A synthetic NUS-WIDE-shaped cross-modal data set; see docs/data.md for the model.

    Labels: items belong to one of `n_topics` latent topics (default max(2, n_labels // 4)); each
    topic favours a few labels, so labels co-occur; label frequencies follow a power law
    (weight (rank + 1) ** -label_power); 1 + Poisson(mean_extra_labels) labels per item, at most
    `max_labels`, drawn without replacement.
    Image (n, image_dim) float32: the mean of the item's per-label prototypes in a
    `latent_dim`-d space plus Gaussian noise (`image_noise`), through a random two-layer ReLU map,
    plus a label-independent nuisance direction of scale `nuisance_scale` (it fools unsupervised
    hashing), standardised per feature.
    Text (n, text_dim) float32: 20..40 word draws per item (`words_per_item`); each draw is from
    the background (Zipf) distribution with probability `text_background`, otherwise from the
    word distribution of one of the item's labels (each label prefers `words_per_label` words).
    Binary presence by default (NUS-WIDE's tags are 0/1), counts with text_counts=True.
    Split: `n_query` queries, the rest is the database, `n_train` training items from the
    database (None: 2000 queries by splits.default_split_sizes for the default n, and half the
    database as training items: 5,000 of 10,000, which keeps the demo within minutes).
    """
    if n < 2 or n_labels < 1 or image_dim < 1 or text_dim < 1:
        raise DataError(f"synthetic: need n >= 2, n_labels, image_dim, text_dim >= 1; got n={n}, "
                        f"n_labels={n_labels}, image_dim={image_dim}, text_dim={text_dim}")
    lo, hi = words_per_item
    if not 1 <= lo <= hi:
        raise DataError(f"synthetic: words_per_item must be (lo, hi) with 1 <= lo <= hi, got {words_per_item}")
    if not 0.0 <= text_background <= 1.0:
        raise DataError(f"synthetic: text_background must be in [0, 1], got {text_background}")
    if image_noise < 0 or nuisance_scale < 0 or mean_extra_labels < 0 or max_labels < 1:
        raise DataError("synthetic: image_noise, nuisance_scale and mean_extra_labels must be >= 0, "
                        f"max_labels >= 1; got {image_noise}, {nuisance_scale}, {mean_extra_labels}, {max_labels}")
    wanted = tuple(modalities) if isinstance(modalities, (tuple, list)) else (modalities,)
    if not wanted or not set(wanted) <= {"image", "text"} or len(set(wanted)) != len(wanted):
        raise DataError(f"synthetic: modalities must be one or both of 'image', 'text', got {modalities!r}")
    # Independent streams per part so that changing, e.g., the text knobs leaves labels unchanged.
    root = np.random.SeedSequence(seed)
    r_lab, r_img, r_txt, r_split = (np.random.default_rng(s) for s in root.spawn(4))

    labels = topic_labels(r_lab, n, n_labels, n_topics or max(2, n_labels // 4), label_power,
                     mean_extra_labels, min(max_labels, n_labels))
    image = text = None
    if "image" in wanted:
        image = torch.from_numpy(image_features(r_img, corrupt_labels(r_img, labels, label_noise), image_dim,
                                                latent_dim, image_noise, nuisance_scale))
    if "text" in wanted:
        text = torch.from_numpy(text_features(r_txt, corrupt_labels(r_txt, labels, label_noise), text_dim, lo, hi,
                                              words_per_label, text_background, text_counts))
    split_seed = int(r_split.integers(2**63 - 1))
    if n_train is None:
        n_query_used = default_split_sizes(n)[0] if n_query is None else n_query
        n_train = max(1, (n - n_query_used) // 2)
    q, r, t = paper_split(n, seed=split_seed, n_query=n_query, n_train=n_train)
    return CrossModalData(image=image, text=text, labels=torch.from_numpy(labels), query_idx=q, retrieval_idx=r,
                          train_idx=t, name=name)


def topic_labels(rng, n, c, n_topics, power, mean_extra, max_labels) -> np.ndarray:
    freq = (np.arange(c) + 1.0) ** -power
    rng.shuffle(freq)  # no reason for label 0 to be the most frequent
    # Each topic strongly prefers a few labels (about 2c / n_topics), weakly allows the rest.
    affinity = np.full((n_topics, c), 0.05)
    core = max(1, (2 * c) // n_topics)
    for z in range(n_topics):
        affinity[z, rng.choice(c, size=min(core, c), replace=False)] = 1.0
    topic = rng.integers(n_topics, size=n)
    count = np.minimum(1 + rng.poisson(mean_extra, size=n), max_labels)
    # Weighted sampling without replacement: Gumbel top-k on log weights.
    keys = np.log(freq * affinity[topic]) + rng.gumbel(size=(n, c))
    order = np.argsort(-keys, axis=1)
    labels = np.zeros((n, c), dtype=np.float32)
    take = np.arange(c)[None, :] < count[:, None]
    rows = np.repeat(np.arange(n), count)
    labels[rows, order[take]] = 1.0
    return labels


def corrupt_labels(rng, labels, p) -> np.ndarray:
    """The labels a modality actually shows: each true label is hidden with probability p and
    one spurious label appears with probability p (independently per modality), so neither
    modality determines the label set and no method reaches a perfect MAP. At least one label
    always stays visible."""
    if p <= 0:
        return labels
    n, c = labels.shape
    shown = labels * (rng.random((n, c)) >= p)
    lost = shown.sum(1) == 0
    # Rows that lost every label keep one of their true labels (the first, chosen at random order).
    keys = np.where(labels > 0, rng.random((n, c)), -1.0)
    shown[lost, keys[lost].argmax(1)] = 1.0
    spurious = rng.random(n) < p
    shown[np.nonzero(spurious)[0], rng.integers(c, size=int(spurious.sum()))] = 1.0
    return shown.astype(np.float32)


def image_features(rng, labels, d, h, noise, nuisance) -> np.ndarray:
    n, c = labels.shape
    protos = rng.standard_normal((c, h))
    latent = (labels @ protos) / np.sqrt(labels.sum(1, keepdims=True))
    latent += noise * rng.standard_normal((n, h))
    w1 = rng.standard_normal((h, d)) / np.sqrt(h)
    b1 = 0.5 * rng.standard_normal(d)
    w2 = rng.standard_normal((d, d)) / np.sqrt(d)
    x = np.maximum(latent @ w1 + b1, 0.0) @ w2
    # A few strong label-free directions (pose, lighting): they dominate unsupervised projections.
    styles = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d))
    x += nuisance * styles
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x.astype(np.float32)


def text_features(rng, labels, v, lo, hi, words_per_label, background, counts) -> np.ndarray:
    n, c = labels.shape
    # Word distributions: background is Zipf over the vocabulary; each label puts most of its mass
    # on a few preferred words (which may overlap between labels) and a little everywhere.
    bg = 1.0 / (np.arange(v) + 1.0)
    rng.shuffle(bg)
    dists = np.full((c + 1, v), 0.02 / v)
    for l in range(c):
        pref = rng.choice(v, size=min(words_per_label, v), replace=False)
        dists[l, pref] += 0.98 * rng.dirichlet(np.ones(len(pref)))
    dists[c] = bg
    cdf = np.cumsum(dists / dists.sum(1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0

    n_words = rng.integers(lo, hi + 1, size=n)
    w_max = int(n_words.max())
    # For each draw: which component (a label of the item, or background = c).
    lab_lists = np.argsort(-labels, axis=1, kind="stable")  # the item's labels come first
    n_lab = labels.sum(1).astype(np.int64)
    pick = np.minimum((rng.random((n, w_max)) * n_lab[:, None]).astype(np.int64), n_lab[:, None] - 1)
    comp = np.take_along_axis(lab_lists, pick, axis=1)
    comp[rng.random((n, w_max)) < background] = c
    valid = np.arange(w_max)[None, :] < n_words[:, None]
    u = rng.random((n, w_max))
    text = np.zeros((n, v), dtype=np.float32)
    for k in range(c + 1):
        sel = valid & (comp == k)
        rows = np.nonzero(sel)[0]
        words = np.minimum(np.searchsorted(cdf[k], u[sel], side="right"), v - 1)
        np.add.at(text, (rows, words), 1.0)
    if not counts:
        text = (text > 0).astype(np.float32)
    return text
