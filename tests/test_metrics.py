"""Ranking ops and metrics against plain NumPy references and faiss-cpu (docs/spec.md §7)."""
import re

import numpy as np
import pytest
import torch

import dchml
from dchml import ops

from hamming_reference import correlated_dataset, distances, expected_ap_brute, per_query_ap, ranking

ISAS = ["portable", "avx2", "avx512"]


@pytest.fixture
def isa(request):
    """Force a SIMD path of the CPU engine for one test (clamped to what this CPU supports)."""
    ops.hamming_isa(request.param)
    yield ops.hamming_isa()
    ops.hamming_isa("best")


def _t(x, device):
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("bits", [7, 8, 16, 32, 64, 65, 128, 256, 300])
def test_distance_histogram_topk_match_reference(bits, isa, device):
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2, (23, bits))
    b = rng.integers(0, 2, (3000, bits))
    ref = distances(q, b)
    qt, bt = _t(q, device), _t(b, device)
    np.testing.assert_array_equal(dchml.hamming_distance(qt, bt).cpu().numpy(), ref)
    hist = dchml.hamming_histogram(qt, bt).cpu().numpy()
    assert hist.shape == (23, bits + 1) and hist.dtype == np.int64
    for i in range(23):
        np.testing.assert_array_equal(hist[i], np.bincount(ref[i].astype(int), minlength=bits + 1))
    order = ranking(q, b)
    for k in (1, 37, 3000):
        dist, index = dchml.hamming_topk(dchml.pack_codes(qt), dchml.pack_codes(bt), k)
        assert dist.dtype == torch.int32 and index.dtype == torch.int64
        np.testing.assert_array_equal(index.cpu().numpy(), order[:, :k])
        np.testing.assert_array_equal(dist.cpu().numpy(), np.take_along_axis(ref, order[:, :k], 1))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("bits", [16, 64])
def test_fast_path_on_a_large_database_matches_reference(bits, isa):
    # Large enough (>= 16384 rows, k <= ndb/8) for the sampled-threshold single pass, including
    # the heavy-tie fallback at 16 bits.
    rng = np.random.default_rng(7)
    q, b, _, _ = correlated_dataset(rng, 40, 40000, bits)
    order = ranking(q, b)
    ref = distances(q, b)
    for k in (1, 500, 5000):
        dist, index = dchml.hamming_topk(q, b, k)
        np.testing.assert_array_equal(index.numpy(), order[:, :k])
        np.testing.assert_array_equal(dist.numpy(), np.take_along_axis(ref, order[:, :k], 1))


@pytest.mark.parametrize("bits", [7, 8, 16, 64, 65, 128])
@pytest.mark.parametrize("multi", [True, False])
def test_map_matches_stable_argsort_reference(bits, multi, device):
    rng = np.random.default_rng(bits * 2 + multi)
    q, b, ql, bl = correlated_dataset(rng, 30, 6000, bits, n_labels=7, multi=multi)
    for topk in (1, 100, 5000, None):
        ref = per_query_ap(q, b, ql, bl, topk)
        mean, ap = dchml.mean_average_precision(_t(q, device), _t(b, device), ql, bl, topk=topk,
                                                return_per_query=True)
        np.testing.assert_allclose(ap.cpu().numpy(), ref, rtol=0, atol=1e-12)
        assert mean == pytest.approx(ref.mean(), abs=1e-12)


def test_map_on_fast_path_sizes_matches_reference():
    rng = np.random.default_rng(3)
    q, b, ql, bl = correlated_dataset(rng, 25, 30000, 64, n_labels=21)
    ref = per_query_ap(q, b, ql, bl, 1000)
    _, ap = dchml.mean_average_precision(dchml.pack_codes(q), dchml.pack_codes(b), ql, bl, topk=1000,
                                         return_per_query=True)
    np.testing.assert_allclose(ap.numpy(), ref, rtol=0, atol=1e-12)


