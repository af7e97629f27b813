"""A folder of image files (what Pillow reads), searched recursively, as torchvision's ImageFolder reads one:
the first level of sub-folders names the labels; ``train/`` and ``test/`` sub-folders, when both are there, are
the split."""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import MAX_IMAGE_PIXELS
from ..errors import DataError
from .prepare import DEEP_GRAY

EXTENSIONS = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm",
              ".pnm", ".tga"}
WITH_A_PLUGIN = {".avif", ".jp2", ".j2k", ".heic", ".heif"}  # read where this Pillow has the codec (pillow-heif: HEIC)
GRAY_MODES = {"1", "L", "LA"} | DEEP_GRAY


def readable_extensions() -> set[str]:
    """The file types a folder's images are read from: EXTENSIONS, and those of WITH_A_PLUGIN this Pillow opens."""
    Image.init()
    return EXTENSIONS | (WITH_A_PLUGIN & set(Image.registered_extensions()))


def visible_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, skipping hidden files and folders (a cache kept inside)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def labelled(files: list[Path], root: Path) -> tuple[list[int], list[str] | None]:
    """Label = index of the first sub-folder's name under ``root`` (None: every file sits in ``root`` itself)."""
    names = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files]
    classes = sorted(set(names))
    if classes == [""]:
        return [0] * len(files), None
    return [classes.index(n) for n in names], classes


# Pillow refuses to decode an image of more than 2 x Image.MAX_IMAGE_PIXELS pixels (a decompression bomb: a small
# file that unpacks to gigabytes) with a traceback, and warns above MAX_IMAGE_PIXELS at every open. convae checks the
# size from the header itself against --max-image-pixels (by default Pillow's own refusal, 178,956,970 pixels: about
# 0.7 GB as RGBA), refuses a larger file in one line naming it (or skips it under --skip-bad-images), and counts
# the large images it decodes in the data summary instead of repeating Pillow's warning.
LARGE_IMAGE_PIXELS = 89_478_485  # Pillow's warning threshold: what the data summary counts as large


@contextlib.contextmanager
def own_pixel_limit():
    """Pillow's decompression-bomb check and warning off for the duration: convae checks the size itself."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixels(path: Path, size: tuple[int, int], limit: int | None) -> None:
    """A DataError naming the file, its size and the option that allows it, where it has more than ``limit`` pixels."""
    width, height = size
    if limit is not None and width * height > limit:
        raise DataError(f"{path}: {width}x{height} = {width * height / 1e6:,.0f} million pixels, more than "
                        f"--max-image-pixels {limit:,} lets convae decode (a guard against decompression bombs; raise "
                        "it to read this file)")


def open_image(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """The decoded image, upright as a viewer shows it: a camera stores a photo taken on its side as it was shot,
    with an EXIF orientation tag that says how to turn it (Pillow does not turn it by itself). An image of more than
    ``max_pixels`` pixels is refused before it is decoded."""
    try:
        with own_pixel_limit():
            image = Image.open(path)
            check_pixels(path, image.size, max_pixels)
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not an image Pillow can read ({type(e).__name__}: {str(e)[:120]})") from None
    with contextlib.suppress(ValueError, OSError, SyntaxError, KeyError, struct.error):  # a damaged EXIF block:
        ImageOps.exif_transpose(image, in_place=True)  # the pixels as stored, as a viewer that ignores it shows
    return image


def image_mode(path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS) -> str:
    """The mode from the header alone (no decoding); a DataError where the image is larger than ``max_pixels``."""
    try:
        with own_pixel_limit(), Image.open(path) as image:
            check_pixels(path, image.size, max_pixels)
            return image.mode
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: not an image Pillow can read ({type(e).__name__}: {str(e)[:120]})") from None


def list_folder(folder: Path) -> dict:
    """The files and labels of each split, and the class names: everything but the pixels."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    split = (folder / "train").is_dir() and (folder / "test").is_dir()
    parts = {"train": folder / "train", "test": folder / "test"} if split else {"all": folder}
    listing = {}
    readable, left_out = readable_extensions(), Counter()  # left out: files of other types (HEIC photos, a CSV)
    for name, root in parts.items():
        everything = visible_files(root)
        files = [p for p in everything if p.suffix.lower() in readable]
        if not files:
            raise DataError(f"{root}: no image files ({', '.join(sorted(e[1:] for e in readable))}) in it or "
                            "below it")
        listing[name] = (files, *labelled(files, root))
        left_out.update(p.suffix.lower() or "(no extension)" for p in everything if p.suffix.lower() not in readable)
    if split and listing["train"][2] != listing["test"][2]:
        raise DataError(f"{folder}: train/ and test/ name different classes ({listing['train'][2]} against "
                        f"{listing['test'][2]})")
    return {"split_given": split, "parts": listing, "classes": next(iter(listing.values()))[2],
            "left_out": dict(sorted(left_out.items()))}
