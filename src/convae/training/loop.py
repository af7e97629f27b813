"""The training loop: ``train(config)`` runs the seed's experiment and everything it writes.

A run folder holds ``config.json`` (settings, versions, device), ``metrics.jsonl`` (one record per epoch),
``log.txt`` (the lines printed), ``images/result{K}.png`` (the seed's picture) and ``checkpoints/``.
Batches are gathered by indexing the uint8 images held on the device; the loop never waits for the device
except where the progress bar reads the loss and at the end of an epoch.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__
from ..config import ConfigError, TrainConfig
from ..data import ImageData, load_data
from ..evaluation.elbo import EvalImages, entropy_floor, evaluate_neg_elbo, evaluation_images
from ..files import atomic_write_json, atomic_write_jsonl, read_jsonl
from ..models import VAE, build_model
from ..visualisation import seed_grid
from .checkpoint import latest_checkpoint, list_checkpoints, restore, save_checkpoint, section
from .engine import effective_precision, make_optimizer, make_train_step


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the step in flight finished and a checkpoint was written."""

    def __init__(self, run_dir: Path, step: int, signal_name: str):
        super().__init__(f"{signal_name} at step {step}: checkpoint written; resume with: convae train --resume {run_dir}")
        self.run_dir, self.step, self.signal_name = run_dir, step, signal_name


class NonFiniteLoss(RuntimeError):
    """The loss became inf or NaN; the last good checkpoint is left as it was."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict] = field(default_factory=list)
    model: VAE | None = None


# ----------------------------------------------------------------------------------------------------------
# Pieces of the loop


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def epoch_order(n: int, epoch: int, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """The order of the training images in ``epoch``: a function of (seed, epoch) alone, so resume needs no state."""
    if not config.shuffle:
        return torch.arange(n, device=device)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for ``step`` (0-based): constant, or one cycle (linear warm-up, cosine to lr / 100)."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup = max(1, int(config.warmup_fraction * total_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = config.lr / 100
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class StopSignals:
    """Turns SIGINT / SIGTERM into a flag the loop reads between steps (the step in flight always finishes)."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def describe_environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "convae": __version__, "device": str(device), "device_name": name,
            "threads": torch.get_num_threads(), "platform": platform.platform()}