def test_query_without_relevant_items_scores_zero_and_counts():
    q = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    b = np.array([[1, 1, 1, 0], [0, 0, 0, 0]])
    ql = np.array([[1, 0, 0], [0, 0, 1]])
    bl = np.array([[1, 0, 0], [1, 1, 0]])
    mean, ap = dchml.mean_average_precision(q, b, ql, bl, topk=2, return_per_query=True)
    assert ap.tolist() == [1.0, 0.0] and mean == 0.5


@pytest.mark.parametrize("seed", range(12))
def test_expected_ties_match_brute_force_over_all_orders(seed, device):
    rng = np.random.default_rng(seed)
    bits = 3
    n = 7
    q = rng.integers(0, 2, (4, bits))
    b = rng.integers(0, 2, (n, bits))
    ql = rng.integers(0, 2, (4, 3))
    bl = rng.integers(0, 2, (n, 3))
    ref_dist = distances(q, b)
    rel = (ql @ bl.T) > 0
    for topk in (1, 2, 3, 5, 7):
        _, ap = dchml.mean_average_precision(_t(q, device), _t(b, device), ql, bl, topk=topk,
                                             return_per_query=True, ties="expected")
        expected = [expected_ap_brute(ref_dist[i], rel[i], topk) for i in range(4)]
        np.testing.assert_allclose(ap.cpu().numpy(), expected, rtol=0, atol=1e-12)


def test_expected_ties_equal_index_ties_when_no_ties():
    # 64-bit random codes against a tiny database: distinct distances per query, no tie at all.
    rng = np.random.default_rng(5)
    q = rng.integers(0, 2, (3, 64))
    b = np.array([[1] * d + [0] * (64 - d) for d in range(0, 64, 5)])
    q = np.zeros((3, 64), dtype=np.int64)
    ql = rng.integers(0, 2, (3, 4))
    bl = rng.integers(0, 2, (len(b), 4))
    a = dchml.mean_average_precision(q[:1], b, ql[:1], bl, topk=6)
    e = dchml.mean_average_precision(q[:1], b, ql[:1], bl, topk=6, ties="expected")
    assert a == pytest.approx(e, abs=1e-14)


def test_against_faiss_binary_flat():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(11)
    q, b, _, _ = correlated_dataset(rng, 50, 20000, 64)
    qp = np.packbits(q, axis=1, bitorder="little")
    bp = np.packbits(b, axis=1, bitorder="little")
    index = faiss.IndexBinaryFlat(64)
    index.add(bp)
    k = 300
    fd, fi = index.search(qp, k)
    dist, idx = dchml.hamming_topk(qp, bp, k)
    np.testing.assert_array_equal(dist.numpy(), fd)
    # Identical neighbours wherever no tie straddles the cut: compare the rows at d < d_k.
    full = distances(q, b)
    for i in range(len(q)):
        inside = dist[i].numpy() < dist[i, -1].item()
        assert set(idx[i].numpy()[inside]) == set(fi[i][inside])
        assert np.all(full[i, idx[i].numpy()] == dist[i].numpy())


