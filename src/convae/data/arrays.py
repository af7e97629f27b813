"""Images in a NumPy file: ``.npy`` (one array) or ``.npz`` (``train`` and ``test``, with ``train_labels`` and
``test_labels``; or Keras' ``x_train``/``y_train``/``x_test``/``y_test``; or one array of images with ``labels``).
Shapes N x H x W, N x H x W x C or N x C x H x W; uint8, uint16 (scaled to 8 bits), bool, or floats in [0, 1]."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError

SPLIT_KEYS = [("train", "test", "train_labels", "test_labels"), ("x_train", "x_test", "y_train", "y_test")]
SINGLE_KEYS = [("images", "labels"), ("x", "y"), ("data", "labels")]


def read_arrays(path: Path) -> dict:
    """{"train": (images, labels) [, "test": (images, labels)]} with images uint8 N x C x H x W."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable NumPy file ({type(e).__name__}: {str(e)[:150]})") from None
    if isinstance(loaded, np.ndarray):
        return {"all": (as_images(loaded, path), None)}
    with loaded:
        keys = set(loaded.files)
        try:
            for train, test, train_labels, test_labels in SPLIT_KEYS:
                if {train, test} <= keys:
                    return {"train": (as_images(loaded[train], path, train), _labels(loaded, train_labels, path)),
                            "test": (as_images(loaded[test], path, test), _labels(loaded, test_labels, path))}
            for images, labels in SINGLE_KEYS:
                if images in keys:
                    return {"all": (as_images(loaded[images], path, images), _labels(loaded, labels, path))}
            if len(keys) == 1:
                only = next(iter(keys))
                return {"all": (as_images(loaded[only], path, only), None)}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise DataError(f"{path}: an array in it is unreadable ({type(e).__name__}: {str(e)[:150]})") from None
    raise DataError(f"{path}: no usable arrays (found {', '.join(sorted(keys)) or 'none'}; expected 'train' and "
                    "'test' [+ 'train_labels', 'test_labels'], 'x_train'/'x_test', or 'images' [+ 'labels'])")


def _labels(loaded, key: str, path: Path) -> np.ndarray | None:
    if key not in loaded.files:
        return None
    labels = loaded[key]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: '{key}' must be a 1-D array of integers, got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def as_images(array: np.ndarray, path: Path, key: str | None = None) -> np.ndarray:
    """Any accepted layout and dtype -> uint8 N x C x H x W (C = 1, 3, or 4 with an alpha channel)."""
    where = f"{path}" + (f"['{key}']" if key else "")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
            array = array.transpose(0, 3, 1, 2)
        elif array.shape[1] not in (1, 3, 4):
            raise DataError(f"{where}: shape {array.shape}: no channel axis of 1, 3 or 4 (N x H x W x C or "
                            "N x C x H x W)")
    else:
        raise DataError(f"{where}: shape {array.shape}: expected N x H x W, N x H x W x C or N x C x H x W images")
    if len(array) == 0 or min(array.shape[2:]) < 1:
        raise DataError(f"{where}: holds no images (shape {array.shape})")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:  # 16-bit images, as a 16-bit PNG is read: 0..65535 -> 0..255
        return np.rint(array / 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        unfinished = ~np.isfinite(array).reshape(len(array), -1).all(axis=1)  # NaN would become 0 in the cast
        if unfinished.any():
            raise DataError(f"{where}: {int(unfinished.sum())} image(s) hold NaN or infinite values (the first: image "
                            f"{int(np.argmax(unfinished))}); float images must lie in [0, 1]")
        low, high = float(array.min()), float(array.max())
        if not (0 <= low and high <= 1):
            raise DataError(f"{where}: float images must lie in [0, 1], found values in [{low:g}, {high:g}]")
        return np.rint(array * 255).astype(np.uint8)
    raise DataError(f"{where}: dtype {array.dtype} is not supported (uint8, uint16, bool, or floats in [0, 1])")