def new_run_dir(out: str | None) -> Path:
    if out is None:
        base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return path
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"--out {path}: already exists and is not empty (use --resume {path} to continue that run)")
    return path


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, *, data: ImageData | None = None, resume: bool = False,
          log=print, argv: list[str] | None = None) -> TrainResult:
    """Train (or, with ``resume=True``, continue the run in ``config.out``) and return the run folder and metrics.

    Nothing is written until the settings, the data and any checkpoint have been checked.
    """
    config.validate()
    device = resolve_device(config.device)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    if dtype == torch.float64 and device.type == "mps":
        raise ConfigError("--dtype float64: MPS has no float64")

    # -- everything that can fail on bad input, before any file is written ---------------------------------
    data = data if data is not None else load_data(config.data_dir)
    data = data.subset(config.train_limit, config.test_limit).to(device)
    steps_per_epoch = len(data.train_images) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {config.batch_size}: larger than the {len(data.train_images)} training images")
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps or total_steps)

    precision = effective_precision(config, device, warn=lambda m: print(f"convae: {m}", file=sys.stderr))
    torch.manual_seed(config.seed)
    model = build_model(config.model, config.encoder, config.image_size).to(device=device, dtype=dtype)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config, device, capturable=device.type == "cuda" and config.cuda_graphs)

    step, train_seconds, epoch_loss_sum = 0, 0.0, torch.zeros((), dtype=torch.float64, device=device)
    if resume:
        run_dir = Path(config.out)
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if checkpoint.meta.get("model") != config.model:
            raise ConfigError(f"--resume {run_dir}: checkpoint is of model {checkpoint.meta.get('model')!r}, "
                              f"config says {config.model!r}")
        restore(checkpoint, model, optimizer)
        step, train_seconds = checkpoint.meta["step"], checkpoint.meta["train_seconds"]
        epoch_loss_sum = section(checkpoint, "extra")["epoch_loss_sum"].to(device)
        set_rng_state(section(checkpoint, "rng"), device)
        metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if m["step"] <= step]
    else:
        run_dir = new_run_dir(config.out)
        config.out = str(run_dir)
        metrics = []

    # -- the run folder ------------------------------------------------------------------------------------
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    settings = {"config": config.to_dict(), "environment": describe_environment(device), "precision": precision,
                "model_parameters": sum(p.numel() for p in model.parameters()),
                "steps_per_epoch": steps_per_epoch, "command": argv}
    atomic_write_json(run_dir / "config.json", settings)
    log_file = open(run_dir / "log.txt", "a")

    def say(line: str) -> None:
        log(line)
        log_file.write(line + "\n")
        log_file.flush()

    if resume:
        say(f"resuming {run_dir} at step {step} (epoch {step // steps_per_epoch + 1})")
    else:
        say(f"run folder {run_dir}: model {config.model}, {settings['model_parameters']:,} parameters, "
            f"{len(data.train_images)} training images, {steps_per_epoch} steps per epoch, device {device}")

    monitor = evaluation_images(data.train_images[:config.monitor_images], data.levels, config)
    test_set = evaluation_images(data.test_images, data.levels, config)
    floor = entropy_floor(test_set)
    show_bar = not config.quiet and sys.stderr.isatty()
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    step_counter = torch.full((), step, dtype=torch.long, device=device)
    train_step = make_train_step(model, optimizer, data.train_images, data.levels, config, dtype, precision, device)

    def write_checkpoint() -> Path:
        return save_checkpoint(
            run_dir / "checkpoints", model=model, optimizer=optimizer, rng=rng_state(device),
            extra_tensors={"epoch_loss_sum": epoch_loss_sum},
            meta={"model": config.model, "step": step, "epoch": math.ceil(step / steps_per_epoch),
                  "train_seconds": train_seconds}, keep=config.keep_checkpoints)

    def check_finite() -> None:
        bad = int(first_bad.item())
        if bad >= 0:
            previous = list_checkpoints(run_dir / "checkpoints")
            where = f"last good checkpoint: {previous[-1]}" if previous else "no checkpoint was written"
            raise NonFiniteLoss(f"loss is not finite at step {bad + 1} (epoch {bad // steps_per_epoch + 1}); "
                                f"stopped; {where}")

    model.train()
    with StopSignals() as stop:
        try:
            while step < last_step:
                epoch = step // steps_per_epoch + 1
                first_index = step % steps_per_epoch
                if first_index == 0:
                    epoch_loss_sum.zero_()
                order = epoch_order(len(data.train_images), epoch, config, device)
                bar = tqdm(total=steps_per_epoch, initial=first_index, desc=f"epoch {epoch}/{config.epochs}",
                           unit="batch", disable=not show_bar, leave=False, dynamic_ncols=True)
                started, steps_run = time.perf_counter(), 0
                for i in range(first_index, steps_per_epoch):
                    lr = learning_rate(config, step, total_steps)
                    loss = train_step(order[i * config.batch_size:(i + 1) * config.batch_size], lr)
                    epoch_loss_sum += loss
                    first_bad = torch.where(torch.isfinite(loss) | (first_bad >= 0), first_bad, step_counter)
                    step_counter += 1
                    step += 1
                    steps_run += 1
                    if show_bar and step % config.progress_every == 0:
                        elapsed = time.perf_counter() - started
                        bar.set_postfix(loss=f"{loss.item():.2f}",
                                        img_s=f"{steps_run * config.batch_size / max(elapsed, 1e-9):.0f}")
                        bar.update(config.progress_every)
                    if stop.received or step == last_step:
                        break
                bar.close()
                synchronize(device)
                seconds = time.perf_counter() - started
                train_seconds += seconds
                check_finite()

                epoch_done = step % steps_per_epoch == 0
                if not (epoch_done or step == last_step):  # interrupted mid-epoch
                    write_checkpoint()
                    break
                record = end_of_epoch(
                    model, config, run_dir, monitor=monitor, test_set=test_set, epoch=epoch, step=step,
                    partial=not epoch_done, train_loss=(epoch_loss_sum / (step - (epoch - 1) * steps_per_epoch)).item(),
                    floor=floor, precision=precision, lr=lr, train_seconds=train_seconds, seconds=seconds,
                    images=steps_run * config.batch_size)
                metrics.append(record)
                atomic_write_jsonl(run_dir / "metrics.jsonl", metrics)
                write_checkpoint()
                say(f"epoch {epoch}: L_tot = {record['L_tot']:.4f}, L_likelihood = {record['L_likelihood']:.4f}, "
                    f"L_KL = {record['L_KL']:.4f}")
                say(f"  test -ELBO = {record['test_neg_elbo']:.2f} nats/image (entropy floor {floor:.2f}), "
                    f"train loss {record['train_loss']:.2f}, {record['img_per_s']:.0f} img/s, "
                    f"{record['epoch_seconds']:.1f} s" + (" (stopped by --max-steps)" if not epoch_done else ""))
                if stop.received:
                    break
            if stop.received:
                raise TrainingInterrupted(run_dir, step, stop.received)
        finally:
            log_file.close()
    return TrainResult(run_dir, metrics, model)


def end_of_epoch(model: VAE, config: TrainConfig, run_dir: Path, *, monitor: EvalImages, test_set: EvalImages,
                 epoch: int, step: int, partial: bool, train_loss: float, floor: float, lr: float, precision: str,
                 train_seconds: float, seconds: float, images: int) -> dict:
    """What the seed does after each epoch (loss on the first training images, the 3x3 picture), plus the test set."""
    started = time.perf_counter()
    on_monitor = evaluate_neg_elbo(model, monitor, batch_size=len(monitor), precision=precision, seed=config.seed + 1)
    on_test = evaluate_neg_elbo(model, test_set, batch_size=config.eval_batch_size, precision=precision,
                                seed=config.seed + 1)
    model.eval()
    with torch.no_grad():
        p = next(model.parameters())
        x = monitor.floats(0, 9, p.dtype, p.device)
        generator = torch.Generator(device=p.device).manual_seed(config.seed + 1)
        reconstruction = torch.sigmoid(model(x, generator=generator).logits)
    model.train()
    name = f"result{epoch}.png" if not partial else f"result{epoch}-step{step}.png"
    seed_grid(x, reconstruction, run_dir / "images" / name, title=f"epoch {epoch}, step {step}")
    return {
        "epoch": epoch, "step": step, "partial_epoch": partial,
        "L_tot": on_monitor.neg_elbo, "L_likelihood": on_monitor.likelihood, "L_KL": on_monitor.kl,
        "test_neg_elbo": on_test.neg_elbo, "test_L_likelihood": on_test.likelihood, "test_L_KL": on_test.kl,
        "entropy_floor": floor, "train_loss": train_loss, "lr": lr,
        "train_seconds": train_seconds, "epoch_seconds": seconds, "img_per_s": images / max(seconds, 1e-9),
        "eval_seconds": time.perf_counter() - started,
    }