def test_precision_at_n_pr_curve_ndcg_match_reference(device):
    rng = np.random.default_rng(2)
    bits = 16
    q, b, ql, bl = correlated_dataset(rng, 20, 800, bits, n_labels=6)
    order = ranking(q, b)
    ref_d = distances(q, b)
    rel = (ql @ bl.T) > 0
    ns = [1, 10, 100, 800]
    p = dchml.precision_at_n(_t(q, device), _t(b, device), ql, bl, ns)
    ref_p = [np.mean([rel[i, order[i, :n]].mean() for i in range(20)]) for n in ns]
    assert p.dtype == torch.float64
    np.testing.assert_allclose(p.numpy(), ref_p, atol=1e-12)

    for average in ("macro", "micro"):
        prec, rec = dchml.pr_curve(_t(q, device), _t(b, device), ql, bl, average=average)
        assert prec.shape == (bits + 1,) and rec.shape == (bits + 1,)
        ret = np.stack([(ref_d <= r) for r in range(bits + 1)])  # (r, nq, ndb)
        hit = (ret & rel[None]).sum(2)
        cnt = ret.sum(2)
        tot = rel.sum(1)
        if average == "macro":
            rp = np.where(cnt > 0, hit / np.maximum(cnt, 1), 0).mean(1)
            rr = np.where(tot > 0, hit / np.maximum(tot, 1), 0).mean(1)
        else:
            rp = np.where(cnt.sum(1) > 0, hit.sum(1) / np.maximum(cnt.sum(1), 1), 0)
            rr = hit.sum(1) / tot.sum()
        np.testing.assert_allclose(prec.numpy(), rp, atol=1e-12)
        np.testing.assert_allclose(rec.numpy(), rr, atol=1e-12)
    assert rec[-1] == pytest.approx(1.0)

    k = 50
    shared = ql @ bl.T
    disc = 1 / np.log2(np.arange(2, k + 2))
    vals = []
    for i in range(20):
        dcg = ((2.0 ** shared[i, order[i, :k]] - 1) * disc).sum()
        idcg = ((2.0 ** np.sort(shared[i])[::-1][:k] - 1) * disc).sum()
        vals.append(dcg / idcg if idcg > 0 else 0)
    assert dchml.ndcg_at_k(_t(q, device), _t(b, device), ql, bl, k) == pytest.approx(np.mean(vals), abs=1e-12)


def test_empty_database_side_cases():
    q = np.zeros((0, 1), dtype=np.uint8)
    b = np.zeros((5, 1), dtype=np.uint8)
    assert dchml.hamming_histogram(q, b).shape == (0, 9)
    assert dchml.hamming_topk(q, b, 3)[0].shape == (0, 3)


def test_bad_input_raises_clearly():
    q = np.zeros((2, 16))
    b = np.zeros((5, 16))
    labels_q, labels_b = np.zeros((2, 3)), np.zeros((5, 3))
    with pytest.raises(ValueError, match="code lengths differ: 16 vs 8"):
        dchml.hamming_distance(q, np.zeros((5, 8)))
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        dchml.hamming_topk(q, b, 6)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\]"):
        dchml.hamming_topk(q, b, 0)
    with pytest.raises(ValueError, match="topk must be a positive int or None"):
        dchml.mean_average_precision(q, b, labels_q, labels_b, topk=0)
    with pytest.raises(ValueError, match="ties must be"):
        dchml.mean_average_precision(q, b, labels_q, labels_b, ties="random")
    with pytest.raises(ValueError, match="db_labels has 4 rows, but its codes have 5"):
        dchml.mean_average_precision(q, b, labels_q, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="different numbers of categories: 3 vs 2"):
        dchml.mean_average_precision(q, b, labels_q, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="query contains NaN"):
        dchml.hamming_distance(np.full((1, 16), np.nan), b)
    with pytest.raises(ValueError, match="average must be"):
        dchml.pr_curve(q, b, labels_q, labels_b, average="weighted")
    with pytest.raises(ValueError, match=r"every N in ns must be in \[1, 5\]"):
        dchml.precision_at_n(q, b, labels_q, labels_b, [6])


def test_operators_raise_value_and_type_errors_like_the_loss_operators():
    q = dchml.pack_codes(torch.randn(3, 16))
    b = dchml.pack_codes(torch.randn(5, 16))
    lq, lb = torch.ones(3, 1, dtype=torch.uint8), torch.ones(5, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"k must be in \[1, 5\] \(the database size\), got 6"):
        torch.ops.dchml.hamming_topk(q, b, 16, 6)
    with pytest.raises(ValueError, match="db has 2 bytes per row, but 24 bits need 3"):
        torch.ops.dchml.hamming_distance(dchml.pack_codes(torch.randn(3, 24)), b, 24)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 65535\], got 0"):
        torch.ops.dchml.hamming_histogram(q, b, 0)
    with pytest.raises(TypeError, match="query must be packed uint8, got Float"):
        torch.ops.dchml.hamming_distance(q.float(), b, 16)
    with pytest.raises(ValueError, match="db_labels has 4 rows, the codes have 5"):
        torch.ops.dchml.hamming_average_precision(q, b, 16, 3, lq, lb[:4], False)
    with pytest.raises(ValueError, match="query_labels and db_labels differ in width: 1 vs 2 bytes"):
        torch.ops.dchml.hamming_histogram_relevant(q, b, 16, lq, torch.ones(5, 2, dtype=torch.uint8))
    with pytest.raises(TypeError, match="query_labels must be packed uint8"):
        torch.ops.dchml.hamming_histogram_relevant(q, b, 16, lq.bool(), lb)
    with pytest.raises(ValueError, match="isa must be"):
        dchml.ops.hamming_isa("sse9")


