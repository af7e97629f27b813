import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from convae.data import embedded_mnist_path, read_idx, read_idx_folder, read_mnist_pickle, to_float, write_idx
from convae.errors import DataError


def test_idx_round_trip_plain_and_gzip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, images)
        assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(images).view(7, 1, 28, 28))
    write_idx(tmp_path / "l.gz", labels)
    assert read_idx(tmp_path / "l.gz").tolist() == list(range(7))


def test_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">II", 0x00000802, 3) + bytes(3))
    with pytest.raises(DataError, match=r"bad.*bad IDX magic number 0x00000802"):
        read_idx(path)


def test_idx_rejects_truncated_and_oversized_files(tmp_path):
    path = tmp_path / "imgs"
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(DataError, match=r"imgs: truncated: header promises 3136 bytes of data, file holds 3126"):
        read_idx(path)
    path.write_bytes(raw + b"x")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)
    path.write_bytes(raw[:5])
    with pytest.raises(DataError, match="truncated header"):
        read_idx(path)


def test_idx_rejects_broken_gzip(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="x-idx3-ubyte.gz: cannot read"):
        read_idx(path)


def test_idx_folder_checks_counts_and_presence(idx_dir):
    data = read_idx_folder(idx_dir)
    assert data.train_images.shape == (256, 1, 28, 28) and data.test_images.shape == (64, 1, 28, 28)
    write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", np.zeros(63, np.uint8))
    with pytest.raises(DataError, match="test set has 64 images but 63 labels"):
        read_idx_folder(idx_dir)
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\]: file not found"):
        read_idx_folder(idx_dir)
    with pytest.raises(DataError, match="not a folder"):
        read_idx_folder(idx_dir / "nothing")


def test_idx_folder_rejects_labels_in_place_of_images(idx_dir):
    write_idx(idx_dir / "train-images-idx3-ubyte.gz", np.zeros(256, np.uint8))
    with pytest.raises(DataError, match="holds labels, expected images"):
        read_idx_folder(idx_dir)


def _write_pickle(path, obj):
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_pickle_reader_refuses_anything_but_numpy(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl.gz"
    _write_pickle(path, Evil())
    with pytest.raises(DataError, match=r"evil.pkl.gz: pickle refers to (__builtin__|builtins).print; only numpy arrays"):
        read_mnist_pickle(path)


def test_pickle_reader_checks_structure_and_file(tmp_path):
    x = np.zeros((3, 784), np.float32)
    y = np.zeros(3, np.int64)
    path = tmp_path / "m.pkl.gz"
    _write_pickle(path, ((x, y), (x, y), (x, y)))
    data = read_mnist_pickle(path)
    assert data.train_images.shape == (6, 1, 28, 28) and data.levels == 256
    _write_pickle(path, ((x, y), (x, y)))
    with pytest.raises(DataError, match="expected three"):
        read_mnist_pickle(path)
    _write_pickle(path, ((x, y), (x, y), (x[:, :100], y)))
    with pytest.raises(DataError, match="N x 784"):
        read_mnist_pickle(path)
    path.write_bytes(gzip.compress(pickle.dumps(((x, y),) * 3, protocol=2))[:50])
    with pytest.raises(DataError, match="m.pkl.gz: not a readable MNIST pickle"):
        read_mnist_pickle(path)
    with pytest.raises(DataError, match="missing.pkl.gz: file not found"):
        read_mnist_pickle(tmp_path / "missing.pkl.gz")


def test_resize_is_bilinear_and_keeps_constant_images_constant():
    flat = torch.full((2, 1, 28, 28), 128, dtype=torch.uint8)
    x = to_float(flat, 256.0, 32)
    assert x.shape == (2, 1, 32, 32) and torch.allclose(x, torch.full_like(x, 0.5))


def test_embedded_mnist_loads_exactly():
    data = read_mnist_pickle(embedded_mnist_path())
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.levels == 256
    assert sorted(data.test_labels.unique().tolist()) == list(range(10))
    assert data.train_images.max() == 255  # values k/256 map back to the exact bytes


def test_pad_mode_keeps_the_original_pixels_and_binarization_is_fixed():
    from convae.data import fixed_binarization

    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    padded = to_float(images, 255.0, 32, resize="pad")
    assert padded.shape == (5, 1, 32, 32) and torch.equal(padded[..., 2:30, 2:30], images.float() / 255)
    assert padded[..., :2, :].abs().sum() == 0 and padded[..., :, 30:].abs().sum() == 0
    a = fixed_binarization(images, 255.0, 32, "pad", seed=0)
    assert a.dtype == torch.uint8 and set(a.unique().tolist()) <= {0, 1} and torch.equal(a, fixed_binarization(images, 255.0, 32, "pad", seed=0))
    assert not torch.equal(a, fixed_binarization(images, 255.0, 32, "pad", seed=1))
