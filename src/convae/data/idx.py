"""IDX files, the format MNIST, Fashion-MNIST and KMNIST are distributed in: four files in a folder, plain or
gzipped (magic 0x803 for images, 0x801 for labels, big-endian counts)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .images import ImageData


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


# Debian's dataset-fashion-mnist package puts the four gzipped IDX files here (a module attribute, so that tests
# can point it elsewhere).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def read_fashion_mnist() -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017), 60,000 + 10,000 gray 28 x 28, from Debian's package when it is installed."""
    folder = FASHION_MNIST_DIR
    if not all((folder / stem).is_file() or (folder / f"{stem}.gz").is_file() for stem in IDX_FILES.values()):
        raise DataError(f"--data fashion-mnist: {folder} does not hold its four IDX files; install them with "
                        "`apt-get install dataset-fashion-mnist`, or pass --data DIR with the four IDX files")
    data = read_idx_folder(folder)
    data.name, data.classes = "fashion-mnist", list(FASHION_MNIST_CLASSES)
    return data
