"""``--time-budget``: how many steps a run can take in a given time, measured on this machine before it starts.

The run's own step (the same model, batch, precision and step function) is timed on a throwaway copy of the model
and optimizer: a few warm-up steps, then steps until ``MEASURE_SECONDS`` have passed. The number of steps is fixed
from that rate once, before the first real step, and recorded (config.json's ``max_steps``, with ``epochs`` enough
to hold them), so that the learning-rate schedule is laid over it from the start and a resumed run ends exactly
where an uninterrupted one would. The run's random numbers and weights are untouched by the timing (it draws from
torch's generators inside ``fork_rng``), so a budgeted run is the run of ``--max-steps N`` with that N, bit for
bit. What the budget counts is training: the steps' time, not start-up, the epoch-end evaluations or checkpoints
(reported apart, as ``eval_seconds`` and the run's wall time).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch

from ..runtime import synchronize

WARMUP_STEPS = 3       # untimed: first-call costs (kernel selection, allocator, compilation)
MEASURE_SECONDS = 3.0  # then steps are timed until this much time has passed ...
MEASURE_STEPS = (5, 200)  # ... and at least 5, at most 200 steps


@dataclass
class BudgetPlan:
    seconds: float           # the budget
    steps_per_second: float  # measured
    measured_steps: int
    steps: int               # the steps the run takes

    def describe(self) -> dict:
        return {"seconds": self.seconds, "steps_per_second": self.steps_per_second,
                "measured_steps": self.measured_steps, "steps": self.steps}


def measure_steps_per_second(make_step, model, optimizer_factory, n_images: int, batch_size: int,
                             device: torch.device) -> tuple[float, int]:
    """Steps per second of ``make_step(model_copy, optimizer_copy)`` on a deep copy of ``model`` (and a fresh
    optimizer from ``optimizer_factory(model_copy)``), and how many steps were timed. torch's random generators are
    put back afterwards, and ``model`` is not touched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        twin = copy.deepcopy(model)
        step = make_step(twin, optimizer_factory(twin))
        index = torch.arange(batch_size, device=device) % max(1, n_images)
        for k in range(WARMUP_STEPS):
            step(index, 0.0, k)  # lr 0: the copy's weights stay finite whatever the run's lr
        synchronize(device)
        started, timed = time.perf_counter(), 0
        least, most = MEASURE_STEPS
        while timed < most and (timed < least or time.perf_counter() - started < MEASURE_SECONDS):
            step(index, 0.0, WARMUP_STEPS + timed)
            timed += 1
            if timed % 5 == 0 or timed >= least:
                synchronize(device)
        synchronize(device)
        elapsed = time.perf_counter() - started
    return timed / max(elapsed, 1e-9), timed


def plan(seconds: float, steps_per_second: float, measured: int) -> BudgetPlan:
    """The steps that fit in ``seconds`` at the measured rate (at least one)."""
    return BudgetPlan(seconds, steps_per_second, measured, max(1, math.floor(seconds * steps_per_second)))
