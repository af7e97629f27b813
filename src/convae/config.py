"""Training settings: one dataclass whose defaults are the seed's recipe, validated before anything runs.

Each field carries what the command line needs to offer it (``convae.cli.flags`` builds the options from this
class): its help, its choices (the tuples ``validate`` checks), whether it may change when a run is resumed, and
whether it is internal (no flag, on purpose). Nothing here imports torch: ``convae train --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError
from .models import ENCODERS, LIKELIHOODS
from .models.registry import check_name

DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
IW_PRECISIONS = ("auto", "fp32", "bf16")  # how the IW bound's decoder computes (evaluation/likelihood.py)
LR_SCHEDULES = ("constant", "onecycle")
BINARIZE = ("none", "dynamic")
RESIZE = ("auto", "bilinear", "pad", "area")
CHANNELS = ("auto", "1", "3")
BACKGROUNDS = ("white", "black", "gray")
# Pillow's own refusal (2 x Image.MAX_IMAGE_PIXELS): the default of --max-image-pixels (data/folder.py says why)
MAX_IMAGE_PIXELS = 2 * 89_478_485


def setting(default, help: str, *, choices: tuple | None = None, resumable: bool = False, metavar: str | None = None,
            internal: bool = False, flag: str | None = None):
    """A field of ``TrainConfig`` with what its command-line option needs; ``help`` says what the option as written
    does (for a setting on by default, what ``--no-NAME`` does). ``resumable``: a resumed run may be
    given another value (how it runs, not what it computes); ``internal``: no option, on purpose; ``flag``: the
    option's name where it is not the setting's (a repeatable option named in the singular)."""
    metadata = {"help": help, "choices": choices, "resumable": resumable, "metavar": metavar, "internal": internal,
                "flag": flag}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults reproduce the seed: batch 32, Adam 1e-3, 100 epochs."""

    # -- what is trained ------------------------------------------------------------------------------------------
    model: str = setting("seed", "model name (see `convae models`; a model of your own: --plugin MODULE)")
    model_options: dict = setting({}, "an option of the model's factory, KEY=VALUE (repeatable; VALUE read as JSON "
                                      "where it parses, else as text): e.g. a plug-in's size or number of components",
                                  metavar="KEY=VALUE", flag="--model-option")
    encoder: str | None = setting(None, "encoder; default: the model's own", choices=tuple(ENCODERS))
    conditional: bool = setting(False, "condition encoder and decoder on the data's class labels (a conditional VAE: "
                                       "samples of a chosen class with `convae sample --label K`)")
    likelihood: str = setting("bernoulli", "p(x|z): bernoulli (the seed's), continuous-bernoulli (normalised on "
                                           "[0, 1]), logistic (discretised, on 8-bit levels; reports bits/dim), "
                                           "gaussian (learned variance, or --gaussian-sigma)",
                              choices=tuple(LIKELIHOODS))
    gaussian_sigma: float | None = setting(None, "with --likelihood gaussian: a fixed standard deviation S instead "
                                                 "of a learned one", metavar="S")
    # -- how long, and how ------------------------------------------------------------------------------------------
    epochs: int = setting(100, "epochs to train", resumable=True)
    max_steps: int | None = setting(None, "stop after this many optimizer steps in all, ending like an epoch",
                                    resumable=True)
    time_budget: str | None = setting(None, "train for this long (20m, 1h, 90s, 1h30m): the run times its own step "
                                            "first and fixes its number of steps so that training (not start-up "
                                            "or evaluation) ends at the budget; the learning-rate schedule is laid "
                                            "over those steps, and a resumed run keeps them", metavar="DURATION")
    batch_size: int = setting(32, "images per step")
    lr: float = setting(1e-3, "Adam learning rate, or the peak of --lr-schedule onecycle")
    lr_schedule: str = setting("constant", "onecycle: linear warm-up to --lr, then cosine down to lr/100",
                               choices=LR_SCHEDULES)
    warmup_fraction: float = setting(0.25, "share of all steps spent warming up (onecycle)")
    warmup_steps: int | None = setting(None, "steps spent warming up (onecycle), instead of --warmup-fraction of all "
                                             "steps; a --time-budget run records its own", metavar="STEPS")
    beta: float = setting(1.0, "weight of the KL term (1: the ELBO; the logged -ELBO stays unweighted)")
    kl_warmup: int = setting(0, "raise the KL weight linearly from 0 to --beta over STEPS steps (0: no warm-up)",
                             metavar="STEPS")
    kl_warmup_fraction: float | None = setting(None, "raise the KL weight over this share of the run's steps, "
                                                     "instead of --kl-warmup STEPS: fixed as the run begins (of "
                                                     "its --epochs or --max-steps, or of --time-budget's first "
                                                     "plan) and recorded as its --kl-warmup", metavar="F")
    free_bits: float = setting(0.0, "don't penalise a latent dimension's batch-mean KL below NATS", metavar="NATS")
    iw_train: int = setting(1, "train on the importance-weighted bound with K samples (IWAE; 1 = the ELBO)",
                            metavar="K")
    grad_clip: float | None = setting(None, "rescale each step's gradient to at most this L2 norm (default: no "
                                            "clipping)", metavar="NORM")
    ema: float | None = setting(None, "keep an exponential moving average of the weights (e.g. 0.999) and "
                                      "evaluate, sample and export with it", metavar="DECAY")
    seed: int = setting(0, "seed for initialisation, shuffling and sampling")
    dtype: str = setting("float32", "parameter dtype; float64 is the seed's arithmetic", choices=DTYPES)
    precision: str = setting("fp32", "bf16: autocast the model, loss stays float32", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the forward pass and loss", resumable=True)
    cuda_graphs: bool = setting(True, "on CUDA, launch each step's kernels one by one (default: record the whole "
                                      "step once as a CUDA graph and replay it)", resumable=True)
    channels_last: bool = setting(False, "NHWC activations (measured: no gain for this model on CPU)",
                                  resumable=True)
    device: str = setting("auto", "auto picks a GPU when there is one", choices=DEVICES, resumable=True)
    shuffle: bool = setting(True, "take batches in order, as the seed does (default: shuffled every epoch)")
    # -- the data -----------------------------------------------------------------------------------------------
    data: str = setting("mnist", "mnist (the embedded copy), fashion-mnist (Debian's dataset-fashion-mnist), "
                                 "shapes[:N] (generated colour shapes), a "
                                 "folder of image files (sub-folders = labels; train/ and test/ = the split), a folder "
                                 "of IDX files, or a .npy/.npz file", metavar="SOURCE")
    data_dir: str | None = setting(None, "folder with the four MNIST-format IDX files (plain or .gz); same as "
                                         "--data DIR")
    binarize: str = setting("none", "dynamic: resample binary pixels each draw (the binarized-MNIST protocol)",
                            choices=BINARIZE)
    resize: str = setting("auto", "MNIST 28 -> 32: bilinear (the seed) or zero padding; auto = pad when --binarize "
                                  "dynamic. Other data: auto and area centre-crop to a square, then resize with a box "
                                  "filter; bilinear: centre-crop, bilinear resize; pad: pad to a square with "
                                  "--background (the whole picture kept), then a box filter", choices=RESIZE)
    image_size: int = setting(32, "images are brought to this size: 32, 64, 128 or 256 for the convolutional "
                                  "models (the seed's: 32), 8 to 1024 for fc")
    channels: str = setting("auto", "1 gray, 3 colour; auto: from the data", choices=CHANNELS)
    background: str = setting("white", "what shows through the transparent pixels of images with an alpha channel "
                                       "(RGBA, LA, a palette's transparent colour), as a viewer shows them",
                              choices=BACKGROUNDS)
    skip_bad_images: bool = setting(False, "leave out the image files Pillow cannot read or whose pixels convae "
                                           "cannot take (counted, and listed in the run's log.txt) instead of "
                                           "refusing them all in one message")
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, "an image file of more pixels than this is not decoded (a "
                                                      "guard against decompression bombs): refused in one line "
                                                      "naming it, or skipped under --skip-bad-images (default "
                                                      "178956970, Pillow's own limit)", metavar="N")
    test_fraction: float = setting(0.1, "held out for testing where the data has no split (fixed seed)")
    cache_dir: str | None = setting(None, "where prepared images are cached (default .convae-cache beside the run "
                                          "folder)")
    resident_max_bytes: int | None = setting(None, "training images larger than this stream from the memory-mapped "
                                                   "cache instead of living on the device (default: half the GPU's "
                                                   "free memory, or half the RAM)", metavar="BYTES")
    train_limit: int | None = setting(None, "use only the first N training images", metavar="N")
    test_limit: int | None = setting(None, "evaluate on only the first N test images", metavar="N")
    # -- what is measured and written ---------------------------------------------------------------------------------
    monitor_images: int = setting(32, "the first N training images whose loss the epoch line prints (the seed: 32)",
                                  metavar="N")
    eval_batch_size: int = setting(500, "images per batch when evaluating the test set")
    progress_every: int = setting(25, "steps between progress records: steps.jsonl, TensorBoard, the bar",
                                  resumable=True, metavar="STEPS")
    keep_checkpoints: int = setting(2, "how many of the newest checkpoints to keep", resumable=True, metavar="N")
    checkpoint_every: int | None = setting(None, "also checkpoint every STEPS optimizer steps (epoch ends always "
                                                 "checkpoint)", resumable=True, metavar="STEPS")
    checkpoint_minutes: float | None = setting(None, "also checkpoint when M minutes have passed since the last "
                                                     "checkpoint", resumable=True, metavar="M")
    dist_timeout: float = setting(300.0, "under torchrun: how long joining the group or a collective may wait for a "
                                         "peer before the run ends with an error", resumable=True, metavar="SECONDS")
    quiet: bool = setting(False, "no progress bar or progress lines", resumable=True)
    tensorboard: bool = setting(True, "write no TensorBoard event files, and draw no epoch samples for them "
                                      "(default: event files in RUN/tb)", resumable=True)
    report: bool = setting(True, "don't refresh RUN/report.html at epoch ends (default: refresh it)", resumable=True)
    out: str | None = setting(None, "run folder (default runs/<date-time>); must not hold a run already",
                              metavar="DIR")
    extra: dict = setting({}, "free-form notes, e.g. the preset a run came from", internal=True)
    schedule_knots: list | None = setting(None, "onecycle's cosine re-laid by a --time-budget re-plan: [step, progress "
                                                "there] pairs it passes through on its way to the last step",
                                          internal=True)

    def validate(self) -> "TrainConfig":
        def positive(name: str, value, allow_none: bool = False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be a positive integer, got {value!r}")

        def number(value, above: float = 0.0, inclusive: bool = False) -> bool:
            """A finite real number above ``above`` (``inf`` passes ``> 0`` and would train on infinities)."""
            return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and (value >= above if inclusive else value > above))

        for name in ("epochs", "batch_size", "image_size", "monitor_images", "eval_batch_size",
                     "progress_every", "keep_checkpoints", "max_image_pixels"):
            positive(name, getattr(self, name))
        for name in ("max_steps", "warmup_steps", "train_limit", "test_limit", "checkpoint_every"):
            positive(name, getattr(self, name), allow_none=True)
        positive("iw_train", self.iw_train)
        if isinstance(self.kl_warmup, bool) or not isinstance(self.kl_warmup, int) or self.kl_warmup < 0:
            raise ConfigError(f"--kl-warmup: must be an integer >= 0 (steps), got {self.kl_warmup!r}")
        if self.kl_warmup_fraction is not None and not (number(self.kl_warmup_fraction)
                                                        and self.kl_warmup_fraction <= 1):
            raise ConfigError(f"--kl-warmup-fraction: must be a share in (0, 1] of the run's steps, got "
                              f"{self.kl_warmup_fraction!r}")
        if not number(self.beta):
            raise ConfigError(f"--beta: must be a positive number, got {self.beta!r}")
        if not number(self.free_bits, inclusive=True):
            raise ConfigError(f"--free-bits: must be a number >= 0 (nats per latent dimension), got {self.free_bits!r}")
        if self.free_bits and self.iw_train > 1:
            raise ConfigError("--free-bits: not with --iw-train K > 1 (free bits clamp the ELBO's KL term, which the "
                              "importance-weighted bound does not have)")
        if self.grad_clip is not None and not number(self.grad_clip):
            raise ConfigError(f"--grad-clip: must be a positive number (a gradient norm), got {self.grad_clip!r}")
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and 0 < self.ema < 1):
            raise ConfigError(f"--ema: the decay must be between 0 and 1 (e.g. 0.999), got {self.ema!r}")
        check_name(self.model)
        check_model_options(self.model_options)
        if not number(self.lr):
            raise ConfigError(f"--lr: must be a positive number, got {self.lr!r}")
        for name, value in (("checkpoint_minutes", self.checkpoint_minutes), ("dist_timeout", self.dist_timeout)):
            if value is not None and not number(value):
                raise ConfigError(f"--{name.replace('_', '-')}: must be a positive number, got {value!r}")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"--warmup-fraction: must be in [0, 1), got {self.warmup_fraction!r}")
        for f in dataclasses.fields(self):  # every setting with a fixed list of values
            allowed, value = f.metadata.get("choices"), getattr(self, f.name)
            if allowed is not None and value not in allowed and not (value is None and f.default is None):
                what = "model" if f.name == "model" else "encoder" if f.name == "encoder" else "value"
                raise ConfigError(f"--{f.name.replace('_', '-')}: unknown {what} {value!r} (choose from "
                                  f"{', '.join(allowed)})")
        if not (isinstance(self.test_fraction, (int, float)) and 0 < self.test_fraction < 1):
            raise ConfigError(f"--test-fraction: must be between 0 and 1, got {self.test_fraction!r}")
        if self.gaussian_sigma is not None and not number(self.gaussian_sigma):
            raise ConfigError(f"--gaussian-sigma: must be a positive number, got {self.gaussian_sigma!r}")
        if self.gaussian_sigma is not None and self.likelihood != "gaussian":
            raise ConfigError("--gaussian-sigma: only with --likelihood gaussian")
        if self.resident_max_bytes is not None and (isinstance(self.resident_max_bytes, bool) or not
                                                    isinstance(self.resident_max_bytes, int) or self.resident_max_bytes < 0):
            raise ConfigError(f"--resident-max-bytes: must be an integer >= 0, got {self.resident_max_bytes!r}")
        if self.data_dir is not None and self.data not in ("mnist", self.data_dir):
            raise ConfigError(f"--data-dir {self.data_dir} and --data {self.data}: give one of them")
        if self.dtype == "float64" and self.precision != "fp32":
            raise ConfigError("--precision bf16 needs --dtype float32")
        return self

    @property
    def source(self) -> str:
        """The data source: ``--data``, or the IDX folder ``--data-dir`` names."""
        return self.data_dir if self.data_dir is not None else self.data

    @property
    def quantize(self) -> bool:
        """Discrete likelihoods score values on the 256 levels of 8-bit data: resized values are rounded to them."""
        return self.likelihood == "logistic"

    @property
    def resize_mode(self) -> str:
        if self.resize == "auto":
            return "pad" if self.binarize == "dynamic" else "bilinear"
        return self.resize

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a config.json's settings (the names this convae knows; a run written before a setting existed gets
        its default)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"config: unknown settings {sorted(unknown)}")
        return cls(**d)


