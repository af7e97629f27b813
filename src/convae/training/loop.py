"""The training loop: ``train(config)`` runs the seed's experiment and everything it writes.

A run folder holds ``config.json`` (settings, versions, device), ``metrics.jsonl`` (one record per epoch),
``log.txt`` (the lines printed), ``images/result{K}.png`` (the seed's picture) and ``checkpoints/``.
Batches are gathered by indexing the uint8 images held on the device; the loop never waits for the device
except where the progress bar reads the loss, at checkpoints and at the end of an epoch.

Under torchrun every process runs this same loop on its own slice of each global batch (``Runtime.shard``),
DDP averages the gradients, and rank 0 alone prints and writes; see docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
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
from ..data import DataError, ImageData, StreamedImages, load_for_config, resident_limit
from ..faults import (FileSystemFault, OutOfMemory, RunBusy, RunLock, available_memory, describe_os_error,
                      first_line, format_bytes, is_out_of_memory)
from ..evaluation.elbo import EvalImages, entropy_floor, evaluate_neg_elbo, evaluation_images
from ..files import atomic_write_json, read_jsonl
from ..models import VAE, build_run_model
from ..objectives import bits_per_dim
from ..runtime import Runtime, resolve_device, synchronize
from ..reporting.html import write_report
from ..reporting.sinks import RunLogger
from ..visualisation import seed_grid, tile
from .checkpoint import (Checkpoint, CheckpointError, latest_checkpoint, list_checkpoints, restore,
                         save_checkpoint, section)
from .averaging import WeightAverage
from .engine import effective_precision, make_optimizer, make_train_step, uses_cuda_graphs


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


def epoch_order(n: int, epoch: int, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """The order of the training images in ``epoch``: a function of (seed, epoch) alone, so resume needs no state
    and every rank of a torchrun group computes the same order."""
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


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Give a rank > 0 its own noise stream (dropout, z, binarization). Rank 0 keeps the stream a single-process
    run has, so a world of one is the plain run bit for bit."""
    if rank:
        torch.manual_seed((seed + 1) * 2_654_435_761 + 97 * rank + 7_919 * step)


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
    """A fresh run folder. A convae folder that never reached its first checkpoint (a run stopped while it started
    up) is started again: nothing in it can be resumed."""
    if out is None:
        base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return path
    path = Path(out)
    unstarted = (path / "config.json").is_file() and not list_checkpoints(path / "checkpoints")
    if path.exists() and not unstarted and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"--out {path}: already exists and is not empty (use --resume {path} to continue that run)")
    return path


class Window:
    """The loss terms summed on the device since the last progress record, and the clock at its start."""

    def __init__(self, device: torch.device, step: int, started: float):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.step, self.started = step, started

    def close(self, runtime: Runtime, step: int, epoch: int, lr: float, batch: int) -> dict:
        """The record for ``steps.jsonl``: means over the window (of the global batch under torchrun); then reopen."""
        now = time.perf_counter()
        sums = runtime.all_reduce(self.sums.cpu()) / runtime.world_size
        n = step - self.step
        loss, likelihood, kl = (sums / n).tolist()
        record = {"step": step, "epoch": epoch, "loss": loss, "L_likelihood": likelihood, "L_KL": kl, "lr": lr,
                  "img_per_s": n * batch / max(now - self.started, 1e-9)}
        self.sums.zero_()
        self.step, self.started = step, now
        return record


@dataclass
class Start:
    """Where a run begins, decided by rank 0 (the only rank that reads the run folder) and sent to the others."""

    run_dir: Path
    checkpoint: Checkpoint | None = None
    metrics: list[dict] = field(default_factory=list)


def check_same_data(run_dir: Path, fingerprint: str, data: ImageData) -> None:
    """A resumed run must see the data it started with: the fingerprint in its config.json (runs from before
    fingerprints were recorded are not checked)."""
    try:
        recorded = json.loads((run_dir / "config.json").read_text()).get("data", {})
    except (OSError, ValueError):
        return
    if recorded.get("fingerprint") not in (None, fingerprint):
        raise ConfigError(f"--resume {run_dir}: the data differ from the run's ({recorded.get('name')}, "
                          f"{recorded.get('train_images')} + {recorded.get('test_images')} images, fingerprint "
                          f"{recorded['fingerprint'][:12]}; now {data.name}, {len(data.train_images)} + "
                          f"{len(data.test_images)} images, {fingerprint[:12]}); resume with the data it started "
                          "with, or start a new run")


