"""What each step of a run uses that is a function of the step alone: the learning rate and the order of the images.
Both are recomputed on a resume, so a checkpoint needs neither, and every rank of a torchrun group agrees on them."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def epoch_order(n: int, epoch: int, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """The order of the training images in ``epoch``: a function of (seed, epoch) alone."""
    if not config.shuffle:
        return torch.arange(n, device=device)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate for ``step`` (0-based): constant, or one cycle (linear warm-up, cosine to lr / 100)."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup = config.warmup_steps or max(1, int(config.warmup_fraction * total_steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = config.lr / 100
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
