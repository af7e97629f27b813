"""BatchNorm statistics that belong to the weights they are used with.

In training, BatchNorm normalises by each batch's own mean and variance and keeps a running average of them for
evaluation. The seed's layers average like Keras (momentum 0.99: a batch weighs 1 %, so the average forgets its
start only after some 460 steps) — in a short run, a small folder, or just after the weights moved fast, that average
describes weights long gone, and an evaluation with it scores another model: on 412 clip-art images a run's test
-ELBO went from 7.7 to 94 bits/dim while its training loss fell (issue 39).

So every evaluation, export and ``convae.load`` uses *population statistics*, recomputed for the weights being
evaluated (PreciseBN, as detectron2 does; ``torch.optim.swa_utils.update_bn`` for averaged weights): a forward pass in
training mode over the first ``POPULATION_IMAGES`` training images, each BatchNorm averaging their batches' statistics
with equal weight. Training itself is untouched — its running averages, its random numbers and its steps are the
seed's bit for bit (the pass draws its noise from a generator of its own, on a copy of the model) — and every
checkpoint keeps the population statistics of its weights (``population.*``), so a resumed run, ``eval`` and
``convae.load`` all read the same ones.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

from ..models.noise import Draws, noise_from
from ..runs.checkpoint import POPULATION_PREFIX
from .engine import make_batch

POPULATION_IMAGES = 2048  # training images the statistics are averaged over (64 batches of 32: PreciseBN's order)
POPULATION_SEED = 20_390  # their binarization and z noise: a generator of their own, never the run's


def batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The model's BatchNorm layers that keep running statistics, by name."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def population_statistics(model: nn.Module, images, levels: float, config, dtype: torch.dtype,
                          labels: torch.Tensor | None = None, limit: int = POPULATION_IMAGES) -> dict[str, torch.Tensor]:
    """Each BatchNorm's mean and variance over the first ``limit`` training images (``images``: uint8, resident or
    streamed; batches of the run's batch size, prepared as training prepares them) at ``model``'s current weights:
    ``{buffer name: tensor}`` for every ``running_mean`` and ``running_var``; empty for a model without BatchNorm.
    ``model`` is not changed, nor are torch's random generators."""
    layers = batchnorms(model)
    if not layers:
        return {}
    device = next(model.parameters()).device
    probe = copy.deepcopy(model)
    for _, layer in batchnorms(probe):
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch weighs the same
    probe.train()
    n = min(limit, len(images))
    batch = max(2, min(config.batch_size, n))
    generator = torch.Generator(device=device).manual_seed(POPULATION_SEED)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), noise_from(Draws(generator)):
        for start in range(0, n - batch + 1, batch):  # whole batches only: a batch of one has no variance
            index = torch.arange(start, start + batch, device=device if not hasattr(images, "prefetch") else "cpu")
            x = make_batch(images[index], levels, config, dtype, generator)
            probe(x, None if labels is None else labels[index.to(labels.device)])
    found = dict(probe.named_buffers())
    return {f"{name}.{kind}": found[f"{name}.{kind}"].detach().clone()
            for name, _ in layers for kind in ("running_mean", "running_var")}


@contextlib.contextmanager
def statistics_applied(model: nn.Module, statistics: dict[str, torch.Tensor]):
    """``statistics`` (``population_statistics``) in the model's BatchNorm buffers for the duration; its own running
    averages after."""
    if not statistics:
        yield
        return
    buffers = dict(model.named_buffers())
    kept = {name: buffers[name].detach().clone() for name in statistics}
    with torch.no_grad():
        for name, value in statistics.items():
            buffers[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in kept.items():
                buffers[name].copy_(value)


def as_checkpoint_tensors(statistics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {POPULATION_PREFIX + name: value for name, value in statistics.items()}
