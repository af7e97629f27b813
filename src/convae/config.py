"""Training settings: one dataclass whose defaults are the seed's recipe, validated before anything runs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting is out of range or unknown; the message names the option."""


DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
LR_SCHEDULES = ("constant", "onecycle")
BINARIZE = ("none", "dynamic")
RESIZE = ("auto", "bilinear", "pad", "area")
CHANNELS = ("auto", "1", "3")
LIKELIHOOD_NAMES = ("bernoulli", "continuous-bernoulli", "logistic", "gaussian")


@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults reproduce the seed: batch 32, Adam 1e-3, 100 epochs."""

    model: str = "seed"
    encoder: str | None = None           # None: the model's own (the seed's is "mlp")
    conditional: bool = False            # condition encoder and decoder on the data's class labels (a CVAE)
    epochs: int = 100
    max_steps: int | None = None         # stop after this many steps in all, ending like an epoch
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "constant"        # "onecycle": linear warm-up to lr, then cosine down to lr / 100
    warmup_fraction: float = 0.25        # of all steps, for "onecycle"
    beta: float = 1.0                    # weight of the KL term (1: the ELBO)
    kl_warmup: int = 0                   # steps over which the KL weight rises linearly from 0 to beta
    free_bits: float = 0.0               # nats per latent dimension of batch-mean KL left unpenalised
    iw_train: int = 1                    # K > 1: train on the importance-weighted bound (IWAE) with K samples
    grad_clip: float | None = None       # rescale each step's gradient to at most this L2 norm
    ema: float | None = None             # decay of an exponential moving average of the weights, used to evaluate
    seed: int = 0
    dtype: str = "float32"               # parameter dtype; "float64" is the seed's arithmetic
    precision: str = "fp32"              # "bf16": autocast the model, keep the loss in float32
    compile: bool = False                # torch.compile the forward pass and loss
    cuda_graphs: bool = True             # on CUDA, record the whole step once and replay it
    channels_last: bool = False          # NHWC activations (measured: no gain for this model on CPU)
    device: str = "auto"
    shuffle: bool = True                 # False: the seed's in-order batches
    binarize: str = "none"               # "dynamic": Bernoulli-sample the pixels each time they are drawn
    resize: str = "auto"                 # MNIST 28 -> 32: "bilinear" (the seed), "pad"; auto: pad when binarized.
                                         # prepared sources: centre-crop, then "area" (auto) or "bilinear"; "pad"
    data: str = "mnist"                  # mnist, shapes[:N], a folder of images or IDX files, a .npy/.npz file
    data_dir: str | None = None          # four IDX files (the older spelling of --data DIR)
    image_size: int = 32
    channels: str = "auto"               # "1" gray, "3" colour, auto: from the data
    likelihood: str = "bernoulli"        # p(x | z): bernoulli (the seed), continuous-bernoulli, logistic, gaussian
    gaussian_sigma: float | None = None  # gaussian: a fixed standard deviation instead of a learned one
    test_fraction: float = 0.1           # held out as the test set where the source has no split of its own
    cache_dir: str | None = None         # prepared images; default: .convae-cache beside the run folder
    resident_max_bytes: int | None = None  # larger uint8 training sets stream from the memory-mapped cache
    train_limit: int | None = None       # use only the first N training images (quick runs, tests)
    test_limit: int | None = None        # evaluate only the first N test images
    monitor_images: int = 32             # the seed prints the loss on the first 32 training images
    eval_batch_size: int = 500
    progress_every: int = 25             # steps between progress updates: bar, steps.jsonl, TensorBoard (each syncs)
    keep_checkpoints: int = 2
    checkpoint_every: int | None = None  # also checkpoint every N steps within an epoch (epoch ends always)
    checkpoint_minutes: float | None = None  # also checkpoint when this many minutes passed since the last one
    dist_timeout: float = 300.0          # seconds a collective (or joining the group) may wait for a peer
    quiet: bool = False
    tensorboard: bool = True             # event files in RUN/tb (where the tensorboard package is installed)
    report: bool = True                  # refresh RUN/report.html at epoch ends (throttled) and after the last
    out: str | None = None
    extra: dict = field(default_factory=dict)  # free-form notes, e.g. the preset a run came from

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
                     "progress_every", "keep_checkpoints"):
            positive(name, getattr(self, name))
        for name in ("max_steps", "train_limit", "test_limit", "checkpoint_every"):
            positive(name, getattr(self, name), allow_none=True)
        positive("iw_train", self.iw_train)
        if isinstance(self.kl_warmup, bool) or not isinstance(self.kl_warmup, int) or self.kl_warmup < 0:
            raise ConfigError(f"--kl-warmup: must be an integer >= 0 (steps), got {self.kl_warmup!r}")
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
        if not number(self.lr):
            raise ConfigError(f"--lr: must be a positive number, got {self.lr!r}")
        for name, value in (("checkpoint_minutes", self.checkpoint_minutes), ("dist_timeout", self.dist_timeout)):
            if value is not None and not number(value):
                raise ConfigError(f"--{name.replace('_', '-')}: must be a positive number, got {value!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"--warmup-fraction: must be in [0, 1), got {self.warmup_fraction!r}")
        for name, allowed in (("dtype", DTYPES), ("precision", PRECISIONS), ("device", DEVICES),
                              ("lr_schedule", LR_SCHEDULES), ("binarize", BINARIZE),
                              ("resize", RESIZE), ("channels", CHANNELS), ("likelihood", LIKELIHOOD_NAMES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')}: unknown value {value!r} (choose from {', '.join(allowed)})")
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
        from .models import ENCODERS, MODELS  # late import: models import torch and nothing of ours

        if self.model not in MODELS:
            raise ConfigError(f"--model: unknown model {self.model!r} (choose from {', '.join(MODELS)})")
        if self.encoder is not None and self.encoder not in ENCODERS:
            raise ConfigError(f"--encoder: unknown encoder {self.encoder!r} (choose from {', '.join(ENCODERS)})")
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"config: unknown settings {sorted(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict] = {
    # The seed's exact recipe.
    "seed": dict(batch_size=32, lr=1e-3, lr_schedule="constant", precision="fp32", epochs=100),
    # The best test -ELBO per wall-clock second on a 2-core CPU (docs/results.md, "Quality per second"): the fully
    # connected VAE the seed compares with runs 7x more images per second than the seed model there (9 vs 71 MFLOP
    # per image per step) and reaches the seed's 10-epoch -ELBO in a fraction of the time; large batches pay off
    # for it, with a one-cycle schedule peaking at 2e-3.
    "fast": dict(model="fc", batch_size=128, lr=2e-3, lr_schedule="onecycle", warmup_fraction=0.05, precision="fp32",
                 epochs=10),
}
