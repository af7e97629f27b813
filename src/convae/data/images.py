"""Image data sets held as uint8 tensors N x C x H x W, and their conversion to the floats a model sees.

Images stay uint8 at their stored size; a batch is gathered by indexing and turned into floats in [0, 1] (resized
on the fly where the stored size is not the model's), so a whole data set fits on the training device and no
per-sample loader is needed. Where the uint8 set is larger than ``--resident-max-bytes`` it stays in a
memory-mapped cache file and batches stream from it (``streaming.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from ..errors import DataError
from .folder import LARGE_IMAGE_PIXELS


@dataclass
class ImageData:
    """A train/test split of images, kept as uint8 tensors of shape N x C x H x W (C = 1 gray, 3 colour).

    ``levels`` is the number the stored integers are divided by to get values in [0, 1]: 256 for the embedded
    pickle (its floats are exactly k/256), 255 otherwise. ``classes`` names the labels where the source has
    names (a folder's sub-folders); ``details`` records where the images came from and what was done to them
    (split, conversions, cache file), for config.json.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    levels: float = 255.0
    classes: list[str] | None = None
    details: dict = field(default_factory=dict)
    names: list[str] | None = None  # each image's file (training's, then the test split's), where it came from one

    def names_of(self, split: str) -> list[str]:
        """The file of each image of ``split`` ("train" or "test"), or its index in the split where there are no
        files (arrays, MNIST)."""
        n_train = len(self.train_images)
        if self.names is not None and len(self.names) == n_train + len(self.test_images):
            return self.names[:n_train] if split == "train" else self.names[n_train:]
        return [f"{split}[{k}]" for k in range(n_train if split == "train" else len(self.test_images))]

    @property
    def shape(self) -> tuple[int, int, int]:
        """C x H x W as stored."""
        return tuple(self.train_images.shape[1:])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.train_images, self.test_images))

    def fingerprint(self) -> str:
        """SHA-256 of the images and labels (both splits) and their levels: what a resumed run must train on."""
        import hashlib

        import numpy as np

        h = hashlib.sha256(repr((self.levels, list(self.train_images.shape), list(self.test_images.shape))).encode())
        for t in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            for start in range(0, len(t), 4096):  # in slices: a memory-mapped set is never read whole
                h.update(np.ascontiguousarray(t[start:start + 4096].cpu().numpy()).tobytes())
        return h.hexdigest()

    def summary(self) -> list[str]:
        """What a user should know of these images, in lines, from ``details`` (so a cache hit says it too): the
        split, the labels with their names and counts, and what preparing did (crops, padding, upscaling,
        conversions, transparency drawn over the background, files left out or skipped)."""
        d, (c, h, w) = self.details, self.shape
        lines = [f"data: {self.name}, {len(self.train_images):,} training and {len(self.test_images):,} test images "
                 f"of {c}x{h}x{w}" + (f" ({d['split']})" if d.get("split") else "")]
        if self.class_count():
            counts = torch.bincount(torch.cat([self.train_labels, self.test_labels]).long().cpu(),
                                    minlength=self.class_count()).tolist()
            names = self.classes or [str(k) for k in range(len(counts))]
            shown = ", ".join(f"{n} {k:,}" for n, k in list(zip(names, counts))[:20])
            lines.append(f"labels: {len(counts)} classes, images per class in both splits ({shown}"
                         f"{', ...' if len(counts) > 20 else ''})")
        fit = d.get("fitting")
        if fit and (fit["cropped"] or fit["padded"] or fit["upscaled"]):
            said = []
            if fit["cropped"]:
                said.append(f"{fit['cropped']:,} centre-cropped to a square" + (
                    f" ({fit['cropped_to_under_half']:,} kept less than half their area, e.g. "
                    f"{', '.join(fit['cropped_to_under_half_examples'])}: --resize pad keeps whole pictures)"
                    if fit["cropped_to_under_half"] else ""))
            if fit["padded"]:
                said.append(f"{fit['padded']:,} padded to a square with {d.get('background', 'white')}")
            if fit["upscaled"]:
                said.append(f"{fit['upscaled']:,} upscaled (at most {fit['largest_upscale']:g}x)")
            lines.append(f"fitted to {h}x{w}: " + "; ".join(said))
        if d.get("converted"):
            lines.append(d["converted"])
        if d.get("transparent"):
            lines.append(f"{d['transparent']:,} image(s) with transparent pixels drawn over {d['background']} "
                         "(--background)")
        left_out = d.get("left_out") or {}
        if left_out:
            lines.append(f"{sum(left_out.values()):,} file(s) left out, of types convae does not read as images: "
                         + ", ".join(f"{kind} {count}" for kind, count in left_out.items()))
        if d.get("large"):
            lines.append(f"{d['large']} image(s) of more than {LARGE_IMAGE_PIXELS / 1e6:.0f} million pixels decoded "
                         "(within --max-image-pixels; Pillow would have warned of each)")
        if d.get("skipped"):
            lines.append(f"{len(d['skipped'])} unreadable image file(s) skipped (--skip-bad-images): "
                         + ", ".join(d["skipped"]))
        return lines

    def class_count(self) -> int:
        """How many classes the labels name (largest label + 1); 0 where the source has no labels (every label 0
        and no class names). A negative label is a DataError."""
        labels = torch.cat([self.train_labels.reshape(-1), self.test_labels.reshape(-1)])
        if not len(labels) or (self.classes is None and not labels.any()):
            return 0
        if labels.min() < 0:
            raise DataError(f"{self.name}: label {int(labels.min())} is negative; labels must be classes 0, 1, 2, ...")
        return int(labels.max()) + 1

    def to(self, device: torch.device | str, resident: bool = True) -> "ImageData":
        """On ``device``; with ``resident=False`` the training images stay where they are (a memory map) and
        batches are copied to the device as they are needed."""
        move = lambda t: t.to(device)  # noqa: E731
        return replace(self, train_images=move(self.train_images) if resident else self.train_images,
                       train_labels=move(self.train_labels), test_images=move(self.test_images),
                       test_labels=move(self.test_labels))

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> "ImageData":
        """The first ``n_train`` / ``n_test`` images (for tests and quick runs)."""
        names = None
        if self.names is not None:
            names = self.names_of("train")[:n_train] + self.names_of("test")[:n_test]
        return replace(self, train_images=self.train_images[:n_train], train_labels=self.train_labels[:n_train],
                       test_images=self.test_images[:n_test], test_labels=self.test_labels[:n_test], names=names)


