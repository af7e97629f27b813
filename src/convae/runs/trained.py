"""Opening a trained (or interrupted) run folder: its settings, its model at the newest checkpoint, its data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data import EvalImages, ImageData, evaluation_images, load_for_config
from ..errors import CheckpointError, ConfigError
from ..models import VAE, build_run_model
from ..runtime import resolve_device
from .checkpoint import restore, use_averaged_weights, use_population_statistics
from .folder import RunDir


@dataclass
class Run:
    """A run folder opened for use: its settings and its model (in eval mode, on the device asked for) at the
    newest checkpoint, with the averaged weights where it kept them."""

    path: Path
    config: TrainConfig
    settings: dict
    model: VAE
    step: int
    metrics: list[dict]
    weights_sha256: str = ""  # of the weights evaluated (averaged ones under --ema): what an evaluation is of
    batchnorm: str | None = None  # what BatchNorm normalises by in evaluation (None: the model has none)
    code_changed: str | None = None  # how the plug-in's code differs from the code the run was trained with

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)

    def data(self, test_limit: int | None = None) -> ImageData:
        data = load_for_config(self.config, progress=False, run_path=self.path).subset(
            None, test_limit or self.config.test_limit)
        check_labels(data, self.model.classes, self.path)
        return data

    def test_set(self, data: ImageData) -> EvalImages:
        return evaluation_images(data.test_images, data.levels, self.config, data.test_labels)


def check_labels(data: ImageData, classes: int, run_path: Path) -> None:
    """A conditional model can only be given labels of the classes it was trained on."""
    if classes and data.class_count() > classes:
        raise ConfigError(f"{data.name}: labels up to {data.class_count() - 1}, but the model of {run_path} is "
                          f"conditional on the classes 0..{classes - 1}")


def open_run(path: str | Path, device: str = "auto", expect_model: str | None = None, local_rank: int = 0,
             step: int | None = None) -> Run:
    """Load ``path``'s config and newest checkpoint (or the one of ``step``); a missing folder, a foreign checkpoint
    or a model that isn't the expected one is a one-line error naming the folder."""
    run = RunDir(path)
    settings = run.read_settings()
    config = run.read_config(settings)
    if expect_model is not None and config.model != expect_model:
        raise ConfigError(f"{run.path}: a run of model {config.model!r}, not {expect_model!r}")
    if not run.checkpoint_files():
        raise CheckpointError(f"{run.path}: has no checkpoint yet (the run never reached its first one): no trained "
                              "model to use yet")
    if step is not None:
        checkpoint = run.checkpoint_at(step)
    else:
        try:
            checkpoint = run.latest_checkpoint()
        except CheckpointError:  # a run in training may have just replaced it: once more, with the newest there is
            checkpoint = run.latest_checkpoint()
    if checkpoint.meta.get("model") != config.model:
        raise CheckpointError(f"{checkpoint.path}: checkpoint of model {checkpoint.meta.get('model')!r}, "
                              f"but {run.config_file} says {config.model!r}")
    dev = resolve_device(device, local_rank)
    data = settings.get("data", {})
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    # in the run's dtype before the weights go in: a float64 run's weights would lose their last digits in float32
    classes = data.get("class_count", 0) if config.conditional else 0  # the data's, which the model is conditional on
    model = build_run_model(config, data.get("shape", [1])[0], classes, data.get("train_images")).to(dtype)
    restore(checkpoint, model, None)
    if config.ema:
        use_averaged_weights(model, checkpoint.tensors)  # what the run evaluated with
    batchnorm = use_population_statistics(model, checkpoint.tensors)  # ... and the statistics of those weights
    weights = weights_sha256(model)
    model = model.to(dev).eval()
    return Run(run.path, config, settings, model, checkpoint.meta["step"], run.metrics(), weights, batchnorm,
               run.code_changed)


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes, bytes): the same for the same weights, whichever file
    they came from (a checkpoint with or without the optimizer's state)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
