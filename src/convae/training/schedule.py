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
    if config.schedule_knots:
        progress = knotted_progress(step, warmup, total_steps, config.schedule_knots)
    else:  # the same line without knots, written as it always was: every earlier run's rates to the last bit
        progress = (step - warmup) / max(1, total_steps - warmup)
    floor = config.lr / 100
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def knotted_progress(step: int, warmup: int, total_steps: int, knots) -> float:
    """How far along the cosine ``step`` is, piecewise linear through (warmup, 0), each knot's (step, progress) and
    (total_steps, 1): the cosine of a run whose end was re-planned at the knots, continuous at each."""
    points = [(warmup, 0.0), *((int(k), float(p)) for k, p in knots), (total_steps, 1.0)]
    for (s0, p0), (s1, p1) in zip(points, points[1:]):
        if step < s1 or s1 == total_steps:
            return p0 + (step - s0) / max(1, s1 - s0) * (p1 - p0)
    return 1.0
