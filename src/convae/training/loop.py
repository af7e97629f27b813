"""The training loop: ``train(config)`` runs the seed's experiment and everything it writes.

``Trainer`` is set up in named steps (the data and where the run starts, the model and its step, the run folder),
then ``run`` calls ``run_epoch`` until the last step. The loop never waits for the device except where a progress
record reads the loss, at checkpoints and at the end of an epoch. The run folder's files are ``convae.runs``'s.

Under torchrun every process runs this same loop on its own slice of each global batch (``Runtime.shard``),
DDP averages the gradients, and rank 0 alone prints and writes; see docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..version import __version__
from ..config import TrainConfig, parse_duration
from ..data import ImageData, StreamedImages, load_for_config, resident_limit
from ..errors import (BadInput, ConfigError, FileSystemFault, NonFiniteLoss, OutOfMemory, RunBusy, refuse_non_finite,
                      TrainingInterrupted)
from ..faults import available_memory, describe_os_error, first_line, format_bytes, is_out_of_memory
from ..models import VAE, build_run_model
from ..models.build import check_buildable
from ..models.objective import refused_with_objective
from ..models.registry import code_changes, code_identity
from ..progress import Progress, duration
from ..reporting.html import write_report
from ..reporting.sinks import RunLogger
from ..runs import Checkpoint, RunLock, Start, plan_start, restore
from ..runtime import Runtime, resolve_device, synchronize
from ..signals import StopSignals
from .averaging import WeightAverage
from .budget import REPLAN_LEAST_STEPS, WARMUP_STEPS, BudgetPlan, measure_steps_per_second
from .budget import plan as budget_plan
from .budget import kept as budget_kept
from .budget import replan as budget_replan
from .engine import effective_precision, make_optimizer, make_train_step, uses_cuda_graphs
from .epoch import EpochEvaluator
from .hooks import Hooks
from .normalisation import as_checkpoint_tensors, population_statistics, statistics_applied
from .schedule import epoch_order, knotted_progress, learning_rate
from .state import RunState, Window, objective_keys


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict] = field(default_factory=list)
    model: VAE | None = None


def train(config: TrainConfig, *, data: ImageData | None = None, resume: bool = False, auto_resume: bool = False,
          log=print, argv: list[str] | None = None, runtime: Runtime | None = None,
          hooks: Hooks | None = None, program: str = "convae") -> TrainResult:
    """Train (or, with ``resume=True``, continue the run in ``config.out``) and return the run folder and metrics.

    ``auto_resume``: continue the run in ``config.out`` if it has a checkpoint, else start it there (what a
    restarted torchrun group or a re-queued job wants). Under torchrun (``RANK``/``WORLD_SIZE`` set) the process
    group is joined here unless ``runtime`` is given. Nothing is written until the settings, the data and any
    checkpoint have been checked, on every rank. ``program``: how the user started convae (``.venv/bin/convae``,
    ``python -m convae``), for the commands a message tells them to run.
    """
    config.validate()
    own_runtime = runtime is None
    runtime = runtime or Runtime.from_environment(config.dist_timeout)
    try:
        return Trainer(config, runtime, data=data, resume=resume, auto_resume=auto_resume, log=log, argv=argv,
                       hooks=hooks or Hooks(), program=program).run()
    finally:
        if own_runtime:
            runtime.close()


# A test -ELBO above this many times the training loss is said: on binarized MNIST the two stay within a few percent
# (the test set is as hard as the training set), and a model that overfits a small folder for many epochs reaches
# 1.2-1.4x; past 1.5x the evaluation most likely scores another model than the one trained (BatchNorm statistics
# that do not fit, a dropout or a likelihood that differ between training and evaluation), or training has
# memorised its images. Only where both are positive: a continuous likelihood's -ELBO may be below zero.
GENERALISATION_RATIO = 1.5


def generalisation_warning(record: dict, likelihood) -> str | None:
    """The warning for an epoch whose test -ELBO is far above its training loss (``GENERALISATION_RATIO``)."""
    test, train = record.get("test_neg_elbo"), record.get("train_loss")
    if not (likelihood.discrete or likelihood.entropy_floor) or test is None or train is None:
        return None
    if train > 0 and test > GENERALISATION_RATIO * train:
        return (f"the test -ELBO ({test:.2f}) is {test / train:.1f}x the training loss ({train:.2f}) at step "
                f"{record['step']}: the evaluated model does not score like the trained one (over-fitting a small "
                "data set, or normalisation, dropout or a likelihood that differs between training and evaluation)")
    return None


def describe_environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "convae": __version__, "device": str(device), "device_name": name,
            "threads": torch.get_num_threads(), "platform": platform.platform()}


class Trainer:
    BUDGET_TIMED_ON = "on a copy of the model"  # what --time-budget's first plan timed (``time_budget_step``)

    def __init__(self, config: TrainConfig, runtime: Runtime, *, data: ImageData | None, resume: bool,
                 auto_resume: bool, log, argv, hooks: Hooks, at_step: int | None = None, program: str = "convae"):
        """``at_step``: resume from the checkpoint of that step rather than the newest (a pack's common step)."""
        self.config, self.runtime, self.log, self.hooks, self.program = config, runtime, log, hooks, program
        self.lock: RunLock | None = None
        self.code_changed: str | None = None
        try:
            self.check_settings()
            start = self.prepare(data, resume, auto_resume, at_step)
            self.build(start.checkpoint)
            self.plan_budget(start)
            self.fix_kl_warmup(start)
            self.train_step = self.make_step(self.step_module, self.eager_only())  # holds the KL warm-up fixed above
            self.open_run_folder(start, argv, auto_resume)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    # -- setting up, in order ---------------------------------------------------------------------------------------

    def check_settings(self) -> None:
        """What the settings, the machine and the process group must agree on, before anything is read."""
        config, runtime = self.config, self.runtime
        runtime.check_batch(config.batch_size)
        if runtime.distributed and config.iw_train > 1:
            raise ConfigError("--iw-train: K > 1 runs in one process (its K-sample pass bypasses DDP's forward); "
                              "drop it under torchrun")
        self.device = resolve_device(config.device, runtime.local_rank)
        if runtime.distributed and self.device.type == "mps":
            raise ConfigError("--device mps: torchrun runs need CPU (gloo) or CUDA (NCCL) devices")
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        if self.dtype == torch.float64 and self.device.type == "mps":
            raise ConfigError("--dtype float64: MPS has no float64")
        check_buildable(config)  # a size or likelihood the model refuses, before a folder is prepared for nothing

    def prepare(self, data: ImageData | None, resume: bool, auto_resume: bool, at_step: int | None) -> Start:
        """The data on every rank and where the run starts (rank 0 decides), with everything that can fail on bad
        input checked on every rank before any file is written. Rank 0 loads first: it alone prepares a data cache
        that the others then open."""
        runtime, start, error = self.runtime, None, None
        if runtime.is_writer:
            try:
                self.load(data)
                start = plan_start(self.config, resume, auto_resume, at_step)
                if start.checkpoint is not None:
                    self.lock = RunLock(start.run.path, "convae train --resume").acquire()
                    start.run.check_same_data(self.fingerprint, self.data)
            except (BadInput, RunBusy) as e:
                error = e
        runtime.agree_on_errors(error)
        if not runtime.is_writer:
            try:
                self.load(data)
            except BadInput as e:
                error = e
        runtime.agree_on_errors(error)
        start = runtime.broadcast(start)
        if start.checkpoint is None and self.config.kl_warmup and self.config.kl_warmup_fraction is not None:
            raise ConfigError("--kl-warmup and --kl-warmup-fraction: give one of them (steps, or a share of the run's)")
        total_steps = self.config.epochs * self.steps_per_epoch
        self.last_step = min(total_steps, self.config.max_steps or total_steps)
        return start

    def load(self, data: ImageData | None) -> None:
        """The run's data on the device, or (larger than ``--resident-max-bytes``) streamed from its cache."""
        config = self.config
        if data is None:
            data = (self.hooks.load_data(config) if self.hooks.load_data is not None else
                    load_for_config(config, progress=self.runtime.is_writer and not config.quiet))
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

    def build(self, checkpoint: Checkpoint | None) -> None:
        """The model, its optimizer, weight average and step function, and the run's state: fresh, or restored
        from ``checkpoint`` (weights, Adam, average, this rank's RNG and sums)."""
        config, runtime, device = self.config, self.runtime, self.device
        say_stderr = (lambda m: print(f"convae: {m}", file=sys.stderr)) if runtime.is_writer else (lambda m: None)
        self.precision = effective_precision(config, device, warn=say_stderr)
        torch.manual_seed(config.seed)
        self.check_memory()
        self.model = build_run_model(config, self.data.shape[0], self.classes,
                                     len(self.data.train_images)).to(device=device, dtype=self.dtype)
        self.check_objective()
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        step_module = runtime.wrap(self.model, device)
        eager_only = self.eager_only()
        self.graphs = uses_cuda_graphs(config, device, eager_only=eager_only)
        self.optimizer = make_optimizer(self.model, config, device, capturable=self.graphs)
        self.average = WeightAverage(self.model, config.ema) if config.ema else None
        if checkpoint is None:
            self.state = RunState.fresh(device, config.seed, runtime.rank, len(self.objective_keys))
        else:
            restore(checkpoint, self.model, self.optimizer)
            if self.average is not None:
                self.average.load(checkpoint.tensors)
            self.state = RunState.restored(checkpoint, device, config.seed, runtime, len(self.objective_keys))
        self.step_module = step_module  # the step itself is made once the run's length is fixed (``__init__``)

    def check_objective(self) -> None:
        """A model with its own training objective (``convae.TrainingObjective``) refuses the levers of convae's ELBO
        objective by name; what it logs besides the -ELBO's terms is named in ``objective_keys``."""
        objective = self.model.objective
        refused = refused_with_objective(self.config) if objective is not None else None
        if refused is not None:
            flag, why = refused
            raise ConfigError(f"{flag}: model {self.config.model!r} trains on its own objective ({objective.name}, "
                              f"{type(objective).__name__}); {flag} {why}: drop it, or set the objective's own "
                              "weights with --model-option")
        self.objective_keys = objective_keys(objective)

    def plan_budget(self, start: Start) -> None:
        """--time-budget: time this run's step on a copy of its model (``budget.py``) and fix its warm-up and a first
        number of steps, recorded as the run's --warmup-steps and --max-steps (and epochs to hold them); the run
        re-plans the steps from its own speed as it goes (``replan_budget``). A resumed run keeps what was
        recorded. Under torchrun rank 0's measurements are every rank's plan."""
        config = self.config
        self.budget: BudgetPlan | None = None  # the plan (made here, or kept by a resumed run)
        self.budget_timed_here = False
        self.replan_mark: tuple[int, float] | None = None  # (step, training clock) where the re-plan's timing began
        self.first_step_here = self.state.step  # the step this process began at
        if not config.time_budget:
            return
        if start.checkpoint is not None:  # resumed: the plan made when the run began (given as settings, or kept)
            kept = start.run.read_settings() if not config.max_steps else {}
            if kept.get("config", {}).get("max_steps"):
                config.max_steps = kept["config"]["max_steps"]
                config.epochs = max(config.epochs, kept["config"].get("epochs", 1))
                config.warmup_steps = kept["config"].get("warmup_steps")
                config.schedule_knots = kept["config"].get("schedule_knots")
                self.last_step = min(config.epochs * self.steps_per_epoch, config.max_steps)
                if kept.get("time_budget_plan"):
                    self.budget = BudgetPlan.from_record(kept["time_budget_plan"])
            return
        if config.max_steps:
            raise ConfigError("--time-budget and --max-steps: give one of them (the budget fixes the number of steps "
                              "from the speed measured here)")
        rate, measured = self.time_budget_step()
        onecycle = config.lr_schedule == "onecycle"
        plan = budget_plan(parse_duration(config.time_budget), rate, measured,
                           config.warmup_fraction if onecycle else None)
        if onecycle and config.warmup_steps:  # the user's warm-up: the re-plan comes at its end
            plan = dataclasses.replace(plan, replan_step=min(config.warmup_steps, plan.steps))
        self.budget, self.budget_timed_here = self.runtime.broadcast(plan), True
        if onecycle and not config.warmup_steps:  # fixed now: the re-plan at its end moves only where the cosine ends
            config.warmup_steps = self.budget.replan_step
        self.use_budget_steps(self.budget.steps)

    def fix_kl_warmup(self, start: Start) -> None:
        """--kl-warmup-fraction: the KL warm-up is that share of the steps the run plans as it begins (its --epochs
        or --max-steps, or --time-budget's first plan: a re-plan moves the end, not the warm-up, as with the learning
        rate's), recorded as its --kl-warmup; a resumed run keeps what was recorded."""
        config = self.config
        self.kl_warmup_fixed_here = False
        if config.kl_warmup_fraction is None or config.kl_warmup:  # none asked, or a resumed run's own settings
            return
        if start.checkpoint is not None:
            kept = start.run.read_settings().get("config", {}).get("kl_warmup")
            if kept:
                config.kl_warmup = kept
                return
        config.kl_warmup = max(1, round(config.kl_warmup_fraction * self.last_step))
        self.kl_warmup_fixed_here = True

    def time_budget_step(self) -> tuple[float, int]:
        """Steps per second of this run's step, and how many were timed: on a throwaway copy of its model and
        optimizer (``budget.measure_steps_per_second``)."""
        config = self.config
        labels = self.data.train_labels if config.conditional else None

        def twin_step(model, optimizer):
            return make_train_step(model, optimizer, self.streamed or self.data.train_images, self.data.levels, config,
                                   self.dtype, self.precision, self.device, eager_only=self.eager_only(),
                                   labels=labels)

        return measure_steps_per_second(
            twin_step, self.model, lambda model: make_optimizer(model, config, self.device), len(self.data.train_images),
            config.batch_size // self.runtime.world_size, self.device)

    def use_budget_steps(self, steps: int) -> None:
        config = self.config
        config.max_steps, config.epochs, self.last_step = steps, math.ceil(steps / self.steps_per_epoch), steps

    def training_clock(self) -> float:
        """Seconds of training so far (``train_seconds`` counts each epoch's steps once they are done)."""
        return self.state.train_seconds + time.perf_counter() - self.epoch_started

    def replan_budget(self) -> None:
        """After a step of a budgeted run: at each re-plan step, fix the steps that fill the rest of the budget at the
        speed the run had since the last one (``budget.py``)."""
        due = self.replan_due()
        if due is not None:
            self.apply_replan(*due)

    def replan_due(self) -> tuple[float, float | None, int] | None:
        """At a re-plan step: (seconds of training used, this process's steps per second since the last re-plan,
        and how many steps that timed; the rate is None where too few were timed here, a resume just before it);
        None elsewhere. Starts the re-plan's clock once the process's first steps are past."""
        budget, step = self.budget, self.state.step
        if budget is None or not budget.replan_step:
            return None
        if self.replan_mark is None and step - self.first_step_here >= WARMUP_STEPS:
            synchronize(self.device)
            self.replan_mark = (step, self.training_clock())
        if step < budget.replan_step:
            return None
        measured = step - self.replan_mark[0] if self.replan_mark is not None else 0
        if measured < REPLAN_LEAST_STEPS:
            return self.training_clock(), None, measured
        synchronize(self.device)
        used = self.training_clock()
        rate, used = self.runtime.broadcast((measured / max(used - self.replan_mark[1], 1e-9), used))
        self.replan_mark = (step, used)
        return used, rate, measured

    def apply_replan(self, used: float, rate: float | None, measured: int) -> None:
        """The re-plan ``replan_due`` timed (a pack's members all take their lead's, so they end together): the new
        number of steps, recorded at once; a re-plan past the warm-up is a knot of the cosine, so the rate does not
        jump."""
        budget, step, config = self.budget, self.state.step, self.config
        if rate is None:  # a resume just before the re-plan: too few steps here to time
            self.budget = budget_kept(budget, step, measured)
            self.say(f"--time-budget {config.time_budget}: kept the plan of {budget.steps} steps at step {step} "
                     f"(only {measured} steps timed here)")
        else:
            if config.lr_schedule == "onecycle" and step > (config.warmup_steps or 0):  # the cosine's knot here
                progress = knotted_progress(step, config.warmup_steps, self.last_step, config.schedule_knots or [])
                config.schedule_knots = [*(config.schedule_knots or []), [step, progress]]
            self.budget = budget_replan(budget, step, used, rate, measured)
            self.use_budget_steps(self.budget.steps)
            left = self.budget.replans[-1]["seconds_left"]
            self.say(f"--time-budget {config.time_budget}: re-planned at step {step} from this run's own "
                     f"{rate:.2f} steps/s over its last {measured} steps, {duration(left)} left: "
                     f"{self.budget.steps} steps in all (were {budget.steps})")
        if self.runtime.is_writer:
            self.settings["config"] = config.to_dict()
            self.settings["time_budget_plan"] = self.budget.describe()
            self.run_dir.write_settings(self.settings)

    def eager_only(self) -> bool:
        """Whether the step must launch its kernels one by one: under DDP (the step holds collectives) or with
        streamed data (each batch comes from the host); elsewhere CUDA may record it as a graph."""
        return self.runtime.distributed or self.streamed is not None

    def make_step(self, step_module, eager_only: bool):
        """The function that takes one optimizer step (``engine.make_train_step``)."""
        config = self.config
        return make_train_step(step_module, self.optimizer, self.streamed or self.data.train_images, self.data.levels,
                               config, self.dtype, self.precision, self.device, eager_only=eager_only,
                               labels=self.data.train_labels if config.conditional else None,
                               wrap_loss=self.hooks.wrap_loss)

    def check_memory(self) -> None:
        """Refuse settings whose weights, gradients, Adam's moments (and average) and one batch's input cannot fit
        in the memory left on the device; the model is built on PyTorch's meta device to count, allocating nothing.
        Activations are not counted: an allocation that fails later is caught and reported the same way."""
        config = self.config
        try:
            with torch.device("meta"):
                probe = build_run_model(config, self.data.shape[0], self.classes, len(self.data.train_images))
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

    def open_run_folder(self, start: Start, argv, auto_resume: bool) -> None:
        """The run folder (rank 0 writes it), its logger and the epoch evaluator; nothing is written for a run that
        is already complete."""
        config, runtime = self.config, self.runtime
        self.run_dir = start.run
        config.out = str(self.run_dir.path)
        self.complete = start.checkpoint is not None and self.state.step >= self.last_step
        if self.complete and not auto_resume:
            raise ConfigError(f"--resume {self.run_dir.path}: the run is already complete at step {self.state.step} "
                              f"(epoch {math.ceil(self.state.step / self.steps_per_epoch)} of {config.epochs}); "
                              + self.how_to_extend())
        self.settings = self.describe(argv)
        writes = runtime.is_writer and not self.complete
        if writes:
            self.lock = self.run_dir.create(self.settings, self.lock)
            if self.lock.previous:
                self.log(f"took over the lock of {self.run_dir.path} from process {self.lock.previous.get('pid')} "
                         f"on {self.lock.previous.get('host')}, which ended without releasing it")
            self.run_dir.trim_to(self.state.step)
        resumed = start.checkpoint is not None
        self.logger = RunLogger(self.run_dir, active=writes, echo=self.log, tensorboard=config.tensorboard,
                                resume_step=self.state.step if resumed else None, hparams=config.to_dict(),
                                metrics=start.metrics)
        self.announce(resumed)
        if self.code_changed:  # said on the console when config.json was read; log.txt keeps it with the run
            self.logger.note(self.code_changed)
        self.evaluate = EpochEvaluator(self.model, config, self.data, self.run_dir, self.precision, runtime)
        self.show_bar = runtime.is_writer and not config.quiet  # a bar on a terminal, else a line every 15 s
        self.planned_said = False
        self.last_save, self.stop = time.monotonic(), None
        self.report_drawn, self.report_cost = 0.0, 0.0
        self.statistics, self.statistics_step = {}, None

    def how_to_extend(self) -> str:
        """The advice for a complete run: the limit that ended it is the one to raise (a run stopped by --max-steps
        goes no further with more --epochs while its --max-steps holds)."""
        config, step = self.config, self.state.step
        if config.max_steps and config.max_steps <= config.epochs * self.steps_per_epoch:
            return (f"its --max-steps {config.max_steps} ended it: extend it with --max-steps N (more than {step}; "
                    f"--epochs alone does not, while --max-steps {config.max_steps} holds)")
        return f"extend it with --epochs N (more than {config.epochs}) or --max-steps N (more than {step})"

    def describe(self, argv) -> dict:
        """What config.json records beside the settings."""
        data, runtime = self.data, self.runtime
        before = self.earlier_settings()
        commands = {"command": argv}
        if before.get("command") is not None:  # a resumed run keeps the command it started with, and each resume's
            commands = {"command": before["command"], "resumed_with": before.get("resumed_with", []) + [argv]}
        budget = {"time_budget_plan": self.budget.describe()} if self.budget is not None else {}
        if not budget and before.get("time_budget_plan"):
            budget = {"time_budget_plan": before["time_budget_plan"]}
        return {"config": self.config.to_dict(), "model_code": self.model_code(before), **budget,
                "densities": self.model.describe_densities(), "environment": describe_environment(self.device),
                "precision": self.precision, "model_parameters": sum(p.numel() for p in self.model.parameters()),
                "steps_per_epoch": self.steps_per_epoch, **commands,
                "data": {**data.details, "name": data.name, "shape": list(data.shape), "levels": data.levels,
                         "train_images": len(data.train_images), "test_images": len(data.test_images),
                         # the data's classes (the model is conditional on them only under --conditional)
                         "classes": data.classes, "class_count": data.class_count(),
                         "likelihood": self.model.likelihood.name, "training_images_bytes": data.train_images.numel(),
                         "fingerprint": self.fingerprint, "streamed": self.streamed is not None,
                         "resize_mode": self.config.resize_mode, "summary": data.summary()},
                "distributed": {**runtime.describe(self.device),
                                "batch_per_rank": self.config.batch_size // runtime.world_size,
                                "batchnorm": runtime.batchnorm_mode(self.device), "cuda_graphs": self.graphs}}

    def earlier_settings(self) -> dict:
        """The config.json of the run being resumed ({} for a new run)."""
        if not self.run_dir.checkpoint_files():
            return {}
        try:
            return self.run_dir.read_settings()
        except ConfigError:
            return {}

    def model_code(self, before: dict) -> dict:
        """Which code the model is (``registry.code_identity``); a resumed run whose plug-in changed since keeps
        what it was trained with before under ``earlier``."""
        code = code_identity(self.config.model)
        recorded = dict(before.get("model_code") or {})
        earlier = recorded.pop("earlier", [])
        changes = code_changes(recorded, code) if recorded and not code["builtin"] else []
        if changes:
            earlier = earlier + [recorded]
            self.code_changed = (f"warning: model {self.config.model!r} (plug-in {code['module']}) runs other code "
                                 "than it was trained with until now: " + "; ".join(changes))
        if earlier:
            code["earlier"] = earlier
        return code

    def say(self, line: str) -> None:
        self.logger.say(line)

    def say_data_notes(self) -> None:
        """What the data is and what preparing it did (``ImageData.summary``), on every run: printed (quiet or not)
        and in log.txt; the same facts are in config.json's "data"."""
        for line in self.data.summary():
            self.say(line)

    def announce(self, resumed: bool) -> None:
        d, step = self.settings["distributed"], self.state.step
        if resumed:
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            self.say(f"resuming {self.run_dir.path} at step {step} (epoch {step // self.steps_per_epoch + 1})"
                     + (f", torchrun restart {restart}" if restart != "0" else "")
                     + (f", written by {self.state.saved_world} process(es), now {d['world_size']}"
                        if self.state.saved_world != d["world_size"] else ""))
            self.say_data_notes()
        else:
            self.say(f"run folder {self.run_dir.path}: model {self.config.model}, "
                     f"{self.settings['model_parameters']:,} parameters, {len(self.data.train_images)} training "
                     f"images, {self.steps_per_epoch} steps per epoch, device {self.device}")
            self.say_data_notes()
        if self.budget_timed_here:  # said at once: a short budget may end before the first progress record
            self.say(f"--time-budget {self.config.time_budget}: {self.budget.steps} steps at "
                     f"{self.budget.steps_per_second:.2f} steps/s, timed over {self.budget.measured_steps} steps here "
                     f"{self.BUDGET_TIMED_ON}; re-planned from the run's own speed from step {self.budget.replan_step}")
        if self.kl_warmup_fixed_here:
            self.say(f"--kl-warmup-fraction {self.config.kl_warmup_fraction:g}: the KL weight rises to "
                     f"{self.config.beta:g} over the first {self.config.kl_warmup} of the run's {self.last_step} "
                     "steps")
        if self.runtime.distributed:
            self.say(f"torchrun: {d['world_size']} process(es) on {d['nodes']} node(s), backend {d['backend']}, "
                     f"{d['batch_per_rank']} images per process per step; BatchNorm statistics: {d['batchnorm']}"
                     + (" (each process normalises by its own slice; SyncBatchNorm needs CUDA)"
                        if d["batchnorm"] == "per-rank" else ""))

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        if self.complete:  # a re-queued job that had finished: nothing to do, nothing to write
            self.close()
            if self.runtime.is_writer:
                self.log(f"{self.run_dir.path} is already complete at step {self.state.step}; nothing to do")
            return TrainResult(self.run_dir.path, self.logger.metrics, self.model)
        self.model.train()
        with StopSignals() as signals, self.faults_said():
            try:
                while self.state.step < self.last_step and self.stop is None:
                    self.run_epoch(signals)
                if self.stop is not None:
                    self.stopped()
                self.say_budget_used()
            finally:
                self.close()
        return TrainResult(self.run_dir.path, self.logger.metrics, self.model)

    def say_budget_used(self) -> None:
        if self.config.time_budget:
            seconds = parse_duration(self.config.time_budget)
            self.say(f"--time-budget {self.config.time_budget}: trained {self.state.train_seconds:,.0f} s, "
                     f"{100 * self.state.train_seconds / seconds:.1f} % of the budget")

    def stopped(self):
        """After a stop signal (the checkpoint written): the report shows the step it stopped at, log.txt says how to
        go on, and the caller learns it as ``TrainingInterrupted``."""
        if self.config.report and self.runtime.is_writer:
            self.refresh_report(final=True)
        interrupted = TrainingInterrupted(self.run_dir.path, self.state.step, self.stop,
                                          f"{self.program} train --resume {shlex.quote(str(self.run_dir.path))}")
        self.logger.note(str(interrupted))
        raise interrupted

    @contextlib.contextmanager
    def faults_said(self):
        """A full disk or memory that ran out, as the one-line fault that names the step and the last good
        checkpoint."""
        try:
            yield
        except OSError as e:
            raise FileSystemFault(f"{describe_os_error(e)}; training stopped at step {self.state.step}; "
                                  f"{self.last_good()}") from None
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise OutOfMemory(f"out of memory at step {self.state.step + 1} ({first_line(e, 160)}); try a "
                              f"smaller --batch-size, --eval-batch-size or --iw-train; {self.last_good()}") from None

    def close(self) -> None:
        """Flush and close the logs, stop the prefetching thread, release the run folder."""
        with contextlib.suppress(OSError):  # the fault being reported may be the disk these flush to
            self.logger.close()
        if self.streamed is not None:
            self.streamed.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def run_epoch(self, signals: StopSignals) -> None:
        self.begin_epoch()
        for i in range(self.first_index, self.steps_per_epoch):
            lr = learning_rate(self.config, self.state.step, self.last_step)
            self.hooks.before_step(self.state.step)
            if self.streamed is not None and i + 1 < self.steps_per_epoch:
                self.streamed.prefetch(self.batch_indices(i + 1))
            self.record_step(i, self.train_step(self.batch_indices(i), lr, self.state.step), lr)
            self.replan_budget()
            if self.finish_step(*self.control_point(signals)):
                break
        self.end_steps()

    def begin_epoch(self) -> None:
        """The epoch's order of images, its progress bar and clock (it may begin mid-way, after a resume)."""
        state, batch = self.state, self.config.batch_size
        self.epoch, self.first_index = state.step // self.steps_per_epoch + 1, state.step % self.steps_per_epoch
        if self.first_index == 0:
            state.loss_sum.zero_()
            if state.objective_sum is not None:
                state.objective_sum.zero_()
        self.order = epoch_order(len(self.data.train_images), self.epoch, self.config,
                                 self.device if self.streamed is None else torch.device("cpu"))
        epochs = math.ceil(self.last_step / self.steps_per_epoch)
        self.bar = Progress(self.steps_per_epoch * batch, f"epoch {self.epoch}/{epochs}", "img", show=self.show_bar,
                            initial=self.first_index * batch)
        self.epoch_started, self.epoch_first_step = time.perf_counter(), state.step
        self.window = Window(self.device, state.step, self.epoch_started, self.objective_keys)

    def say_plan(self, img_per_s: float) -> None:
        """Once the first steps have been timed: what the run will do, and about how long it will take."""
        self.planned_said = True
        config, argv = self.config, (self.settings.get("resumed_with") or [self.settings.get("command")])[-1] or []
        default = (config.epochs == TrainConfig.epochs and "--epochs" not in argv and "preset" not in config.extra
                   and not config.max_steps)
        epochs = math.ceil(self.last_step / self.steps_per_epoch)
        if config.time_budget and config.max_steps:
            seconds = parse_duration(config.time_budget)
            plan = (f"{self.last_step} steps (--time-budget {config.time_budget}: {duration(seconds)} of training"
                    + (f" at {self.budget.steps_per_second:.2f} steps/s, timed over {self.budget.measured_steps} "
                       "steps here" if self.budget_timed_here else ", as planned when the run began")
                    + f"), {epochs} epoch{'s' * (epochs != 1)} of {self.steps_per_epoch} steps begun")
        elif config.max_steps and config.max_steps < config.epochs * self.steps_per_epoch:
            plan = (f"{self.last_step} steps (--max-steps), {epochs} epoch{'s' * (epochs != 1)} of "
                    f"{self.steps_per_epoch} steps begun")
        else:
            plan = f"{epochs} epoch{'s' * (epochs != 1)} of {self.steps_per_epoch} steps"
        if self.budget is not None and self.budget.replan_step:  # the re-plans, not this speed, fix the end
            timing = (f"; {img_per_s:,.0f} img/s so far, and the re-plans follow the run's own speed: about "
                      f"{duration(self.budget.seconds - self.training_clock())} of training to go")
        else:
            left = (self.last_step - self.state.step) * config.batch_size / max(img_per_s, 1e-9)
            timing = (f"; at {img_per_s:,.0f} img/s about {duration(left)} of training"
                      + (" to go" if self.state.step > self.steps_per_epoch else ""))
        self.say(f"planned: {plan}" + (" (the seed's 100: --epochs N for fewer)" if default else "")
                 + timing + ", evaluations besides")

    def batch_indices(self, i: int) -> torch.Tensor:
        """This rank's images of the epoch's ``i``-th global batch."""
        batch = self.config.batch_size
        return self.runtime.shard(self.order[i * batch:(i + 1) * batch])

    def record_step(self, i: int, terms: torch.Tensor, lr: float) -> None:
        """What a step taken leaves: the weight average, the sums, the non-finite watch, a progress record every
        ``progress_every`` steps."""
        state, config = self.state, self.config
        self.lr = lr
        if self.average is not None:
            self.average.update()
        state.loss_sum += terms[0]
        if state.objective_sum is not None:
            state.objective_sum += terms[3:]
        self.window.sums += terms
        state.watch.record(terms[0])
        state.step += 1
        if state.step % config.progress_every == 0:
            record = self.window.close(self.runtime, state.step, self.epoch, lr, config.batch_size)
            self.logger.log_steps(record)
            self.bar.update((i + 1) * config.batch_size - self.bar.done, loss=f"{record['loss']:.2f}")
            if not self.planned_said:
                self.say_plan(record["img_per_s"])

    def finish_step(self, stop: str | None, save_now: bool) -> bool:
        """After a step: whether the epoch's steps end here (a stop, or the last step); a checkpoint if one is due
        (an epoch end checkpoints anyway)."""
        if stop is not None:
            self.stop = stop
        if stop is not None or self.state.step == self.last_step:
            return True
        if save_now and self.state.step % self.steps_per_epoch:
            self.save()
        return False

    def end_steps(self) -> None:
        """After the steps of an epoch (or of its part before a stop): an epoch end's record and checkpoint, or
        only a checkpoint where the run was interrupted mid-epoch."""
        self.bar.close()
        synchronize(self.device)
        if self.state.step > self.window.step:  # the steps since the last record: the curve reaches the epoch's end
            self.logger.log_steps(self.window.close(self.runtime, self.state.step, self.epoch, self.lr,
                                                    self.config.batch_size))
        seconds = time.perf_counter() - self.epoch_started
        self.state.train_seconds += seconds
        self.check_finite()
        epoch_done = self.state.step % self.steps_per_epoch == 0
        if not (epoch_done or self.state.step == self.last_step):  # interrupted mid-epoch
            self.save(elapsed=0.0)
            return
        images = (self.state.step - self.epoch_first_step) * self.config.batch_size
        self.end_epoch(self.epoch, partial=not epoch_done, lr=self.lr, seconds=seconds, images=images)

    def control_point(self, signals: StopSignals) -> tuple[str | None, bool]:
        """Whether to stop after this step (the signal's name), and whether to checkpoint. Every rank must answer the
        same, so under torchrun the ranks agree (one tiny all-reduce) every ``progress_every`` steps; alone, every
        step."""
        config, step = self.config, self.state.step
        save_now = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
        if self.runtime.distributed and step % config.progress_every:
            return None, save_now
        timed = bool(config.checkpoint_minutes) and time.monotonic() - self.last_save >= 60 * config.checkpoint_minutes
        stop, timed = self.runtime.any(signals.received is not None, timed)
        return (signals.received or "SIGTERM") if stop else None, save_now or timed  # no signal here: a peer's

    def last_good(self) -> str:
        """Which checkpoint survives a fault, and the command that continues from it."""
        return self.run_dir.last_good(self.program) if self.runtime.is_writer else "no checkpoint was written"

    def check_finite(self) -> None:
        bad = self.state.watch.first(self.runtime)
        if bad is not None:
            found = self.run_dir.checkpoint_files() if self.runtime.is_writer else []
            where = f"last good checkpoint: {found[-1]}" if found else "no checkpoint was written"
            raise NonFiniteLoss(f"loss is not finite at step {bad + 1} (epoch {bad // self.steps_per_epoch + 1}); "
                                f"stopped; {where}")

    def save(self, elapsed: float | None = None) -> None:
        """A checkpoint of this step: the model and optimizer (the same on every rank) and each rank's RNG and sums.
        ``elapsed``: training seconds not yet added to ``train_seconds`` (mid-epoch: since the epoch began)."""
        if elapsed is None:
            self.check_finite()  # never checkpoint a model that has gone non-finite
            elapsed = time.perf_counter() - self.epoch_started
        self.runtime.broadcast_buffers(self.model)
        rank_states = self.runtime.all_gather(self.state.rank_tensors(self.device))
        statistics = self.population_statistics()
        if self.runtime.is_writer:
            shared = {**(self.average.state() if self.average is not None else {}),
                      **as_checkpoint_tensors(statistics)}
            self.run_dir.save_checkpoint(model=self.model, optimizer=self.optimizer, rank_states=rank_states,
                                         keep=self.config.keep_checkpoints, shared=shared,
                                         meta=self.state.meta(self.config.model, self.steps_per_epoch, elapsed))
        self.last_save = time.monotonic()

    def end_epoch(self, epoch: int, *, partial: bool, lr: float, seconds: float, images: int) -> None:
        state, runtime = self.state, self.runtime
        runtime.broadcast_buffers(self.model)
        steps_in_epoch = state.step - (epoch - 1) * self.steps_per_epoch
        train_loss = (runtime.all_reduce(state.loss_sum.clone()) / runtime.world_size / steps_in_epoch).item()
        training = {"train_loss": train_loss, **self.objective_means(steps_in_epoch), "lr": lr, "train_seconds": state.train_seconds,
                    "epoch_seconds": seconds, "img_per_s": images / max(seconds, 1e-9)}
        with self.evaluated_weights():
            record, pictures = self.evaluate(epoch, state.step, partial, training, samples=self.logger.shows_pictures)
        refuse_non_finite({f"the {name}": record.get(key) for name, key in (
            ("test -ELBO", "test_neg_elbo"), ("test L_likelihood", "test_L_likelihood"), ("test L_KL", "test_L_KL"),
            ("monitored -ELBO", "L_tot"))}, f"{self.run_dir.path} at step {state.step} (epoch {epoch})")
        d = self.settings["distributed"]
        record.update(world_size=d["world_size"], backend=d["backend"], rank_devices=d["rank_devices"])
        warning = generalisation_warning(record, self.model.likelihood)
        if warning:
            record["warning"] = warning
        self.logger.log_epoch(record, pictures)
        self.save(elapsed=0.0)
        if warning:
            self.say(f"warning: {warning}")
        self.say(f"epoch {epoch}: L_tot = {record['L_tot']:.4f}, L_likelihood = {record['L_likelihood']:.4f}, "
                 f"L_KL = {record['L_KL']:.4f}")
        floor = self.evaluate.floor
        self.say(f"  test -ELBO = {record['test_neg_elbo']:.2f} nats/image ("
                 + (f"entropy floor {floor:.2f}" if floor is not None else
                    f"{record['test_bits_per_dim']:.4f} bits/dim" if "test_bits_per_dim" in record else
                    f"likelihood {self.model.likelihood.name}") + "), "
                 f"train loss {record['train_loss']:.2f}, {record['img_per_s']:.0f} img/s, "
                 f"{record['epoch_seconds']:.1f} s" + (" (stopped by --max-steps)" if partial else ""))
        if self.config.report and runtime.is_writer:
            self.refresh_report(final=state.step == self.last_step)

    def population_statistics(self) -> dict[str, torch.Tensor]:
        """BatchNorm's population statistics of the weights evaluated now (the averaged ones under --ema), computed
        once per step reached (``normalisation.py``); empty for a model without BatchNorm."""
        if self.statistics_step != self.state.step:
            with self.average.applied() if self.average is not None else contextlib.nullcontext():
                self.statistics = population_statistics(
                    self.model, self.streamed or self.data.train_images, self.data.levels, self.config, self.dtype,
                    self.data.train_labels if self.config.conditional else None)
            self.statistics_step = self.state.step
        return self.statistics

    @contextlib.contextmanager
    def evaluated_weights(self):
        """The model as evaluations see it for the duration: the averaged weights under --ema, and BatchNorm's
        population statistics of those weights (rank 0's on every rank); the live weights and running averages
        after, so training goes on exactly as it would have."""
        statistics = self.population_statistics()
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            with statistics_applied(self.model, statistics):
                if statistics:
                    self.runtime.broadcast_buffers(self.model)
                yield

    def objective_means(self, steps_in_epoch: int) -> dict:
        """A model's own objective and its parts, averaged over the epoch's steps (every rank's): the figures the
        training minimised, beside the true -ELBO's ``train_loss``."""
        sums = self.state.objective_sum
        if sums is None:
            return {}
        means = self.runtime.all_reduce(sums.clone()) / self.runtime.world_size / steps_in_epoch
        return dict(zip(self.objective_keys, means.tolist()))

    def refresh_report(self, final: bool) -> None:
        """RUN/report.html at an epoch end, unless the last refresh was recent: drawing its charts takes a second or
        two, so it is redrawn once at least ten times that long has passed (at most a tenth of the run's time goes
        to it, however short the epochs) and always after the last epoch."""
        started = time.monotonic()
        if not final and started - self.report_drawn < 10 * self.report_cost:
            return
        with self.evaluated_weights():
            self.evaluate.draw_samples(self.epoch, self.state.step)
        write_report([self.run_dir.path], self.run_dir.report_file)
        self.report_drawn = time.monotonic()
        self.report_cost = self.report_drawn - started