def to_float(images: torch.Tensor, levels: float, size: int | None, dtype: torch.dtype = torch.float32,
             resize: str = "bilinear", quantize: bool = False) -> torch.Tensor:
    """uint8 images -> values in [0, 1], brought to ``size`` x ``size`` (where the stored size differs).

    ``resize="bilinear"``: the seed resizes 28 -> 32 with linear interpolation; ``align_corners=False`` is the
    convention whose test-set entropy floor matches the reference figure (96.90 nats per image).
    ``resize="pad"``: zero borders instead (the binarized protocol, so the 28x28 pixels stay the original ones).
    ``quantize``: values on the 256 levels k/255 of 8-bit data (the stored byte k is the level; a resized value is
    rounded to the nearest level), what a discrete likelihood scores.
    """
    x = images.to(dtype) / (255.0 if quantize else levels)
    if size is not None and x.shape[-1] != size:
        if resize == "pad":
            before = (size - x.shape[-1]) // 2
            after = size - x.shape[-1] - before
            x = F.pad(x, (before, after, before, after))
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if quantize:
            x = torch.round(x * 255) / 255
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


@dataclass
class EvalImages:
    """Images to evaluate on, as stored (uint8) plus how to turn them into the floats the model sees."""

    images: torch.Tensor
    levels: float
    image_size: int
    resize: str = "bilinear"
    quantize: bool = False
    labels: torch.Tensor | None = None  # the classes, where the model is conditional on them

    def __len__(self) -> int:
        return len(self.images)

    @property
    def dims(self) -> int:
        """Values per image (C x H x W at the model's size)."""
        return self.images.shape[1] * self.image_size * self.image_size

    def floats(self, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return to_float(self.images[start:stop].to(device), self.levels, self.image_size, dtype, self.resize,
                        self.quantize)

    def labels_of(self, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
        """The classes of images ``start:stop`` for a conditional model; None for an unconditional one."""
        return None if self.labels is None else self.labels[start:stop].to(device)


def evaluation_images(images: torch.Tensor, levels: float, config,
                      labels: torch.Tensor | None = None) -> EvalImages:
    """Images as a run's settings (``config``, a ``TrainConfig``) evaluate them: as they are, or for the binarized
    protocol one fixed Bernoulli draw of them (seed 0); with their ``labels`` when the run is conditional on them."""
    labels = labels if config.conditional else None
    if config.binarize == "dynamic":
        return EvalImages(fixed_binarization(images, levels, config.image_size, config.resize_mode), 1.0,
                          config.image_size, labels=labels)
    return EvalImages(images, levels, config.image_size, config.resize_mode, config.quantize, labels)
