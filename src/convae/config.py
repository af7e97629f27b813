"""Training settings: one dataclass whose defaults are the seed's recipe, validated before anything runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting is out of range or unknown; the message names the option."""


DTYPES = ("float32", "float64")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
LR_SCHEDULES = ("constant", "onecycle")
BINARIZE = ("none", "dynamic")
RESIZE = ("auto", "bilinear", "pad")


@dataclass
class TrainConfig:
    """Every setting of a training run. The defaults reproduce the seed: batch 32, Adam 1e-3, 100 epochs."""

    model: str = "seed"
    encoder: str | None = None           # None: the model's own (the seed's is "mlp")
    epochs: int = 100
    max_steps: int | None = None         # stop after this many steps in all, ending like an epoch
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "constant"        # "onecycle": linear warm-up to lr, then cosine down to lr / 100
    warmup_fraction: float = 0.25        # of all steps, for "onecycle"
    seed: int = 0
    dtype: str = "float32"               # parameter dtype; "float64" is the seed's arithmetic
    precision: str = "fp32"              # "bf16": autocast the model, keep the loss in float32
    compile: bool = False                # torch.compile the forward pass and loss
    cuda_graphs: bool = True             # on CUDA, record the whole step once and replay it
    channels_last: bool = False          # NHWC activations (measured: no gain for this model on CPU)
    device: str = "auto"
    shuffle: bool = True                 # False: the seed's in-order batches
    binarize: str = "none"               # "dynamic": Bernoulli-sample the pixels each time they are drawn
    resize: str = "auto"                 # 28 -> 32: "bilinear" (the seed), "pad"; auto: pad when binarized
    data_dir: str | None = None          # four IDX files; None: the embedded MNIST
    image_size: int = 32
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
    report: bool = True                  # refresh RUN/report.html at every epoch end
    out: str | None = None
    extra: dict = field(default_factory=dict)  # free-form notes, e.g. the preset a run came from

    def validate(self) -> "TrainConfig":
        def positive(name: str, value, allow_none: bool = False):
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be a positive integer, got {value!r}")

        for name in ("epochs", "batch_size", "image_size", "monitor_images", "eval_batch_size",
                     "progress_every", "keep_checkpoints"):
            positive(name, getattr(self, name))
        for name in ("max_steps", "train_limit", "test_limit", "checkpoint_every"):
            positive(name, getattr(self, name), allow_none=True)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"--lr: must be a positive number, got {self.lr!r}")
        for name, value in (("checkpoint_minutes", self.checkpoint_minutes), ("dist_timeout", self.dist_timeout)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')}: must be a positive number, got {value!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"--warmup-fraction: must be in [0, 1), got {self.warmup_fraction!r}")
        for name, allowed in (("dtype", DTYPES), ("precision", PRECISIONS), ("device", DEVICES),
                              ("lr_schedule", LR_SCHEDULES), ("binarize", BINARIZE),
                              ("resize", RESIZE)):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')}: unknown value {value!r} (choose from {', '.join(allowed)})")
        if self.dtype == "float64" and self.precision != "fp32":
            raise ConfigError("--precision bf16 needs --dtype float32")
        from .models import ENCODERS, MODELS  # late import: models import torch and nothing of ours

        if self.model not in MODELS:
            raise ConfigError(f"--model: unknown model {self.model!r} (choose from {', '.join(MODELS)})")
        if self.encoder is not None and self.encoder not in ENCODERS:
            raise ConfigError(f"--encoder: unknown encoder {self.encoder!r} (choose from {', '.join(ENCODERS)})")
        return self

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
    # The best quality per wall-clock second measured on the 2-core AVX2 development CPU (docs/performance.md):
    # larger batches buy little throughput there (1.4x at 256) and cost more than that in sample efficiency, and
    # bf16 is not native, so: batch 32, a one-cycle schedule peaking at 2e-3, 3 epochs.
    "fast": dict(batch_size=32, lr=2e-3, lr_schedule="onecycle", warmup_fraction=0.05, precision="fp32", epochs=3),
}
