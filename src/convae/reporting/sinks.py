"""One logger with pluggable sinks: a line, a step record or an epoch record goes to every sink with one call.

Sinks: the terminal and ``log.txt`` (lines), ``steps.jsonl`` (every ``progress_every`` steps: the training loss
and its two terms averaged over those steps, the learning rate, images/s), ``metrics.jsonl`` (one record per
epoch) and TensorBoard event files in ``tb/`` (all of those, plus the epoch's pictures and the hyperparameters).
Only rank 0 logs; on the other ranks every call does nothing.

Resuming at step S keeps what was logged up to S and drops what came after it (written before a crash, and about
to be written again): the run folder trims ``steps.jsonl`` and ``metrics.jsonl`` to step S (``RunDir.trim_to``)
before the logger opens them, and TensorBoard is told ``purge_step = S + 1``, so the curves continue without gaps
or repeats.
"""

from __future__ import annotations

import json
import sys
import numpy as np
import torch

from ..files import atomic_write_jsonl
from ..progress import console_lost
from ..runs import RunDir

# The hyperparameters shown in TensorBoard's HParams tab (the settings that tell runs apart).
HPARAMS = ("model", "encoder", "likelihood", "batch_size", "lr", "lr_schedule", "epochs", "seed", "precision",
           "binarize", "dtype", "data", "image_size", "channels")
HPARAM_METRICS = ("test_neg_elbo", "test_L_KL", "test_L_likelihood")


class RunLogger:
    def __init__(self, run: RunDir, *, active: bool, echo=print, tensorboard: bool = True,
                 resume_step: int | None = None, hparams: dict | None = None, metrics: list[dict] | None = None):
        """``metrics``: the records kept from before ``resume_step`` (the files were trimmed to it)."""
        self.active, self.echo, self.console_gone = active, echo, False
        self.metrics = list(metrics or [])
        self.log_file = self.steps_file = self.tb = None
        if not active:
            return
        self.run = run
        self.log_file = open(run.log_file, "a")
        self.steps_file = open(run.steps_file, "a")
        if tensorboard:
            self.tb = _tensorboard_writer(run.tensorboard, None if resume_step is None else resume_step + 1)
            if self.tb is not None and resume_step is None and hparams:
                self._write_hparams(hparams)

    @property
    def shows_pictures(self) -> bool:
        """Whether a sink shows the pictures given to ``log_epoch`` (TensorBoard); the seed's reconstructions
        picture is written to RUN/images either way."""
        return self.tb is not None

    # -- the three kinds of record ------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        if self.active:
            self.show(line)
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def show(self, line: str) -> None:
        """The line on the console; where its reader went away (``| head``), log.txt says so once and the run goes on
        with its lines in log.txt alone."""
        if self.console_gone:
            return
        try:
            self.echo(line)
        except OSError as e:
            if not console_lost(e, sys.stdout):
                raise
            self.console_gone = True
            self.note(f"convae: the console went away ({type(e).__name__}); training goes on, its lines in this file")

    def note(self, line: str) -> None:
        """A line for log.txt alone (the caller says it to the user its own way)."""
        if self.active:
            self.log_file.write(line + "\n")
            self.log_file.flush()

    def log_steps(self, record: dict) -> None:
        """``record``: step, epoch, loss, L_likelihood, L_KL (means over the steps since the last record; for a model
        with its own objective also ``train_objective`` and ``objective_PART``), lr, img_per_s."""
        if not self.active:
            return
        self.steps_file.write(_json_line(record))
        self.steps_file.flush()
        if self.tb is not None:
            for key in ("loss", "L_likelihood", "L_KL", "lr", "img_per_s", *objective_figures(record)):
                self.tb.add_scalar(f"train/{key}", record[key], record["step"])

    def log_epoch(self, record: dict, images: dict[str, torch.Tensor] | None = None) -> None:
        """``record``: a metrics.jsonl line; ``images``: name -> C x H x W tensor in [0, 1] for TensorBoard."""
        self.metrics.append(record)
        if not self.active:
            return
        atomic_write_jsonl(self.run.metrics_file, self.metrics)
        if self.tb is not None:
            step = record["step"]
            for key in ("test_neg_elbo", "test_L_likelihood", "test_L_KL", "entropy_floor", "test_bits_per_dim"):
                if record.get(key) is not None:  # the floor and bits/dim exist for some likelihoods only
                    self.tb.add_scalar(f"test/{key.removeprefix('test_')}", record[key], step)
            for key in ("L_tot", "L_likelihood", "L_KL"):
                self.tb.add_scalar(f"monitor/{key}", record[key], step)
            self.tb.add_scalar("train/epoch_loss", record["train_loss"], step)
            for key in objective_figures(record):  # a model's own objective, beside the true -ELBO
                self.tb.add_scalar(f"train/epoch_{key.removeprefix('train_')}", record[key], step)
            for key in HPARAM_METRICS:
                self.tb.add_scalar(f"hparam/{key}", record[key], step)
            if record.get("test_kl_per_dim"):  # which latent dimensions carry information, epoch by epoch
                self.tb.add_histogram("test/kl_per_dim", np.asarray(record["test_kl_per_dim"]), step)
            for name, image in (images or {}).items():
                self.tb.add_image(name, image.float().clamp(0, 1).cpu(), step)
            self.tb.flush()

    def close(self) -> None:
        for f in (self.log_file, self.steps_file):
            if f is not None:
                f.close()
        if self.tb is not None:
            self.tb.close()

    def _write_hparams(self, settings: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in settings.items()
                  if k in HPARAMS}
        experiment, session_start, _ = hparams(values, {f"hparam/{k}": float("nan") for k in HPARAM_METRICS})
        for summary in (experiment, session_start):
            self.tb.file_writer.add_summary(summary)


def objective_figures(record: dict) -> list[str]:
    """The keys of a record that hold a model's own training objective and its parts (``train_objective``,
    ``objective_PART``): logged beside the -ELBO, never in its place."""
    return [k for k in record if k == "train_objective" or k.startswith("objective_")]


def _tensorboard_writer(folder, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a trimmed install may lack it
        print("convae: tensorboard is not installed (pip install tensorboard); no event files are written",
              file=sys.stderr)
        return None
    return SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)


def _json_line(record: dict) -> str:
    return json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in record.items()}) + "\n"
