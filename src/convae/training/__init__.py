"""Training: the loop, its checkpoints and its run folder."""

from .checkpoint import CheckpointError
from .loop import NonFiniteLoss, TrainingInterrupted, TrainResult, train

__all__ = ["CheckpointError", "NonFiniteLoss", "TrainingInterrupted", "TrainResult", "train"]