def find_start(config: TrainConfig, resume: bool, auto_resume: bool) -> Start:
    if auto_resume and config.out is not None:
        resume = bool(list_checkpoints(Path(config.out) / "checkpoints"))
    if not resume:
        return Start(new_run_dir(config.out))
    run_dir = Path(config.out)
    if not list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"--resume {run_dir}: the run never reached its first checkpoint; start it again with "
                          f"--out {run_dir} (or --auto-resume --out {run_dir})")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint.meta.get("model") != config.model:
        raise ConfigError(f"--resume {run_dir}: checkpoint is of model {checkpoint.meta.get('model')!r}, "
                          f"config says {config.model!r}")
    step = checkpoint.meta["step"]
    return Start(run_dir, checkpoint, [m for m in read_jsonl(run_dir / "metrics.jsonl") if m["step"] <= step])


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, *, data: ImageData | None = None, resume: bool = False, auto_resume: bool = False,
          log=print, argv: list[str] | None = None, runtime: Runtime | None = None) -> TrainResult:
    """Train (or, with ``resume=True``, continue the run in ``config.out``) and return the run folder and metrics.

    ``auto_resume``: continue the run in ``config.out`` if it has a checkpoint, else start it there (what a
    restarted torchrun group or a re-queued job wants). Under torchrun (``RANK``/``WORLD_SIZE`` set) the process
    group is joined here unless ``runtime`` is given. Nothing is written until the settings, the data and any
    checkpoint have been checked, on every rank.
    """
    config.validate()
    own_runtime = runtime is None
    runtime = runtime or Runtime.from_environment(config.dist_timeout)
    try:
        return Trainer(config, runtime, data=data, resume=resume, auto_resume=auto_resume, log=log, argv=argv).run()
    finally:
        if own_runtime:
            runtime.close()


