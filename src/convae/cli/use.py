"""Using a trained model from the command line: ``convae sample``, ``encode``, ``decode`` and ``export``."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from ..config import DEVICES
from ..errors import ConfigError


def add_parsers(sub) -> None:
    p = sub.add_parser("sample", help="draw images from a trained model's prior",
                       description="Draw N images from the prior of the run's model (mean images of p(x|z)).")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("-n", type=int, default=64, help="how many (default 64)")
    p.add_argument("--out", required=True, help="grid.png (a picture) or samples.npz (uint8 N x C x H x W)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--scale", type=int, metavar="S", help="a picture's images enlarged S times, nearest neighbour "
                                                          "(default: to at least 96 pixels; 1: as they are)")
    p.add_argument("--label", metavar="K",
                   help="a model trained with --conditional: draw class K, a number or a class name (default: "
                        "classes drawn uniformly)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("encode", help="encode a data set with a trained model: its latents and posterior parameters",
                       description="Encode images with the run's encoder and write z (the latent reconstruct "
                                   "decodes), every posterior parameter (mu, sigma, context0, ...) and the labels "
                                   "to an .npz.")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("--data", metavar="SOURCE", help="as convae train --data (default: the run's own data)")
    p.add_argument("--split", choices=["test", "train", "all"], default="test",
                   help="which images (default test; all: training then test images)")
    p.add_argument("--out", required=True, help="the .npz file to write (z, mu, sigma, any context0..., labels, and "
                                                "the images' names: their files, or their indices in the split)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_encode)

    p = sub.add_parser("decode", help="decode latents (an .npz with z or mu) into images",
                       description="Decode latents from an .npz (array 'z' as `convae encode` writes it, or 'mu').")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("latents", help="an .npz holding 'z' or 'mu' (N x latent_dim)")
    p.add_argument("--out", required=True, help="images.npz (uint8 N x C x H x W) or grid.png")
    p.add_argument("--label", metavar="K",
                   help="a model trained with --conditional: decode every latent as class K, a number or a class "
                        "name (default: the file's 'labels')")
    p.add_argument("--scale", type=int, metavar="S", help="a picture's images enlarged S times, nearest neighbour "
                                                          "(default: to at least 96 pixels; 1: as they are)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_decode)

    p = sub.add_parser("export", help="write a trained encoder and decoder as ONNX, TorchScript or safetensors",
                       description="Write the run's encoder (images -> mu, sigma) and decoder (z -> images) for use "
                                   "without convae, with model.json describing inputs and outputs.")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"],
                   help="default onnx where the onnx package is installed, else safetensors (said when it is)")
    p.add_argument("--out", metavar="DIR", help="folder for the files (default RUN/export)")
    p.set_defaults(handler=cmd_export)


def cmd_sample(args: argparse.Namespace) -> int:
    from ..inference import load

    model = load(args.run, args.device)
    try:
        images = model.sample(args.n, label=args.label, seed=args.seed)
    except ConfigError as e:
        raise ConfigError(f"--label {args.label}: {e}" if args.label is not None else str(e)) from None
    write_images(images, Path(args.out), args.scale)
    print(f"{args.n} samples" + (f" of class {args.label}" if args.label is not None else "") + f": {args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np
    import torch

    from ..data import load_for_config
    from ..files import atomic_write_bytes
    from ..runs import check_labels
    from ..inference import load

    model = load(args.run, args.device)
    if args.data:  # prepared as the run's own data was (its size, channels, --resize, --background, split)
        config = dataclasses.replace(model.config, data=args.data, data_dir=None, channels=str(model.channels))
        data = load_for_config(config, progress=False, run_path=model.run.path)
    else:
        data = model.run.data()
    check_labels(data, model.classes, model.run.path)
    splits = ["train", "test"] if args.split == "all" else [args.split]
    images = torch.cat([data.train_images if s == "train" else data.test_images for s in splits])
    labels = torch.cat([data.train_labels if s == "train" else data.test_labels for s in splits])
    names = [name for s in splits for name in data.names_of(s)]
    # z: the posterior's representative latent (what reconstruct decodes: mu, or mu pushed through a flow), then
    # every parameter the encoder gives under the names export's model.json uses (mu, sigma, context0, ...)
    fields = ["z", *model.parameter_names]
    columns: dict[str, list] = {name: [] for name in fields}
    for start in range(0, len(images), 1000):
        batch, batch_labels = images[start:start + 1000], labels[start:start + 1000] if model.classes else None
        columns["z"].append(model.latents(batch, batch_labels))
        for name, value in zip(fields[1:], model.encode(batch, batch_labels)):
            columns[name].append(value)
    out = Path(args.out)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: torch.cat(parts).numpy() for name, parts in columns.items()},
             labels=labels.cpu().numpy(), names=np.array(names))
    atomic_write_bytes(out, buffer.getvalue())
    print(f"{len(images)} {args.split} images encoded ({model.latent_dim} dimensions): {out} ({', '.join(fields)}, "
          "labels, names; z is what `convae decode` decodes into the reconstructions)")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from ..inference import load

    model = load(args.run, args.device)
    try:
        with np.load(args.latents, allow_pickle=False) as f:
            key = "z" if "z" in f.files else "mu" if "mu" in f.files else None
            if key is None:
                raise ConfigError(f"{args.latents}: holds no 'z' or 'mu' array (found {', '.join(f.files)})")
            z = f[key]
            labels = f["labels"] if model.classes and "labels" in f.files else None
            names = f["names"] if "names" in f.files and len(f["names"]) == len(z) else None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{args.latents}: not a readable .npz file ({type(e).__name__}: {str(e)[:100]})") from None
    if args.label is not None:
        try:
            model.prepare_labels(args.label, 1)  # a class this model knows
        except ConfigError as e:
            raise ConfigError(f"--label {args.label}: {e}") from None
        labels = args.label
    elif model.classes and labels is None:
        raise ConfigError(f"{args.latents}: the model is conditional: the file needs a 'labels' array (as `convae "
                          "encode` writes), or give --label K")
    try:
        images = model.decode(z, labels)
    except ConfigError as e:
        raise ConfigError(f"{args.latents}: {e}") from None
    write_images(images, Path(args.out), args.scale, names)
    print(f"{len(images)} images decoded from {args.latents}['{key}']: {args.out}"
          + (" (with the images' names)" if names is not None and args.out.endswith(".npz") else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export
    from ..inference import load

    model = load(args.run, "cpu")
    out = Path(args.out) if args.out else model.run.path / "export"
    fmt = args.format
    if fmt is None:  # the portable graph where it can be written; the weights alone where it cannot
        import importlib.util

        fmt = "onnx" if importlib.util.find_spec("onnx") is not None else "safetensors"
        if fmt == "safetensors":
            print("convae export: the onnx package is not installed (pip install onnx): writing safetensors (the "
                  "weights); --format chooses", file=sys.stderr)
    for path in export(model, fmt, out):
        print(path)
    return 0


GRID_PIXELS = 96  # each image of a picture grid is drawn at least this wide (nearest neighbour: no new detail)


def write_images(images, out: Path, scale: int | None = None, names=None) -> None:
    """Images (a float tensor N x C x H x W in [0, 1]) to ``.npz`` (uint8 N x C x H x W, as `convae train --data`
    reads them, with ``names`` beside them where given) or to a picture (.png/.jpg): a grid, each image enlarged
    ``scale`` times (by default so that it is at least 96 pixels wide; 1: as they are)."""
    import numpy as np
    import torch
    from PIL import Image

    from ..files import atomic_write_bytes
    suffix = out.suffix.lower()
    if suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, images=(images.clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
                 **({} if names is None else {"names": np.asarray(names)}))
        atomic_write_bytes(out, buffer.getvalue())
    elif suffix in (".png", ".jpg", ".jpeg"):
        from ..visualisation import tile

        if scale is not None and scale < 1:
            raise ConfigError(f"--scale: must be a positive integer, got {scale}")
        scale = scale or max(1, -(-GRID_PIXELS // images.shape[-1]))
        enlarged = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        grid = tile(enlarged, columns=max(1, int(len(images) ** 0.5 + 0.999)), pad=2 * scale)
        array = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
        array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG" if suffix == ".png" else "JPEG")
        atomic_write_bytes(out, buffer.getvalue())
    else:
        raise ConfigError(f"--out {out}: give a .npz (arrays) or .png/.jpg (a grid) file name")
