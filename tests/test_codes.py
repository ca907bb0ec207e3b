"""pack_codes / unpack_codes and input normalisation: layout, round trips, bad input."""
import numpy as np
import pytest
import torch

import dchml
from dchml.retrieval.codes import as_label_bits, as_packed


@pytest.mark.parametrize("bits", [1, 7, 8, 16, 63, 64, 65, 128, 1000])
def test_pack_matches_numpy_packbits_little(bits, device):
    rng = np.random.default_rng(bits)
    x = rng.integers(0, 2, (33, bits)).astype(bool)
    packed = dchml.pack_codes(torch.from_numpy(x).to(device))
    assert packed.dtype == torch.uint8 and packed.device.type == device.type
    expected = np.packbits(x, axis=1, bitorder="little")
    np.testing.assert_array_equal(packed.cpu().numpy(), expected)
    back = dchml.unpack_codes(packed, bits)
    assert back.dtype == torch.float32
    np.testing.assert_array_equal(back.cpu().numpy(), np.where(x, 1.0, -1.0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.bool_])
def test_pack_accepts_every_unpacked_dtype(dtype):
    rng = np.random.default_rng(0)
    pm = rng.choice([-1, 1], (10, 20))
    x = (pm > 0) if dtype is np.bool_ else pm.astype(dtype)
    np.testing.assert_array_equal(dchml.pack_codes(x).numpy(), np.packbits(pm > 0, axis=1, bitorder="little"))


def test_real_values_pack_by_sign_and_zero_is_a_zero_bit():
    x = np.array([[0.3, -0.2, 0.0, 5.0]])
    assert dchml.pack_codes(x).tolist() == [[0b1001]]


def test_non_contiguous_input():
    x = torch.randn(20, 64)[:, ::2]
    np.testing.assert_array_equal(dchml.pack_codes(x).numpy(), np.packbits(x.numpy() > 0, axis=1, bitorder="little"))


def test_uint8_is_read_as_packed_by_the_ranking_functions():
    x = np.packbits(np.random.default_rng(1).integers(0, 2, (5, 24)), axis=1, bitorder="little")
    packed, bits = as_packed(x, "codes")
    assert bits == 24 and packed.shape == (5, 3)
    with pytest.raises(ValueError, match="cannot hold 40-bit"):
        as_packed(x, "codes", 40)


def test_bad_codes_raise_clearly():
    with pytest.raises(ValueError, match="codes contain NaN"):
        dchml.pack_codes(np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        dchml.pack_codes(np.zeros(5))
    with pytest.raises(TypeError, match="unsupported dtype"):
        as_packed(np.zeros((2, 2), dtype=np.complex64), "query")
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        dchml.pack_codes([[1, 0]])
    with pytest.raises(ValueError, match="bits=9 does not fit"):
        dchml.unpack_codes(np.zeros((1, 1), np.uint8), 9)


def test_labels_are_validated():
    packed, c = as_label_bits(np.array([[1, 0, 1], [0, 0, 0]], dtype=np.float32), "query_labels", 2)
    assert c == 3 and packed.tolist() == [[5], [0]]
    with pytest.raises(ValueError, match="query_labels must be 0/1, found the value 2"):
        as_label_bits(np.array([[2, 0]]), "query_labels", 1)
    with pytest.raises(ValueError, match="0/1, found the value nan"):
        as_label_bits(np.array([[np.nan, 0]]), "db_labels", 1)
    # uint8 / int8 / bool labels take a NumPy packing path: same bytes as the general path,
    # and bad values are still named.
    rng = np.random.default_rng(5)
    dense = (rng.random((300, 21)) < 0.3)
    want, _ = as_label_bits(dense.astype(np.float32), "db_labels", 300)
    for dtype in (np.uint8, np.int8, np.bool_):
        got, c = as_label_bits(dense.astype(dtype), "db_labels", 300)
        assert c == 21 and got.dtype == torch.uint8 and torch.equal(got, want)
    with pytest.raises(ValueError, match="query_labels must be 0/1, found the value 3"):
        as_label_bits(np.array([[1, 0], [0, 3]], dtype=np.uint8), "query_labels", 2)
    with pytest.raises(ValueError, match="query_labels must be 0/1, found the value -1"):
        as_label_bits(torch.tensor([[1, -1]], dtype=torch.int8), "query_labels", 1)
    with pytest.raises(ValueError, match="db_labels has 3 rows, but its codes have 2"):
        as_label_bits(np.zeros((3, 4)), "db_labels", 2)
    with pytest.raises(ValueError, match="dense 2-D"):
        as_label_bits(np.zeros(3), "db_labels", 3)
