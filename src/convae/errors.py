"""Every error convae reports to a user, in one place, each with the exit code a script can act on
(docs/reliability.md):

    0 done; 1 the run itself failed (non-finite loss, a lost torchrun peer); 2 bad input (options, data, checkpoint);
    3 out of memory; 4 a file could not be written or read; 5 the run folder is busy; 130 interrupted.

The command line prints one line for each of these (``convae CMD: error: MESSAGE``) and exits with its code.
Anything else, a Python traceback included, is a bug in convae (``CONVAE_DEBUG=1`` shows the traceback of these
expected faults too). Nothing here imports torch: ``convae --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_FILESYSTEM = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130
EXIT_CODES = {0, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_OUT_OF_MEMORY, EXIT_FILESYSTEM, EXIT_BUSY, EXIT_INTERRUPTED}


class ConvaeError(Exception):
    """An expected fault: its message is the one line the user reads, ``exit_code`` what the command exits with.
    ``every_rank``: under torchrun each rank says it (its own fault), not rank 0 alone (a fault all ranks share)."""

    exit_code = EXIT_FAILED
    every_rank = False


class BadInput(ConvaeError):
    """Something the user gave is wrong: an option, a data file, a checkpoint, a run folder."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput, ValueError):
    """A setting is out of range or unknown; the message names the option."""


class DataError(BadInput, ValueError):
    """A data file is missing, truncated or not what it claims to be."""


class CheckpointError(BadInput, ValueError):
    """A checkpoint is missing, corrupt, or from another kind of run."""


class DistributedError(ConvaeError, RuntimeError):
    """The process group could not be formed, or a peer went away: a fault of the machines, not of the input."""

    every_rank = True


class NonFiniteLoss(ConvaeError, RuntimeError):
    """The loss became inf or NaN; the last good checkpoint is left as it was."""


class UntrustedFigure(ConvaeError, RuntimeError):
    """An evaluation gave a figure that is not the quantity its name says: inf or NaN, or a -ELBO that the model's
    own densities contradict. It is refused, never reported; the message names the figure, the run and the step."""


def refuse_non_finite(figures: dict, where: str) -> None:
    """``UntrustedFigure`` naming the first of ``figures`` (name -> number or None) that is inf or NaN."""
    for name, value in figures.items():
        if value is not None and not (value == value and abs(value) != float("inf")):
            raise UntrustedFigure(f"{where}: {name} is {value}: not a result (the model's numbers overflowed or are "
                                  "undefined there); nothing was reported")


class OutOfMemory(ConvaeError):
    """An allocation failed, or a setting was refused because it could not fit; the message names the options."""

    exit_code = EXIT_OUT_OF_MEMORY


class FileSystemFault(ConvaeError):
    """A file convae needed to write (or read) could not be; the message names it, says why and what next."""

    exit_code = EXIT_FILESYSTEM


class RunBusy(ConvaeError):
    """Another live process is writing this run folder."""

    exit_code = EXIT_BUSY


class TrainingInterrupted(ConvaeError):
    """Ctrl-C or SIGTERM: the step in flight finished and a checkpoint was written. ``resume`` is the command that
    continues the run, as the user would type it."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, run_dir: Path, step: int, signal_name: str, resume: str | None = None):
        self.run_dir, self.step, self.signal_name = run_dir, step, signal_name
        self.resume = resume or f"convae train --resume {run_dir}"
        super().__init__(f"{signal_name} at step {step}: checkpoint written; resume with: {self.resume}")
