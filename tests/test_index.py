"""HammingIndex: search, MAP, chunked memory-mapped databases, save/load round trip and errors."""
import numpy as np
import pytest
import torch

import dchml
import dchml.retrieval.index as index_module

from hamming_reference import correlated_dataset, per_query_ap, ranking


def _data(seed=0, bits=24, ndb=700):
    rng = np.random.default_rng(seed)
    return correlated_dataset(rng, 15, ndb, bits, n_labels=5)


def test_search_and_map_match_the_functional_api(device):
    q, b, ql, bl = _data()
    idx = dchml.HammingIndex(24).to(device)
    idx.add(b[:300]).add(torch.from_numpy(b[300:]).to(device))
    assert idx.ntotal == 700
    dist, ind = idx.search(q, 50)
    np.testing.assert_array_equal(ind.cpu().numpy(), ranking(q, b)[:, :50])
    for ties in ("index", "expected"):
        got = idx.mean_average_precision(q, ql, bl, topk=100, ties=ties)
        want = dchml.mean_average_precision(q, b, ql, bl, topk=100, ties=ties)
        assert got == pytest.approx(want, abs=1e-12)


def test_memory_mapped_database_is_searched_in_chunks(tmp_path, monkeypatch):
    q, b, ql, bl = _data(1)
    path = tmp_path / "db.npy"
    np.save(path, np.packbits(b, axis=1, bitorder="little"))
    monkeypatch.setattr(index_module, "_CHUNK_ROWS", 128)  # force many chunks
    idx = dchml.HammingIndex(24).add(np.load(path, mmap_mode="r"))
    _, ind = idx.search(q, 200)
    np.testing.assert_array_equal(ind.numpy(), ranking(q, b)[:, :200])
    _, ap = idx.mean_average_precision(q, ql, bl, topk=150, return_per_query=True)
    np.testing.assert_allclose(ap.numpy(), per_query_ap(q, b, ql, bl, 150), atol=1e-12)
    exp = idx.mean_average_precision(q, ql, bl, topk=150, ties="expected")
    assert exp == pytest.approx(dchml.mean_average_precision(q, b, ql, bl, topk=150, ties="expected"), abs=1e-12)


def test_save_load_round_trip_is_readable_by_numpy(tmp_path):
    _, b, _, _ = _data(2, bits=13)
    idx = dchml.HammingIndex(13).add(b)
    path = tmp_path / "index.npz"
    idx.save(path)
    with np.load(path, allow_pickle=False) as data:
        assert int(data["bits"]) == 13 and int(data["version"]) == 1
        np.testing.assert_array_equal(data["codes"], np.packbits(b, axis=1, bitorder="little"))
    again = dchml.HammingIndex.load(path)
    assert again.bits == 13 and again.ntotal == len(b)
    np.testing.assert_array_equal(again.search(b[:4], 5)[1].numpy(), idx.search(b[:4], 5)[1].numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]  # no temp file left behind


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index file"):
        dchml.HammingIndex.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable dchml index"):
        dchml.HammingIndex.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, codes=np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="missing"):
        dchml.HammingIndex.load(other)


def test_index_bad_input():
    with pytest.raises(ValueError, match="bits must be an int"):
        dchml.HammingIndex(0)
    idx = dchml.HammingIndex(16).add(np.zeros((4, 16)))
    with pytest.raises(ValueError, match="expected 16"):
        idx.add(np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        idx.search(np.zeros((1, 16)), 5)
    with pytest.raises(ValueError, match="ties must be"):
        idx.mean_average_precision(np.zeros((1, 16)), np.ones((1, 2)), np.ones((4, 2)), ties="x")