def check_model_options(options) -> None:
    if not isinstance(options, dict) or not all(isinstance(k, str) and k.isidentifier() for k in options):
        raise ConfigError(f"--model-option: give KEY=VALUE with KEY a Python name, got {options!r:.80}")
    for key, value in options.items():
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ConfigError(f"--model-option {key}: a number, true/false, null or text, not {value!r:.60}")


def parse_duration(text: str) -> float:
    """``"20m"``, ``"1h"``, ``"90s"``, ``"1h30m"``, ``"2.5h"`` (a bare number: seconds) -> seconds; a ConfigError
    naming --time-budget otherwise."""
    import re

    spec = str(text).strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s?)?", spec)
    if not spec or parts is None or not any(parts.groups()):
        raise ConfigError(f"--time-budget {text}: give a duration such as 20m, 1h, 90s or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not total > 0:
        raise ConfigError(f"--time-budget {text}: must be longer than zero")
    return total


def parse_model_options(items: list[str]) -> dict:
    """``["components=50", "flow=planar"]`` -> {"components": 50, "flow": "planar"}: each VALUE read as JSON where it
    parses (numbers, true/false, null), else kept as text."""
    import json

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-option {item}: give KEY=VALUE with KEY a Python name")
        if key in options:
            raise ConfigError(f"--model-option {item}: {key} is given twice")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        options[key] = value if isinstance(value, (str, int, float, bool, type(None))) else text
    check_model_options(options)
    return options


def settings_fields() -> list[dataclasses.Field]:
    """The settings a user can give (every field not marked internal)."""
    return [f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")]


def option_name(name: str) -> str:
    """The command-line option of setting ``name``: ``--batch-size``, or ``--no-tensorboard`` for a setting that is
    on by default."""
    field_ = TrainConfig.__dataclass_fields__[name]
    if field_.metadata.get("flag"):
        return field_.metadata["flag"]
    default = field_.default
    return f"--no-{name.replace('_', '-')}" if default is True else f"--{name.replace('_', '-')}"


RESUMABLE = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resumable"))


PRESETS: dict[str, dict] = {
    # The seed's exact recipe.
    "seed": dict(batch_size=32, lr=1e-3, lr_schedule="constant", precision="fp32", epochs=100),
    # The best test -ELBO per wall-clock second on a 2-core CPU (docs/results.md, "Quality per second"): the fully
    # connected VAE the seed compares with runs 7x more images per second than the seed model there (9 vs 71 MFLOP
    # per image per step) and reaches the seed's 10-epoch -ELBO in a fraction of the time; large batches pay off
    # for it, with a one-cycle schedule peaking at 2e-3.
    "fast": dict(model="fc", batch_size=128, lr=2e-3, lr_schedule="onecycle", warmup_fraction=0.05, precision="fp32",
                 epochs=10),
    # The best importance-weighted bound two CPU cores reach in an hour on binarized MNIST (docs/results.md, "The
    # best model two CPU cores train in an hour"): the PixelCNN-headed VAE in bf16 where the CPU multiplies bf16
    # natively (else fp32, said), batch 64, one cycle over the steps the budget holds. --time-budget sets the hour.
    "cpu-hour": dict(model="pixel", batch_size=64, lr=1e-3, lr_schedule="onecycle", warmup_fraction=0.25,
                     precision="bf16", binarize="dynamic", time_budget="1h"),
}


def with_preset(preset: str | None, given: dict) -> dict:
    """The settings of ``preset``'s recipe with the options ``given`` on top (and the preset's name in ``extra``); a
    length given (--epochs, --max-steps) replaces a preset's --time-budget."""
    values = {**PRESETS[preset], "extra": {"preset": preset}} if preset else {}
    if given.keys() & {"epochs", "max_steps"} and "time_budget" not in given:
        values.pop("time_budget", None)
    return {**values, **given}
