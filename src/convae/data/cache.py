"""Prepared images on disk: one uint8 ``.npy`` (train then test, N x C x H x W) that later runs memory-map, its
labels, and a JSON file naming what it was made from.

The key is a hash of the source (every file's path, size and modification time) and of the preparation settings,
so a changed file or setting gives another cache file. The JSON is written last and records the array's shape and
the file's size; a cache that does not match it (truncated, from other settings, unreadable) is rebuilt, never
trusted. Files are written under temporary names and renamed, so a crash leaves no half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import atomic_write_json

FORMAT = "convae-image-cache/3"  # 2: 16-bit and float gray scaled to 8 bits (1 clipped them), photos upright by EXIF;
# 3: --resize pad pads with --background (2: black), what was cropped, padded and upscaled is counted


def cache_key(source: dict, settings: dict) -> str:
    blob = json.dumps({"format": FORMAT, "source": source, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def files_fingerprint(paths: list[Path], root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of each file: what the key depends on."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return out


class PreparedCache:
    def __init__(self, folder: Path, name: str, key: str):
        stem = f"{name}-{key[:16]}"
        self.folder, self.key = folder, key
        self.images_path = folder / f"{stem}.images.npy"
        self.labels_path = folder / f"{stem}.labels.npy"
        self.meta_path = folder / f"{stem}.json"

    def open(self) -> tuple[np.ndarray, np.ndarray, dict] | None:
        """The memory-mapped images, the labels and the metadata; None (and the reason in ``self.why``) if the
        cache is missing or does not match its description."""
        self.why = "not built yet"
        if not self.meta_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("key") != self.key or meta.get("format") != FORMAT:
                self.why = "made from other files or settings"
                return None
            if self.images_path.stat().st_size != meta["images_bytes"]:
                self.why = "truncated or changed since it was written"
                return None
            images = np.load(self.images_path, mmap_mode="c")
            labels = np.load(self.labels_path)
            if list(images.shape) != meta["shape"] or images.dtype != np.uint8 or len(labels) != len(images):
                self.why = "does not hold what its description says"
                return None
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            self.why = f"unreadable ({type(e).__name__})"
            return None
        return images, labels, meta

    def write(self, shape: tuple[int, ...], fill: Callable[[np.ndarray], list[int]], labels: np.ndarray,
              meta: dict) -> None:
        """Allocate the array on disk, let ``fill`` write the images into it, then publish it atomically. ``fill``
        returns the rows it could not fill (unreadable files being skipped): those are left out, and the labels and
        ``meta["n_train"]`` and ``meta["names"]`` with them (rows below it are training images)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.images_path.with_name(f".{self.images_path.name}.{os.getpid()}.tmp")
        kept = None
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            dropped = sorted(set(fill(array) or []))
            if dropped:
                kept = np.setdiff1d(np.arange(shape[0]), dropped)
                array = self._compacted(array, kept, tmp)
                shape = array.shape
                meta = {**meta, "n_train": meta["n_train"] - sum(r < meta["n_train"] for r in dropped)}
                if meta.get("names"):  # each image's file name, kept beside it
                    meta["names"] = [meta["names"][k] for k in kept]
            array.flush()
            del array
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.images_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        labels = labels if kept is None else labels[kept]
        tmp_labels = self.labels_path.with_name(f".{self.labels_path.name}.{os.getpid()}.tmp.npy")
        np.save(tmp_labels, labels.astype(np.int64))
        os.replace(tmp_labels, self.labels_path)
        atomic_write_json(self.meta_path, {**meta, "format": FORMAT, "key": self.key, "shape": list(shape),
                                           "images_bytes": self.images_path.stat().st_size})

    @staticmethod
    def _compacted(array: np.memmap, kept: np.ndarray, path: Path) -> np.memmap:
        """``array`` with only the rows ``kept``, in a new file at ``path`` (in slices: it may not fit in memory)."""
        staging = path.with_name(path.name + ".all")
        del array
        os.replace(path, staging)
        try:
            full = np.load(staging, mmap_mode="r")
            compact = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(kept), *full.shape[1:]))
            for start in range(0, len(kept), 4096):
                compact[start:start + 4096] = full[kept[start:start + 4096]]
            del full
        finally:
            staging.unlink(missing_ok=True)
        return compact
