"""``--time-budget``: how many steps a run can take in a given time, measured on this machine as it runs.

Two measurements, because a few seconds at the start are not the speed of a long run (measured: a 15-minute run
planned from 11 steps on a copy took 1,045 s, the loop's own work and a machine that settles below its first
seconds' speed):

1. **The plan**, before the first real step: the run's own step (the same model, batch, precision and step function)
   is timed on a throwaway copy of the model and optimizer, on batches drawn at random from the training set: a few
   warm-up steps, then steps until ``MEASURE_SECONDS`` have passed. It fixes the warm-up of the learning-rate
   schedule (``warmup_steps``, the share ``--warmup-fraction`` of the planned steps) and a first number of steps.
2. **Re-plans**, at the end of that warm-up (5 % of the plan under a constant rate) and then each time half of the
   steps left are done, until they are under ``REPLAN_LAST_SHARE`` of the run: the run's own steps since the last
   re-plan, timed by the training clock (the steps and the loop's records, not the epoch-end evaluations), fix the
   number of steps that fills what is left of the budget. A machine that slows as it runs is followed (measured: a
   15-minute run re-planned once at the warm-up's 3.17 steps/s ran its last 2,250 steps at 2.7 and took 112 %).
   The warm-up does not depend on the total, and after it each re-plan is a knot of the cosine (``schedule_knots``:
   the step and the cosine's progress there), from which it runs on to the new end: the rate never jumps.

All are recorded as they are made (config.json's ``max_steps``, ``warmup_steps``, ``schedule_knots`` and
``time_budget_plan``), so a resumed run keeps them and ends where an uninterrupted one would; the run's random numbers
and weights are untouched by the timing (the copy draws from torch's generators inside ``fork_rng``): a budgeted run
is the run of the settings it recorded, bit for bit. What the budget counts is training:
the steps' time, not start-up, the epoch-end evaluations or checkpoints (reported apart, as ``eval_seconds`` and the
run's wall time).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace

import torch

from ..runtime import synchronize

WARMUP_STEPS = 3       # untimed: first-call costs (kernel selection, allocator, compilation)
MEASURE_SECONDS = 3.0  # then steps are timed until this much time has passed ...
MEASURE_STEPS = (5, 200)  # ... and at least 5, at most 200 steps
REPLAN_FRACTION = 0.05   # under a constant learning rate, the re-plan comes after this share of the planned steps
REPLAN_LEAST_STEPS = 5   # a re-plan needs this many timed steps of the run's own (after WARMUP_STEPS), else the plan
REPLAN_LAST_SHARE = 0.05  # re-planned again half-way through what is left, until that is under this share of the run


@dataclass
class BudgetPlan:
    seconds: float           # the budget
    steps_per_second: float  # measured on the copy
    measured_steps: int
    steps: int               # the steps the run takes (as re-planned so far)
    replan_step: int = 0     # the next re-plan (0: none left)
    replans: list = field(default_factory=list)  # each: at_step, steps_per_second, measured_steps, seconds_left, steps

    def describe(self) -> dict:
        return {"seconds": self.seconds, "steps_per_second": self.steps_per_second,
                "measured_steps": self.measured_steps, "steps": self.steps, "replan_step": self.replan_step,
                "replans": self.replans}

    @classmethod
    def from_record(cls, record: dict) -> "BudgetPlan":
        return cls(record["seconds"], record["steps_per_second"], record["measured_steps"], record["steps"],
                   record.get("replan_step", 0), list(record.get("replans", [])))


def measure_steps_per_second(make_step, model, optimizer_factory, n_images: int, batch_size: int,
                             device: torch.device) -> tuple[float, int]:
    """Steps per second of ``make_step(model_copy, optimizer_copy)`` on a deep copy of ``model`` (and a fresh
    optimizer from ``optimizer_factory(model_copy)``), and how many steps were timed. torch's random generators are
    put back afterwards, and ``model`` is not touched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        twin = copy.deepcopy(model)
        step = make_step(twin, optimizer_factory(twin))

        def batch():  # drawn at random, as the run's are (one batch over and over stays in cache and times fast)
            return torch.randint(max(1, n_images), (batch_size,)).to(device)

        for k in range(WARMUP_STEPS):
            step(batch(), 0.0, k)  # lr 0: the copy's weights stay finite whatever the run's lr
        synchronize(device)
        started, timed = time.perf_counter(), 0
        least, most = MEASURE_STEPS
        while timed < most and (timed < least or time.perf_counter() - started < MEASURE_SECONDS):
            step(batch(), 0.0, WARMUP_STEPS + timed)
            timed += 1
            if timed % 5 == 0 or timed >= least:
                synchronize(device)
        synchronize(device)
        elapsed = time.perf_counter() - started
    return timed / max(elapsed, 1e-9), timed


def plan(seconds: float, steps_per_second: float, measured: int, warmup_fraction: float | None) -> BudgetPlan:
    """The steps that fit in ``seconds`` at the measured rate (at least one), and where to re-plan them first: the
    end of the warm-up (``warmup_fraction`` of them; None: a constant rate, re-planned after ``REPLAN_FRACTION``)."""
    steps = max(1, math.floor(seconds * steps_per_second))
    replan_step = max(1, int((REPLAN_FRACTION if warmup_fraction is None else warmup_fraction) * steps))
    return BudgetPlan(seconds, steps_per_second, measured, steps, replan_step)


def next_replan(step: int, steps: int) -> int:
    """Half-way through the steps left, while they are more than ``REPLAN_LAST_SHARE`` of the run (0: no more)."""
    left = steps - step
    return step + left // 2 if left > max(2 * REPLAN_LEAST_STEPS, REPLAN_LAST_SHARE * steps) else 0


def replan(budget: BudgetPlan, step: int, seconds_used: float, steps_per_second: float, measured: int) -> BudgetPlan:
    """The plan once the run's own last ``measured`` steps ran at ``steps_per_second`` and ``seconds_used`` of
    training have gone by at ``step``: the steps that fill the rest of the budget (at least one more), and the next
    re-plan."""
    left = max(0.0, budget.seconds - seconds_used)
    steps = step + max(1, math.floor(left * steps_per_second))
    made = {"at_step": step, "steps_per_second": steps_per_second, "measured_steps": measured, "seconds_left": left,
            "steps": steps}
    return replace(budget, steps=steps, replan_step=next_replan(step, steps), replans=budget.replans + [made])


def kept(budget: BudgetPlan, step: int, measured: int) -> BudgetPlan:
    """A re-plan with too few steps timed in this process (a resume just before it): the steps stay."""
    return replace(budget, replan_step=next_replan(step, budget.steps),
                   replans=budget.replans + [{"at_step": step, "kept": True, "measured_steps": measured}])
