"""Images streamed from disk (dchml.data.images): the same pixels as reading them into memory,
worker processes, augmentation, missing and corrupt files, DCMH's v7.3 `IAll` read lazily, and
the index.mat / caption.mat / label.mat layout."""
import h5py
import numpy as np
import pytest
import scipy.io
import torch

from dchml.data import DataError, load_dataset
from dchml.data.images import HDF5Reader, ImageReadError, ImageSource, training_batches
from dchml.app.experiment import data_summary

from image_data import captions, corrupt, make_textlist, pixels

SIZE = 32


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_textlist(tmp_path_factory.mktemp("imgs") / "set", n=24, size=48)


def test_streamed_images_equal_images_read_into_memory(folder):
    streamed = load_dataset(str(folder), image_size=SIZE, image_workers=0, n_query=4, n_train=10)
    memory = load_dataset(str(folder), image_size=SIZE, stream_images=False, n_query=4, n_train=10)
    assert isinstance(streamed.image, ImageSource) and isinstance(memory.image, torch.Tensor)
    assert streamed.image.shape == memory.image.shape == (24, 3, SIZE, SIZE)
    assert streamed.image_is_pixels and "pixels 3x32x32" in repr(streamed)
    assert torch.equal(streamed.image.load(), memory.image)
    assert torch.equal(streamed.image[5], memory.image[5])
    view = streamed.image[torch.tensor([7, 2, 7])]  # a lazy view, decoded on .to()
    assert isinstance(view, ImageSource) and torch.equal(view.to("cpu"), memory.image[[7, 2, 7]])
    assert "streamed from files" in data_summary(streamed)["image"]
    # the raw captions became bag-of-words rows through a vocabulary of the training items
    assert streamed.captions[0].endswith("!") and streamed.encoders["text"]["kind"] == "vocabulary"
    assert torch.equal(streamed.text, memory.text) and streamed.text.sum(1).min() > 0


def test_workers_decode_the_same_batches_and_augment_deterministically(folder):
    data = load_dataset(str(folder), image_size=SIZE, image_workers=0, n_query=4, n_train=10)
    rows, order = data.train_idx, torch.randperm(10, generator=torch.Generator().manual_seed(1))
    plain = [x for _, x in training_batches(data.image, rows, order, 4)]
    parallel = [x for _, x in training_batches(data.image.with_options(workers=2), rows, order, 4)]
    assert [x.shape[0] for x in plain] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(plain, parallel))
    torch.manual_seed(3)
    augmented = [x for _, x in training_batches(data.image.with_options(augment=True, workers=2), rows, order, 4)]
    torch.manual_seed(3)
    again = [x for _, x in training_batches(data.image.with_options(augment=True), rows, order, 4)]
    assert all(torch.equal(a, b) for a, b in zip(augmented, again))  # seeds come from torch's generator
    assert all(a.shape == b.shape for a, b in zip(augmented, plain))
    assert not all(torch.equal(a, b) for a, b in zip(augmented, plain))


def test_missing_image_files_are_named_when_loading(tmp_path):
    folder = make_textlist(tmp_path / "set", n=8, size=16)
    (folder / "img" / "4.jpg").unlink()
    (folder / "img" / "6.jpg").unlink()
    with pytest.raises(DataError, match=r"images.txt: line 5: image file .*4.jpg not found \(and 1 more missing\)"):
        load_dataset(str(folder), image_size=SIZE)


def test_a_corrupt_jpeg_stops_with_its_name_or_is_skipped_and_counted(tmp_path):
    folder = make_textlist(tmp_path / "set", n=12, size=32)
    corrupt(folder / "img" / "7.jpg")
    (folder / "img" / "9.jpg").write_bytes(b"not an image at all")
    data = load_dataset(str(folder), image_size=SIZE, image_workers=0, n_query=2, n_train=4)
    with pytest.raises(ImageReadError, match=r"line 8: image file .*7.jpg: cannot decode .*--skip-bad-images"):
        data.image.load()
    # with the documented option, both are found at load, dropped, and counted
    np.savetxt(folder / "test_idx.txt", [1, 8, 11], fmt="%d")  # 1-based: item 8 (7.jpg) is a query
    np.savetxt(folder / "database_idx.txt", [i for i in range(1, 13) if i not in (1, 8, 11)], fmt="%d")
    kept = load_dataset(str(folder), image_size=SIZE, image_workers=2, skip_bad_images=True)
    assert kept.n == 10 and len(kept.image.skipped) == 2
    assert "7.jpg" in kept.image.skipped[0] and "9.jpg" in kept.image.skipped[1]
    assert kept.query_idx.tolist() == [0, 8]  # items 1 and 11 -> rows 0 and 8 after two drops
    labels = np.loadtxt(folder / "labels.txt")
    keep = [i for i in range(12) if i not in (7, 9)]
    assert torch.equal(kept.labels, torch.tensor(labels[keep], dtype=torch.float32))
    assert kept.captions == tuple(captions(labels.astype(int))[i] for i in keep)
    assert kept.image.load().shape == (10, 3, SIZE, SIZE)
    summary = data_summary(kept)
    assert "2 unreadable skipped" in summary["image"] and len(summary["skipped_images"]) == 2


