"""Bringing images of any size and mode to the model's: centre-crop to a square, resize with antialiasing, to
uint8 C x H x W. Done once per data set (the result is cached), never per batch."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import DataError

RESAMPLE = {"auto": Image.Resampling.BOX, "area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}  # --background


def without_alpha(image: Image.Image, background: str = "white") -> tuple[Image.Image, bool]:
    """The image as it looks over ``background`` where it is transparent (an alpha channel, or a palette's or a
    mode's transparent colour); and whether any pixel was. Pillow's own conversion would drop the alpha and keep
    whatever colour the transparent pixels happen to hold (often not what a viewer shows)."""
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa") and "transparency" not in image.info:
        return image, False
    rgba = image.convert("RGBA")  # a palette's transparency too, without Pillow's warning about it
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB"), False
    canvas = Image.new("RGBA", rgba.size, BACKGROUNDS[background] + (255,))
    return Image.alpha_composite(canvas, rgba).convert("RGB"), True


def composite_arrays(rgba: np.ndarray, background: str = "white") -> tuple[np.ndarray, int]:
    """uint8 N x 4 x H x W (or gray and alpha, N x 2 x H x W) -> N x 3 (or 1) x H x W over ``background`` (as
    ``without_alpha``), and how many images had a transparent pixel."""
    colour, alpha = rgba[:, :-1].astype(np.float32), rgba[:, -1:].astype(np.float32) / 255
    back = np.array(BACKGROUNDS[background], dtype=np.float32)[None, :colour.shape[1], None, None]
    out = np.rint(colour * alpha + back * (1 - alpha)).astype(np.uint8)
    return out, int((rgba[:, -1] < 255).reshape(len(rgba), -1).any(1).sum())


DEEP_GRAY = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}  # 16- and 32-bit integer gray, float gray


def deep_gray_as_float(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit integer gray image, or a float one, as mode ``F`` on the 8-bit scale (0..255), so cropping
    and resizing work on all its bits. Pillow's own ``convert("L")`` clips at 255: it turns a 16-bit image nearly
    white and a float image in [0, 1] black. Integers are read as 16-bit (0..65535 -> 0..255; Pillow opens some
    16-bit files as 32-bit ``I``), floats as [0, 1], as float arrays are; values outside are refused."""
    values = np.asarray(image, dtype=np.float32)  # exact for 16-bit integers
    if image.mode == "F":
        if not np.isfinite(values).all():
            raise DataError("float pixels hold NaN or infinite values; float images must lie in [0, 1]")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise DataError(f"float pixels in [{low:g}, {high:g}]; float images must lie in [0, 1]")
        scaled = values * 255
    else:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise DataError(f"{image.mode}-mode pixels in [{low}, {high}]; integer images must fit in 16 bits "
                            "(0..65535)")
        scaled = values / 257  # 65535 / 257 = 255 exactly
    return Image.fromarray(scaled)  # float32 2-D: mode F


def square(image: Image.Image, policy: str, background: str = "white") -> Image.Image:
    """Centre-crop (or, with ``pad``, pad with ``background``, as transparent pixels are drawn) to a square."""
    w, h = image.size
    if w == h:
        return image
    if policy == "pad":
        side = max(w, h)
        colour = BACKGROUNDS[background]
        canvas = Image.new(image.mode, (side, side), colour if image.mode == "RGB" else colour[0])
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def fitting(width: int, height: int, size: int, policy: str) -> dict:
    """What bringing a ``width`` x ``height`` image to ``size`` x ``size`` does to it: ``fitted`` "cropped",
    "padded" or None (square already); ``kept`` the share of its area that stays in the picture (a crop cuts the
    rest away); ``scale`` how many times it is enlarged (over 1: upscaled, its detail invented by interpolation)."""
    if width == height:
        return {"fitted": None, "kept": 1.0, "scale": size / width}
    if policy == "pad":
        return {"fitted": "padded", "kept": 1.0, "scale": size / max(width, height)}
    short = min(width, height)
    return {"fitted": "cropped", "kept": short / max(width, height), "scale": size / short}


def prepare_image(image: Image.Image, size: int, channels: int, policy: str,
                  background: str = "white") -> tuple[np.ndarray, dict]:
    """A Pillow image of any mode -> uint8 array channels x size x size, and what was done to it: ``transparent``
    (its transparent pixels were drawn over ``background``) and ``fitting``'s keys. Pillow's BOX and BILINEAR
    filters average over the source pixels each output pixel covers when shrinking (antialiasing). The one
    preparation of an image: training's cache and ``convae.load(...).prepare`` both call it."""
    facts = fitting(*image.size, size, policy)
    image, transparent = without_alpha(image, background)
    facts["transparent"] = transparent
    if image.mode == "LAB":  # CIELab TIFFs: Pillow converts them to RGB, but not to gray directly
        image = image.convert("RGB")
    deep = image.mode in DEEP_GRAY
    if deep:
        image = deep_gray_as_float(image)
    else:
        try:
            image = image.convert("RGB" if channels == 3 else "L")
        except ValueError as e:  # a mode Pillow cannot convert
            raise DataError(f"mode {image.mode}: {e}") from None
    image = square(image, policy, background)
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLE.get(policy, Image.Resampling.BOX))
    if deep:  # to 8 bits once, after resizing; gray to RGB repeats the value, as Pillow's "L" -> "RGB" does
        gray = np.rint(np.asarray(image, dtype=np.float32)).clip(0, 255).astype(np.uint8)[None]
        return (gray if channels == 1 else np.repeat(gray, 3, axis=0)), facts
    array = np.asarray(image, dtype=np.uint8)
    return (array[None] if channels == 1 else array.transpose(2, 0, 1)), facts


