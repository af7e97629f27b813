"""Training: the loop (``loop.py``), its step (``engine.py``), its state and schedule, the epoch-end evaluation,
and the hooks a caller can act through."""

from .hooks import Hooks
from .loop import TrainResult, train

__all__ = ["Hooks", "TrainResult", "train"]