def _write_iall(path, images, labels, text, *, dtype=np.uint8):
    """A MATLAB -v7.3 file as DCMH ships MIRFlickr: IAll is H x W x 3 x n in MATLAB, stored
    transposed (n, 3, W, H) in HDF5, one chunk per image; 512-byte MATLAB header."""
    with h5py.File(path, "w", userblock_size=512) as f:
        stored = images.transpose(0, 3, 2, 1).astype(dtype)  # (n, H, W, 3) -> (n, 3, W, H)
        f.create_dataset("IAll", data=stored, chunks=(1,) + stored.shape[1:])
        f.create_dataset("LAll", data=labels.T.astype(np.float64))
        f.create_dataset("YAll", data=text.T.astype(np.float64))


def test_hdf5_iall_is_read_lazily_in_runs_of_items(tmp_path, monkeypatch):
    images, labels = pixels(10, 24, seed=4)  # (n, H, W, 3) with H == W: use a non-square crop
    images = np.ascontiguousarray(images[:, :, :20])  # H 24, W 20
    text = (np.random.default_rng(0).random((10, 6)) < 0.5).astype(np.float64)
    path = tmp_path / "mirflickr.mat"
    _write_iall(path, images, labels, text)
    data = load_dataset(str(path), image_workers=0, n_query=2, n_train=4)
    assert isinstance(data.image.reader, HDF5Reader) and data.image.shape == (10, 3, 24, 20)
    expect = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    assert torch.equal(data.image.load(), expect)
    assert torch.equal(data.image.with_options(workers=2).load(), expect)  # workers reopen the file
    runs = []
    original = HDF5Reader._read_run
    monkeypatch.setattr(HDF5Reader, "_read_run", lambda self, lo, hi: runs.append((lo, hi)) or original(self, lo, hi))
    batch = next(iter(data.image.iter_batches([torch.tensor([5, 0, 1, 2, 1])])))
    assert torch.equal(batch, expect[[5, 0, 1, 2, 1]])
    assert runs == [(0, 3), (5, 6)]  # only the items asked for, consecutive ones in one read
    # float pixels outside [0, 255] are reported by item
    bad = images.astype(np.float64)
    bad[3, 0, 0, 0] = 300.0
    _write_iall(tmp_path / "bad.mat", bad, labels, text, dtype=np.float64)
    data = load_dataset(str(tmp_path / "bad.mat"), image_workers=0)
    with pytest.raises(ImageReadError, match=r"bad.mat: IAll item 4: pixels must be integers in \[0, 255\]"):
        data.image.load()


def _indexmat_folder(folder, *, v73: bool):
    from PIL import Image

    folder.mkdir(parents=True)
    images, labels = pixels(8, 32, seed=5)
    names = []
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"im{i}.png")
        names.append(f"im{i}.png")
    caps = captions(labels)
    caps[2] = ""  # an item without words
    if not v73:
        scipy.io.savemat(folder / "index.mat", {"index": names})  # a char matrix, padded with spaces
        scipy.io.savemat(folder / "caption.mat", {"caption": np.array(caps, dtype=object).reshape(-1, 1)})  # cell
        scipy.io.savemat(folder / "label.mat", {"category": labels.astype(np.float64)})
        return images, labels, caps
    with h5py.File(folder / "index.mat", "w", userblock_size=512) as f:
        width = max(map(len, names))
        codes = np.array([[ord(c) for c in n.ljust(width)] for n in names], dtype=np.uint16)
        ds = f.create_dataset("index", data=codes.T)  # MATLAB char matrix, stored transposed
        ds.attrs["MATLAB_class"] = np.bytes_("char")
    with h5py.File(folder / "caption.mat", "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        handles = []
        for i, cap in enumerate(caps):
            if cap:
                d = refs.create_dataset(f"c{i}", data=np.array([[ord(c)] for c in cap], dtype=np.uint16).T)
            else:
                d = refs.create_dataset(f"c{i}", data=np.zeros(2, dtype=np.uint64))
                d.attrs["MATLAB_empty"] = np.uint8(1)
            d.attrs["MATLAB_class"] = np.bytes_("char")
            handles.append(d.ref)
        cell = f.create_dataset("caption", data=np.array([handles], dtype=h5py.ref_dtype))
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
    with h5py.File(folder / "label.mat", "w", userblock_size=512) as f:
        f.create_dataset("category", data=labels.T.astype(np.float64))
    return images, labels, caps


@pytest.mark.parametrize("v73", [False, True], ids=["v5", "v7.3"])
def test_index_caption_label_mat_folder(tmp_path, v73):
    images, labels, caps = _indexmat_folder(tmp_path / "coco", v73=v73)
    data = load_dataset(str(tmp_path / "coco" / "index.mat"), image_size=32, image_workers=0, n_query=2,
                        n_train=3, vocab_size=5)
    assert data.n == 8 and data.captions == tuple(caps) and data.text_dim == 5
    assert torch.equal(data.labels, torch.tensor(labels, dtype=torch.float32))
    assert torch.equal(data.image.load(), torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    assert data.text[2].sum() == 0  # the empty caption
    (tmp_path / "coco" / "label.mat").unlink()
    with pytest.raises(DataError, match="missing file label.mat"):
        load_dataset(str(tmp_path / "coco"), format="indexmat")


def test_image_source_indexing_errors(folder):
    data = load_dataset(str(folder), image_size=SIZE, image_workers=0)
    with pytest.raises(IndexError, match="out of range"):
        data.image[24]
    with pytest.raises(IndexError, match="boolean mask of shape"):
        data.image[np.ones(3, dtype=bool)]
    with pytest.raises(IndexError, match="indexed by integers"):
        data.image[np.array([0.5])]
    with pytest.raises(DataError, match="image workers must be an integer >= 0"):
        data.image.with_options(workers=-1)