class Trainer:
    """Set up in ``__init__``; ``run`` = ``run_epoch`` until the last step; ``end_epoch`` and ``save`` beside."""

    def __init__(self, config: TrainConfig, runtime: Runtime, *, data: ImageData | None, resume: bool,
                 auto_resume: bool, log, argv):
        self.lock, self.log = None, log
        try:
            self.setup(config, runtime, data, resume, auto_resume, argv)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def setup(self, config: TrainConfig, runtime: Runtime, data: ImageData | None, resume: bool, auto_resume: bool,
              argv) -> None:
        self.config, self.runtime = config, runtime
        runtime.check_batch(config.batch_size)
        if runtime.distributed and config.iw_train > 1:
            raise ConfigError("--iw-train: K > 1 runs in one process (its K-sample pass bypasses DDP's forward); "
                              "drop it under torchrun")
        device = self.device = resolve_device(config.device, runtime.local_rank)
        if runtime.distributed and device.type == "mps":
            raise ConfigError("--device mps: torchrun runs need CPU (gloo) or CUDA (NCCL) devices")
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        if self.dtype == torch.float64 and device.type == "mps":
            raise ConfigError("--dtype float64: MPS has no float64")

        # -- everything that can fail on bad input, before any file is written, on every rank --------------------
        # Rank 0 first: it alone prepares a data cache that the others then open.
        start, error = None, None
        if runtime.is_writer:
            try:
                self.load(data)
                start = find_start(config, resume, auto_resume)
                if start.checkpoint is not None:
                    self.lock = RunLock(start.run_dir, "convae train --resume").acquire()
                    check_same_data(start.run_dir, self.fingerprint, self.data)
            except (ConfigError, DataError, CheckpointError, RunBusy) as e:
                error = e
        runtime.agree_on_errors(error)
        if not runtime.is_writer:
            try:
                self.load(data)
            except (ConfigError, DataError) as e:
                error = e
        runtime.agree_on_errors(error)
        start = runtime.broadcast(start)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, config.max_steps or self.total_steps)

        say_stderr = (lambda m: print(f"convae: {m}", file=sys.stderr)) if runtime.is_writer else (lambda m: None)
        self.precision = effective_precision(config, device, warn=say_stderr)
        torch.manual_seed(config.seed)
        self.check_memory()
        self.model = build_run_model(config, self.data.shape[0], self.classes).to(device=device, dtype=self.dtype)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        step_module = runtime.wrap(self.model, device)
        graphs = uses_cuda_graphs(config, device, eager_only=runtime.distributed or self.streamed is not None)
        self.optimizer = make_optimizer(self.model, config, device, capturable=graphs)
        self.average = WeightAverage(self.model, config.ema) if config.ema else None

        self.step, self.train_seconds = 0, 0.0
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # this rank's losses this epoch
        if start.checkpoint is not None:
            self.restore(start.checkpoint)
        else:
            seed_rank(config.seed, runtime.rank)
        self.run_dir = start.run_dir
        config.out = str(self.run_dir)
        self.complete = start.checkpoint is not None and self.step >= self.last_step
        if self.complete and not auto_resume:
            raise ConfigError(f"--resume {self.run_dir}: the run is already complete at step {self.step} (epoch "
                              f"{math.ceil(self.step / self.steps_per_epoch)} of {config.epochs}); extend it with "
                              f"--epochs N (more than {config.epochs}) or --max-steps N (more than {self.step})")

        # -- the run folder (rank 0) ------------------------------------------------------------------------------
        self.settings = {"config": config.to_dict(), "environment": describe_environment(device),
                         "precision": self.precision,
                         "model_parameters": sum(p.numel() for p in self.model.parameters()),
                         "steps_per_epoch": self.steps_per_epoch, "command": argv,
                         "data": {**self.data.details, "name": self.data.name, "shape": list(self.data.shape),
                                  "levels": self.data.levels,
                                  "train_images": len(self.data.train_images), "test_images": len(self.data.test_images),
                                  "classes": self.data.classes, "class_count": self.classes,
                                  "likelihood": self.model.likelihood.name,
                                  "training_images_bytes": self.data.train_images.numel(),
                                  "fingerprint": self.fingerprint,
                                  "streamed": self.streamed is not None},
                         "distributed": {**runtime.describe(device), "batch_per_rank": config.batch_size // runtime.world_size,
                                         "batchnorm": runtime.batchnorm_mode(device), "cuda_graphs": graphs}}
        writes = runtime.is_writer and not self.complete
        if writes:
            self.create_run_folder()
        self.logger = RunLogger(self.run_dir, active=writes, echo=self.log, tensorboard=config.tensorboard,
                                resume_step=self.step if start.checkpoint is not None else None,
                                hparams=config.to_dict(), metrics=start.metrics)
        self.announce(start)

        self.monitor = evaluation_images(self.data.train_images[:config.monitor_images], self.data.levels, config,
                                         self.data.train_labels[:config.monitor_images])
        self.test_set = evaluation_images(self.data.test_images, self.data.levels, config, self.data.test_labels)
        # the least a Bernoulli decoder can score on these targets; for other likelihoods it means nothing
        self.floor = entropy_floor(self.test_set) if self.model.likelihood.entropy_floor else None
        self.show_bar = runtime.is_writer and not config.quiet and sys.stderr.isatty()
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.step_counter = torch.full((), self.step, dtype=torch.long, device=device)
        self.train_step = make_train_step(step_module, self.optimizer, self.streamed or self.data.train_images,
                                          self.data.levels, config, self.dtype, self.precision, device,
                                          eager_only=runtime.distributed or self.streamed is not None,
                                          labels=self.data.train_labels if config.conditional else None)
        self.last_save, self.stop = time.monotonic(), None
        self.report_drawn, self.report_cost = 0.0, 0.0

    def check_memory(self) -> None:
        """Refuse settings whose weights, gradients, Adam's moments (and average) and one batch's input cannot fit
        in the memory left on the device; the model is built on PyTorch's meta device to count, allocating nothing.
        Activations are not counted: an allocation that fails later is caught and reported the same way."""
        config = self.config
        try:
            with torch.device("meta"):
                probe = build_run_model(config, self.data.shape[0], self.classes)
        except ConfigError:
            raise
        except Exception:  # a layer that cannot be built on meta: leave it to the real allocation
            return
        parameters = sum(p.numel() for p in probe.parameters())
        width = 8 if self.dtype == torch.float64 else 4
        state = parameters * width * (5 if config.ema else 4)
        batch = (config.batch_size // self.runtime.world_size) * config.iw_train
        inputs = batch * self.data.shape[0] * config.image_size ** 2 * width
        available = available_memory(self.device)
        if available is not None and state + inputs > available:
            raise OutOfMemory(
                f"--model {config.model} at --image-size {config.image_size}: {parameters:,} parameters need "
                f"{format_bytes(state)} for weights, gradients and optimizer state, and a batch of "
                f"{config.batch_size} needs {format_bytes(inputs)} more, but {format_bytes(available)} is available "
                f"on {self.device}; use a smaller --image-size or --batch-size, or another --model")

    def create_run_folder(self) -> None:
        """The folder, its lock, ``images/`` and ``config.json``; a fault here removes what this call made."""
        made = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.lock is None:
                self.lock = RunLock(self.run_dir, "convae train").acquire()
            (self.run_dir / "images").mkdir(exist_ok=True)
            atomic_write_json(self.run_dir / "config.json", self.settings)
        except OSError as e:
            if self.lock is not None:
                self.lock.release()
            if made:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise FileSystemFault(f"{describe_os_error(e)}; nothing was trained") from None
        if self.lock.previous:
            self.log(f"took over the lock of {self.run_dir} from process {self.lock.previous.get('pid')} on "
                     f"{self.lock.previous.get('host')}, which ended without releasing it")

    def load(self, data: ImageData | None) -> None:
        """The run's data on the device, or (larger than ``--resident-max-bytes``) streamed from its cache."""
        config = self.config
        data = data if data is not None else load_for_config(config, progress=self.runtime.is_writer and not config.quiet)
        data = data.subset(config.train_limit, config.test_limit)
        self.fingerprint = data.fingerprint() if self.runtime.is_writer else None
        self.classes = data.class_count() if config.conditional else 0
        if config.conditional and self.classes < 2:
            found = "one class only" if self.classes == 1 else "no class labels (every image has label 0)"
            raise ConfigError(f"--conditional: {config.source} has {found}; conditioning needs labelled data: MNIST, "
                              "a folder with one sub-folder per class, or an .npz with labels")
        streamed = data.train_images.numel() > resident_limit(self.device, config.resident_max_bytes)
        self.data = data.to(self.device, resident=not streamed)
        self.streamed = StreamedImages(self.data.train_images, self.device) if streamed else None
        self.steps_per_epoch = len(self.data.train_images) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"--batch-size {config.batch_size}: larger than the "
                              f"{len(self.data.train_images)} training images")

    def restore(self, checkpoint: Checkpoint) -> None:
        """Model and optimizer as saved; this rank's RNG and running sums when the world size is the same."""
        restore(checkpoint, self.model, self.optimizer)
        if self.average is not None:
            self.average.load(checkpoint.tensors)
        self.step, self.train_seconds = checkpoint.meta["step"], checkpoint.meta["train_seconds"]
        saved_world, rank = checkpoint.meta.get("world_size", 1), self.runtime.rank
        sums = [section(checkpoint, "extra", r)["epoch_loss_sum"] for r in range(saved_world)]
        if saved_world == self.runtime.world_size:
            self.loss_sum = sums[rank].to(self.device)
        else:  # another world size: each rank's share of the epoch's losses so far is the mean of the old ranks'
            self.loss_sum = torch.stack(sums).mean().to(self.device)
        if rank < saved_world:
            set_rng_state(section(checkpoint, "rng", rank), self.device)
        else:
            seed_rank(self.config.seed, rank, self.step)
        self.saved_world = saved_world

    def say(self, line: str) -> None:
        self.logger.say(line)

    def announce(self, start: Start) -> None:
        d = self.settings["distributed"]
        if start.checkpoint is not None:
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            self.say(f"resuming {self.run_dir} at step {self.step} (epoch {self.step // self.steps_per_epoch + 1})"
                     + (f", torchrun restart {restart}" if restart != "0" else "")
                     + (f", written by {self.saved_world} process(es), now {d['world_size']}"
                        if self.saved_world != d["world_size"] else ""))
        else:
            self.say(f"run folder {self.run_dir}: model {self.config.model}, {self.settings['model_parameters']:,} "
                     f"parameters, {len(self.data.train_images)} training images, {self.steps_per_epoch} steps per "
                     f"epoch, device {self.device}")
        if self.runtime.distributed:
            self.say(f"torchrun: {d['world_size']} process(es) on {d['nodes']} node(s), backend {d['backend']}, "
                     f"{d['batch_per_rank']} images per process per step; BatchNorm statistics: {d['batchnorm']}"
                     + (" (each process normalises by its own slice; SyncBatchNorm needs CUDA)"
                        if d["batchnorm"] == "per-rank" else ""))

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.complete:  # a re-queued job that had finished: nothing to do, nothing to write
            if self.lock is not None:
                self.lock.release()
            if self.runtime.is_writer:
                self.log(f"{self.run_dir} is already complete at step {self.step}; nothing to do")
            return TrainResult(self.run_dir, self.logger.metrics, self.model)
        self.model.train()
        with StopSignals() as signals:
            try:
                while self.step < self.last_step and self.stop is None:
                    self.run_epoch(signals)
            except OSError as e:
                raise FileSystemFault(f"{describe_os_error(e)}; training stopped at step {self.step}; "
                                      f"{self.last_good()}") from None
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                raise OutOfMemory(f"out of memory at step {self.step + 1} ({first_line(e, 160)}); try a smaller --batch-size, "
                                  f"--eval-batch-size or --iw-train; {self.last_good()}") from None
            finally:
                with contextlib.suppress(OSError):  # the fault being reported may be the disk these flush to
                    self.logger.close()
                if self.streamed is not None:
                    self.streamed.close()
                if self.lock is not None:
                    self.lock.release()
        if self.stop is not None:
            raise TrainingInterrupted(self.run_dir, self.step, self.stop)
        return TrainResult(self.run_dir, self.logger.metrics, self.model)

    def run_epoch(self, signals: StopSignals) -> None:
        config, batch = self.config, self.config.batch_size
        epoch, first_index = self.step // self.steps_per_epoch + 1, self.step % self.steps_per_epoch
        if first_index == 0:
            self.loss_sum.zero_()
        order = epoch_order(len(self.data.train_images), epoch, config,
                            self.device if self.streamed is None else torch.device("cpu"))
        last_epoch = math.ceil(self.last_step / self.steps_per_epoch)
        bar = tqdm(total=self.steps_per_epoch * batch, initial=first_index * batch, desc=f"epoch {epoch}/{last_epoch}",
                   unit="img", unit_scale=False, disable=not self.show_bar, leave=False, dynamic_ncols=True)
        self.epoch_started, steps_run = time.perf_counter(), 0
        self.window = Window(self.device, self.step, self.epoch_started)
        for i in range(first_index, self.steps_per_epoch):
            lr = learning_rate(config, self.step, self.last_step)
            if self.streamed is not None and i + 1 < self.steps_per_epoch:
                self.streamed.prefetch(self.runtime.shard(order[(i + 1) * batch:(i + 2) * batch]))
            terms = self.train_step(self.runtime.shard(order[i * batch:(i + 1) * batch]), lr, self.step)
            if self.average is not None:
                self.average.update()
            loss = terms[0]
            self.loss_sum += loss
            self.window.sums += terms
            self.first_bad = torch.where(torch.isfinite(loss) | (self.first_bad >= 0), self.first_bad, self.step_counter)
            self.step_counter += 1
            self.step += 1
            steps_run += 1
            if self.step % config.progress_every == 0:
                record = self.window.close(self.runtime, self.step, epoch, lr, batch)
                self.logger.log_steps(record)
                bar.set_postfix(loss=f"{record['loss']:.2f}", img_s=f"{record['img_per_s']:.0f}")
                bar.update((i + 1) * batch - bar.n)
            stop, save_now = self.control_point(signals)
            if stop or self.step == self.last_step:
                break
            if save_now and self.step % self.steps_per_epoch:  # an epoch end checkpoints anyway
                self.save()
        bar.close()
        synchronize(self.device)
        seconds = time.perf_counter() - self.epoch_started
        self.train_seconds += seconds
        self.check_finite()

        epoch_done = self.step % self.steps_per_epoch == 0
        if not (epoch_done or self.step == self.last_step):  # interrupted mid-epoch
            self.save(elapsed=0.0)
            return
        self.end_epoch(epoch, partial=not epoch_done, lr=lr, seconds=seconds, images=steps_run * batch)

    def control_point(self, signals: StopSignals) -> tuple[bool, bool]:
        """Whether to stop after this step, and whether to checkpoint. Every rank must answer the same, so under
        torchrun the ranks agree (one tiny all-reduce) every ``progress_every`` steps; alone, every step."""
        config = self.config
        save_now = bool(config.checkpoint_every) and self.step % config.checkpoint_every == 0
        if self.runtime.distributed and self.step % config.progress_every:
            return False, save_now
        timed = bool(config.checkpoint_minutes) and time.monotonic() - self.last_save >= 60 * config.checkpoint_minutes
        stop, timed = self.runtime.any(signals.received is not None, timed)
        if stop:
            self.stop = signals.received or "SIGTERM"  # a peer's signal
        return stop, save_now or timed

    def last_good(self) -> str:
        """Which checkpoint survives a fault, and the command that continues from it."""
        found = list_checkpoints(self.run_dir / "checkpoints") if self.runtime.is_writer else []
        if not found:
            return "no checkpoint was written"
        return f"last good checkpoint: {found[-1]}; once the cause is fixed: convae train --resume {self.run_dir}"

    def check_finite(self) -> None:
        bad = torch.where(self.first_bad >= 0, self.first_bad, torch.iinfo(torch.long).max)
        bad = int(self.runtime.all_reduce(bad.clone(), "min").item())
        if bad < torch.iinfo(torch.long).max:
            previous = list_checkpoints(self.run_dir / "checkpoints") if self.runtime.is_writer else []
            where = f"last good checkpoint: {previous[-1]}" if previous else "no checkpoint was written"
            raise NonFiniteLoss(f"loss is not finite at step {bad + 1} (epoch {bad // self.steps_per_epoch + 1}); "
                                f"stopped; {where}")

    def save(self, elapsed: float | None = None) -> None:
        """A checkpoint of this step: the model and optimizer (the same on every rank) and each rank's RNG and sums.
        ``elapsed``: training seconds not yet added to ``train_seconds`` (mid-epoch: since the epoch began)."""
        if elapsed is None:
            self.check_finite()  # never checkpoint a model that has gone non-finite
            elapsed = time.perf_counter() - self.epoch_started
        self.runtime.broadcast_buffers(self.model)
        mine = {f"rng.{k}": v for k, v in rng_state(self.device).items()}
        mine["extra.epoch_loss_sum"] = self.loss_sum.detach().cpu()
        rank_states = self.runtime.all_gather(mine)
        if self.runtime.is_writer:
            save_checkpoint(self.run_dir / "checkpoints", model=self.model, optimizer=self.optimizer,
                            rank_states=rank_states, keep=self.config.keep_checkpoints,
                            shared=self.average.state() if self.average is not None else None,
                            meta={"model": self.config.model, "step": self.step,
                                  "epoch": math.ceil(self.step / self.steps_per_epoch),
                                  "train_seconds": self.train_seconds + elapsed})
        self.last_save = time.monotonic()

    def end_epoch(self, epoch: int, *, partial: bool, lr: float, seconds: float, images: int) -> None:
        self.runtime.broadcast_buffers(self.model)
        steps_in_epoch = self.step - (epoch - 1) * self.steps_per_epoch
        train_loss = (self.runtime.all_reduce(self.loss_sum.clone()) / self.runtime.world_size / steps_in_epoch).item()
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            record, pictures = end_of_epoch(
                self.model, self.config, self.run_dir, monitor=self.monitor, test_set=self.test_set, epoch=epoch,
                step=self.step, partial=partial, train_loss=train_loss, floor=self.floor, precision=self.precision,
                lr=lr, train_seconds=self.train_seconds, seconds=seconds, images=images, runtime=self.runtime,
                samples=self.logger.shows_pictures)
        d = self.settings["distributed"]
        record.update(world_size=d["world_size"], backend=d["backend"], rank_devices=d["rank_devices"])
        self.logger.log_epoch(record, pictures)
        self.save(elapsed=0.0)
        self.say(f"epoch {epoch}: L_tot = {record['L_tot']:.4f}, L_likelihood = {record['L_likelihood']:.4f}, "
                 f"L_KL = {record['L_KL']:.4f}")
        self.say(f"  test -ELBO = {record['test_neg_elbo']:.2f} nats/image ("
                 + (f"entropy floor {self.floor:.2f}" if self.floor is not None else
                    f"{record['test_bits_per_dim']:.4f} bits/dim" if "test_bits_per_dim" in record else
                    f"likelihood {self.model.likelihood.name}") + "), "
                 f"train loss {record['train_loss']:.2f}, {record['img_per_s']:.0f} img/s, "
                 f"{record['epoch_seconds']:.1f} s" + (" (stopped by --max-steps)" if partial else ""))
        if self.config.report and self.runtime.is_writer:
            self.refresh_report(final=self.step == self.last_step)

    def refresh_report(self, final: bool) -> None:
        """RUN/report.html at an epoch end, unless the last refresh was recent: drawing its charts takes a second or
        two, so it is redrawn once at least ten times that long has passed (at most a tenth of the run's time goes
        to it, however short the epochs) and always after the last epoch."""
        started = time.monotonic()
        if not final and started - self.report_drawn < 10 * self.report_cost:
            return
        write_report([self.run_dir], self.run_dir / "report.html")
        self.report_drawn = time.monotonic()
        self.report_cost = self.report_drawn - started


