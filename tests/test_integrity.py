"""Every file dchml writes and reads back is checked before it is used (dchml/io/integrity.py):
bytes flipped past the first KiB of a checkpoint, an index or an .npz data file are refused in
one line naming the file; an intact file loads. (Features files, partial chunks and `dchml eval`:
tests/test_features.py, tests/test_faults.py.)"""
import struct
import zipfile

import pytest
import torch

import dchml
from dchml.data import DataError, load_dataset, make_synthetic, save_npz
from dchml.io.integrity import DamagedFileError, verify_zip
from dchml.method.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from file_damage import WHERE, flip


@pytest.fixture(scope="module")
def checkpoint_state():
    model = dchml.models.CrossModalHashModel(16, 5, 40, 24, proxy_hidden=32, image_hidden=64, text_hidden=64)
    return {"epoch": 1, "config": {}, "model_spec": model.spec(), "model": model.state_dict(), "history": [],
            "data": {"name": "t"}}


def test_intact_files_pass(tmp_path, checkpoint_state):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint_state, str(path))
    verify_zip(path, "checkpoint", "")
    assert load_checkpoint(str(path))["epoch"] == 1


@pytest.mark.parametrize("where", WHERE)
def test_damaged_checkpoint_is_refused_by_name(tmp_path, checkpoint_state, where):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint_state, str(path))
    flip(path, where)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path} is damaged \(.+\); restore it") as info:
        load_checkpoint(str(path))
    assert "\n" not in str(info.value)


def test_checksum_mismatch_names_the_member(tmp_path, checkpoint_state):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(checkpoint_state, str(path))
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    with open(path, "r+b") as f:  # one byte of that tensor's data, past its local header
        f.seek(largest.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        f.seek(largest.header_offset + 30 + name_length + extra_length + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CheckpointError, match=rf"is damaged \(checksum mismatch in {largest.filename}\)"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("where", WHERE)
def test_damaged_index_is_refused_by_name(tmp_path, where):
    path = tmp_path / "index.npz"
    dchml.HammingIndex(64).add(torch.randn(500, 64)).save(path)
    flip(path, where)
    with pytest.raises(DamagedFileError, match=rf"^index {path} is damaged \(.+\); save it again"):
        dchml.HammingIndex.load(path)


@pytest.mark.parametrize("where", WHERE)
def test_damaged_npz_data_file_is_refused_by_name(tmp_path, where):
    path = tmp_path / "data.npz"
    save_npz(make_synthetic(n=200, n_labels=5, image_dim=16, text_dim=20, n_query=20, n_train=100, seed=0), path)
    load_dataset(str(path))  # intact: loads
    flip(path, where)
    with pytest.raises(DataError, match=rf"^data file {path} is damaged \(.+\); restore it"):
        load_dataset(str(path))
