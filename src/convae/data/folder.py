"""A folder of image files (what Pillow reads), searched recursively, as torchvision's ImageFolder reads one:
the first level of sub-folders names the labels; ``train/`` and ``test/`` sub-folders, when both are there, are
the split."""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

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


def open_image(path: Path) -> Image.Image:
    """The decoded image, upright as a viewer shows it: a camera stores a photo taken on its side as it was shot,
    with an EXIF orientation tag that says how to turn it (Pillow does not turn it by itself)."""
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not an image Pillow can read ({type(e).__name__}: {str(e)[:120]})") from None
    with contextlib.suppress(ValueError, OSError, SyntaxError, KeyError, struct.error):  # a damaged EXIF block:
        ImageOps.exif_transpose(image, in_place=True)  # the pixels as stored, as a viewer that ignores it shows
    return image


def image_mode(path: Path) -> str:
    """The mode from the header alone (no decoding)."""
    try:
        with Image.open(path) as image:
            return image.mode
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