def prepare_array(images: np.ndarray, size: int, channels: int, policy: str, background: str = "white",
                  tally: "Tally | None" = None) -> np.ndarray:
    """uint8 N x C x H x W at any size and 1 or 3 channels -> N x channels x size x size (each image through
    ``prepare_image``); ``tally`` counts what was done."""
    n, c, h, w = images.shape
    if (c, h, w) == (channels, size, size):
        if tally is not None:
            tally.add_all(n)
        return images
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for k in range(n):
        array = images[k, 0] if c == 1 else images[k].transpose(1, 2, 0)
        out[k], facts = prepare_image(Image.fromarray(array), size, channels, policy, background)
        if tally is not None:
            tally.add(facts)
    return out


class Tally:
    """What preparing a data set did to its images, counted: cropped, padded, upscaled (and by how much at most),
    those a crop kept less than half of (the first few named), transparent ones drawn over the background."""

    def __init__(self):
        self.images = self.cropped = self.padded = self.upscaled = self.transparent = self.mostly_cut = 0
        self.largest_scale, self.examples = 1.0, []

    def add_all(self, n: int) -> None:
        self.images += n

    def add(self, facts: dict, name: str = "") -> None:
        self.images += 1
        self.cropped += facts["fitted"] == "cropped"
        self.padded += facts["fitted"] == "padded"
        self.transparent += bool(facts.get("transparent"))
        if facts["scale"] > 1:
            self.upscaled += 1
            self.largest_scale = max(self.largest_scale, facts["scale"])
        if facts["kept"] < 0.5:
            self.mostly_cut += 1
            if len(self.examples) < 3 and name:
                self.examples.append(name)

    def details(self) -> dict:
        return {"images": self.images, "cropped": self.cropped, "padded": self.padded, "upscaled": self.upscaled,
                "largest_upscale": round(self.largest_scale, 2), "cropped_to_under_half": self.mostly_cut,
                "cropped_to_under_half_examples": self.examples}


def check_size(size: int) -> None:
    if size > 1024:
        raise DataError(f"--image-size {size}: larger than convae prepares (at most 1024)")