def end_of_epoch(model: VAE, config: TrainConfig, run_dir: Path, *, monitor: EvalImages, test_set: EvalImages,
                 epoch: int, step: int, partial: bool, train_loss: float, floor: float, lr: float, precision: str,
                 train_seconds: float, seconds: float, images: int, runtime: Runtime | None = None,
                 samples: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """What the seed does after each epoch (loss on the first training images, the 3x3 picture), plus the test set.
    Under torchrun the test set is split among the ranks; rank 0 draws the picture. Returns the metrics record and
    (on rank 0) the pictures for TensorBoard: inputs over reconstructions, and with ``samples`` 64 samples from the
    prior (drawn only where a sink shows them: an autoregressive decoder draws them pixel by pixel)."""
    runtime = runtime or Runtime()
    started = time.perf_counter()
    on_monitor = evaluate_neg_elbo(model, monitor, batch_size=len(monitor), precision=precision, seed=config.seed + 1,
                                   runtime=runtime)
    on_test = evaluate_neg_elbo(model, test_set, batch_size=config.eval_batch_size, precision=precision,
                                seed=config.seed + 1, runtime=runtime)
    pictures = {}
    if runtime.is_writer:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            x = monitor.floats(0, 9, p.dtype, p.device)
            generator = torch.Generator(device=p.device).manual_seed(config.seed + 1)
            reconstruction = model.reconstruct(x, generator, labels=monitor.labels_of(0, 9, p.device))
            pictures = {"reconstructions": tile(torch.cat([x, reconstruction]), 9)}
            if samples:
                pictures["samples"] = tile(model.sample(64, generator=generator), 8)
        model.train()
        name = f"result{epoch}.png" if not partial else f"result{epoch}-step{step}.png"
        seed_grid(x, reconstruction, run_dir / "images" / name, title=f"epoch {epoch}, step {step}")
    record = {
        "epoch": epoch, "step": step, "partial_epoch": partial,
        "L_tot": on_monitor.neg_elbo, "L_likelihood": on_monitor.likelihood, "L_KL": on_monitor.kl,
        "test_neg_elbo": on_test.neg_elbo, "test_L_likelihood": on_test.likelihood, "test_L_KL": on_test.kl,
        "test_kl_per_dim": on_test.kl_per_dim,
        "entropy_floor": floor, "train_loss": train_loss, "lr": lr,
        "train_seconds": train_seconds, "epoch_seconds": seconds, "img_per_s": images / max(seconds, 1e-9),
        "eval_seconds": time.perf_counter() - started,
    }
    if model.likelihood.discrete:
        record["test_bits_per_dim"] = bits_per_dim(on_test.neg_elbo, test_set.dims)
    return record, pictures