def test_map_functions_take_options_by_keyword_with_the_same_checks():
    q, b = np.zeros((2, 16)), np.zeros((5, 16))
    lq, lb = np.ones((2, 3)), np.ones((5, 3))
    index = dchml.HammingIndex(16).add(b)
    calls = (lambda **kw: dchml.mean_average_precision(q, b, lq, lb, **kw),
             lambda **kw: index.mean_average_precision(q, lq, lb, **kw))
    for call in calls:
        assert call(topk=3, ties="expected") == pytest.approx(1.0)
        with pytest.raises(ValueError, match="topk must be a positive int or None, got 0"):
            call(topk=0)
        with pytest.raises(TypeError, match="topk must be a positive int or None, got 2.5"):
            call(topk=2.5)
        with pytest.raises(TypeError, match="topk must be a positive int or None, got True"):
            call(topk=True)
        with pytest.raises(ValueError, match="ties must be 'index' or 'expected', got 'x'"):
            call(ties="x")
    with pytest.raises(TypeError, match="positional"):
        dchml.mean_average_precision(q, b, lq, lb, 3)
    with pytest.raises(TypeError, match="positional"):
        index.mean_average_precision(q, lq, lb, 3)
    with pytest.raises(TypeError, match="positional"):
        dchml.distributed.mean_average_precision(q, b, lq, lb, 3)


def test_ranking_stats_are_reported_per_call(capfd, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    db = dchml.pack_codes(torch.randn(20000, 64, generator=gen))
    labels = torch.randint(0, 2, (20000, 5), generator=gen)
    labels[:, 0] = 1
    monkeypatch.setenv("DCHML_HAMMING_STATS", "1")
    for nq in (7, 12):
        dchml.mean_average_precision(db[:nq], db, labels[:nq], labels, topk=100)
        report = capfd.readouterr().err
        counts = [int(x) for x in re.search(r"fast (\d+), fallback (\d+), exact (\d+)", report).groups()]
        assert f"nq={nq} " in report and sum(counts) == nq


@pytest.mark.skipif(dchml.cuda_built(), reason="checks the CPU-only build's message")
def test_cuda_tensor_on_cpu_only_build_is_a_clear_error():
    meta = torch.zeros(2, 2, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="query is on device meta"):
        ops.hamming_topk(meta, meta, 16, 1)


def test_ops_pass_opcheck():
    q = dchml.pack_codes(torch.randn(5, 40))
    b = dchml.pack_codes(torch.randn(50, 40))
    lq = torch.randint(0, 2, (5, 1), dtype=torch.uint8)
    lb = torch.randint(0, 2, (50, 1), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.dchml.hamming_topk, (q, b, 40, 7))
    torch.library.opcheck(torch.ops.dchml.hamming_histogram, (q, b, 40))
    torch.library.opcheck(torch.ops.dchml.hamming_distance, (q, b, 40))
    torch.library.opcheck(torch.ops.dchml.hamming_average_precision, (q, b, 40, 9, lq, lb, True))
    torch.library.opcheck(torch.ops.dchml.hamming_histogram_relevant, (q, b, 40, lq, lb))


def test_topk_compiles_fullgraph():
    q = dchml.pack_codes(torch.randn(4, 64))
    b = dchml.pack_codes(torch.randn(100, 64))

    def nearest(x, y):
        dist, index = torch.ops.dchml.hamming_topk(x, y, 64, 5)
        return dist.sum(dim=1), index

    compiled = torch.compile(nearest, fullgraph=True, backend="eager")
    got = compiled(q, b)
    want = nearest(q, b)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
