"""The run folder as a layer of its own, below training and evaluation: its files and their formats
(``folder.py``: config.json, the start / resume decision, trimming, evaluation outputs), checkpoints
(``checkpoint.py``), the one-writer lock (``lock.py``), and a trained run opened for use (``trained.py``)."""

from .checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint, restore, section
from .folder import RunDir, Start, new_run_dir, plan_start, resumed_config
from .lock import RunLock
from .trained import Run, check_labels, open_run, weights_sha256

__all__ = ["Checkpoint", "check_labels", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "new_run_dir",
           "open_run", "plan_start", "restore", "resumed_config", "Run", "RunDir", "RunLock", "section", "Start",
           "weights_sha256"]
