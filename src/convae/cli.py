"""The ``convae`` command line: ``convae train``, ``convae --help``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import DEVICES, DTYPES, PRECISIONS, PRESETS, ConfigError, TrainConfig
from .data import DataError
from .training.checkpoint import CheckpointError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (``convae train: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a VAE (default: the seed's experiment)",
                       description="Train a VAE. The defaults reproduce the seed: model 'seed', batch 32, Adam 1e-3, "
                                   "100 epochs on the embedded MNIST resized to 32x32. Options left out keep their "
                                   "defaults, or with --resume the run's own settings.")
    # Defaults are None so we can tell which options the user typed (they override a preset or a resumed run).
    p.add_argument("--model", help="model name (see `convae models`); default: seed")
    p.add_argument("--encoder", choices=["mlp", "conv"], help="encoder; default: the model's own")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe: " + "; ".join(
        f"{k} = {v}" for k, v in PRESETS.items()))
    p.add_argument("--epochs", type=int, help="epochs to train (default 100)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in all, ending like an epoch")
    p.add_argument("--batch-size", type=int, help="images per step (default 32)")
    p.add_argument("--lr", type=float, help="Adam learning rate, or the peak of --lr-schedule onecycle (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["constant", "onecycle"], help="default constant")
    p.add_argument("--seed", type=int, help="seed for initialisation, shuffling and sampling (default 0)")
    p.add_argument("--dtype", choices=DTYPES, help="parameter dtype; float64 is the seed's arithmetic (default float32)")
    p.add_argument("--precision", choices=PRECISIONS, help="bf16: autocast the model, loss stays float32 (default fp32)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--device", choices=DEVICES, help="auto picks a GPU when there is one (default auto)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=None,
                   help="take batches in order, as the seed does")
    p.add_argument("--binarize", choices=["none", "dynamic"], help="dynamic: resample binary pixels each draw")
    p.add_argument("--data-dir", help="folder with the four MNIST-format IDX files (plain or .gz) "
                                      "instead of the embedded MNIST")
    p.add_argument("--image-size", type=int, help="images are resized to this (default 32)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="evaluate on only the first N test images")
    p.add_argument("--out", help="run folder (default runs/<date-time>); must not hold a run already")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    return p


# Settings a resumed run may change; the others define the run and stay as they were.
RESUMABLE_OVERRIDES = {"epochs", "max_steps", "quiet", "device", "compile"}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    given = {k: v for k, v in vars(args).items()
             if v is not None and k in TrainConfig.__dataclass_fields__}
    if args.resume:
        run_dir = Path(args.resume)
        config_file = run_dir / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.json there (not a convae run folder)")
        try:
            saved = json.loads(config_file.read_text())["config"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConfigError(f"{config_file}: unreadable ({e})") from None
        fixed = sorted(set(given) - RESUMABLE_OVERRIDES - {"out"})
        if fixed or args.preset or ("out" in given and Path(given["out"]) != run_dir):
            names = ", ".join("--" + n.replace("_", "-") for n in fixed) or "--preset/--out"
            raise ConfigError(f"{names}: cannot change when resuming (only --epochs, --max-steps, --device, "
                              "--compile, --quiet can)")
        config = TrainConfig.from_dict({**saved, **given, "out": str(run_dir)})
        return config, True
    values = dict(PRESETS[args.preset]) if args.preset else {}
    if args.preset:
        values["extra"] = {"preset": args.preset}
    values.update(given)
    return TrainConfig(**values), False


def cmd_train(args: argparse.Namespace) -> int:
    from .training import NonFiniteLoss, TrainingInterrupted, train

    config, resume = config_from_args(args)
    try:
        result = train(config, resume=resume, argv=sys.argv)
    except TrainingInterrupted as e:
        print(f"convae: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLoss as e:
        print(f"convae: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"done: {result.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="convae", description="Convolutional variational autoencoders on images. "
                           "`convae train` reproduces the seed tutorial's experiment on the embedded MNIST.")
    parser.add_argument("--version", action="version", version=f"convae {__import__('convae').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    _train_parser(sub).set_defaults(handler=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.handler(args)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"convae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
