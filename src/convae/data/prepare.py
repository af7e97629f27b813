"""Bringing images of any size and mode to the model's: centre-crop to a square, resize with antialiasing, to
uint8 C x H x W. Done once per data set (the result is cached), never per batch."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import DataError

RESAMPLE = {"auto": Image.Resampling.BOX, "area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}


def square(image: Image.Image, policy: str) -> Image.Image:
    """Centre-crop (or, with ``pad``, pad with black) to a square."""
    w, h = image.size
    if w == h:
        return image
    if policy == "pad":
        side = max(w, h)
        canvas = Image.new(image.mode, (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def prepare_image(image: Image.Image, size: int, channels: int, policy: str) -> np.ndarray:
    """A Pillow image -> uint8 array channels x size x size. Pillow's BOX and BILINEAR filters average over the
    source pixels each output pixel covers when shrinking (antialiasing)."""
    image = image.convert("RGB" if channels == 3 else "L")
    image = square(image, policy)
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE.get(policy, Image.Resampling.BOX))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def prepare_array(images: np.ndarray, size: int, channels: int, policy: str) -> np.ndarray:
    """uint8 N x C x H x W at any size and channel count -> N x channels x size x size."""
    n, c, h, w = images.shape
    if (c, h, w) == (channels, size, size):
        return images
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for k in range(n):
        array = images[k, 0] if c == 1 else images[k].transpose(1, 2, 0)
        out[k] = prepare_image(Image.fromarray(array), size, channels, policy)
    return out


def check_size(size: int) -> None:
    if size > 1024:
        raise DataError(f"--image-size {size}: larger than convae prepares (at most 1024)")
