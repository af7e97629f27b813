"""Where a run is, as objects: ``RunState`` (the step, the training seconds, this epoch's summed losses, the
non-finite watch) saved into a checkpoint and restored from one as a whole; ``Window`` (the losses since the last
progress record). Each rank of a torchrun group has its own noise stream, saved and restored with the rest."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..runs import Checkpoint, section
from ..runtime import Runtime

NONE = torch.iinfo(torch.long).max  # "no bad step" in a min-reduction


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_rank(seed: int, rank: int, step: int = 0) -> None:
    """Give a rank > 0 its own noise stream (dropout, z, binarization). Rank 0 keeps the stream a single-process
    run has, so a world of one is the plain run bit for bit."""
    if rank:
        torch.manual_seed((seed + 1) * 2_654_435_761 + 97 * rank + 7_919 * step)


class NonFiniteWatch:
    """The first step whose loss was not finite, kept on the device (no host sync per step) and read at the
    checkpoints and epoch ends."""

    def __init__(self, device: torch.device, step: int):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.counter = torch.full((), step, dtype=torch.long, device=device)

    def record(self, loss: torch.Tensor) -> None:
        self.first_bad = torch.where(torch.isfinite(loss) | (self.first_bad >= 0), self.first_bad, self.counter)
        self.counter += 1

    def first(self, runtime: Runtime) -> int | None:
        """The first bad step on any rank (0-based), or None."""
        bad = torch.where(self.first_bad >= 0, self.first_bad, NONE)
        bad = int(runtime.all_reduce(bad.clone(), "min").item())
        return None if bad == NONE else bad


@dataclass
class RunState:
    """What a checkpoint holds besides the weights: the step reached, the seconds spent training, this rank's summed
    training losses of the current epoch (and its RNG state, read from torch when saved)."""

    step: int
    train_seconds: float
    loss_sum: torch.Tensor  # float64 on the device
    watch: NonFiniteWatch
    saved_world: int = 1    # how many processes wrote the checkpoint it was restored from
    generator: torch.Generator | None = None  # the run's noise stream when it is not torch's global one (packed)
    objective_sum: torch.Tensor | None = None  # a model's own objective and its parts, summed over the epoch

    @classmethod
    def fresh(cls, device: torch.device, seed: int, rank: int, objective_terms: int = 0) -> "RunState":
        """``objective_terms``: how many figures a model's own objective logs (its value and its parts), or 0."""
        seed_rank(seed, rank)
        return cls(0, 0.0, torch.zeros((), dtype=torch.float64, device=device), NonFiniteWatch(device, 0),
                   objective_sum=objective_zeros(objective_terms, device))

    @classmethod
    def restored(cls, checkpoint: Checkpoint, device: torch.device, seed: int, runtime: Runtime,
                 objective_terms: int = 0) -> "RunState":
        """This rank's state from a checkpoint; its RNG and sums when the world size is the same, else each rank's
        share of the epoch's losses so far is the mean of the old ranks'."""
        step, saved_world, rank = checkpoint.meta["step"], checkpoint.meta.get("world_size", 1), runtime.rank
        extras = [section(checkpoint, "extra", r) for r in range(saved_world)]

        def share(name: str) -> torch.Tensor:
            sums = [e[name] for e in extras]
            return (sums[rank] if saved_world == runtime.world_size else torch.stack(sums).mean(0)).to(device)

        loss_sum = share("epoch_loss_sum")
        objective_sum = objective_zeros(objective_terms, device)
        if objective_sum is not None and all("epoch_objective_sum" in e for e in extras):
            objective_sum = share("epoch_objective_sum")
        if rank < saved_world:
            set_rng_state(section(checkpoint, "rng", rank), device)
        else:
            seed_rank(seed, rank, step)
        return cls(step, checkpoint.meta["train_seconds"], loss_sum, NonFiniteWatch(device, step), saved_world,
                   objective_sum=objective_sum)

    def own_noise(self, device: torch.device) -> None:
        """From here on this run draws its noise (on ``device``) from a generator of its own, in the state torch's
        global one for that device is now (its stream goes on as it would have): what a member of a pack does."""
        if device.type == "cuda":
            self.generator = torch.Generator(device=device).set_state(torch.cuda.get_rng_state(device))
        else:
            self.generator = torch.Generator().set_state(torch.get_rng_state())

    def rank_tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """What this rank adds to a checkpoint: its RNG states and its sums (a run with a generator of its own saves
        that one in the place of the global one it stands for)."""
        rng = rng_state(device)
        if self.generator is not None:
            rng["cuda" if self.generator.device.type == "cuda" else "cpu"] = self.generator.get_state()
        mine = {f"rng.{k}": v for k, v in rng.items()}
        mine["extra.epoch_loss_sum"] = self.loss_sum.detach().cpu()
        if self.objective_sum is not None:
            mine["extra.epoch_objective_sum"] = self.objective_sum.detach().cpu()
        return mine

    def meta(self, model: str, steps_per_epoch: int, elapsed: float) -> dict:
        """The checkpoint's JSON fields; ``elapsed``: training seconds not yet in ``train_seconds``."""
        return {"model": model, "step": self.step, "epoch": math.ceil(self.step / steps_per_epoch),
                "train_seconds": self.train_seconds + elapsed}


def objective_zeros(terms: int, device: torch.device) -> torch.Tensor | None:
    return torch.zeros(terms, dtype=torch.float64, device=device) if terms else None


def objective_keys(objective) -> list[str]:
    """The names a model's own objective (a ``TrainingObjective``, or None) is logged under: ``train_objective``,
    then ``objective_PART`` for each of its parts."""
    return [] if objective is None else ["train_objective", *(f"objective_{p}" for p in objective.parts)]


class Window:
    """The loss terms summed on the device since the last progress record, and the clock at its start.
    ``extra``: the names of the figures a step returns after its three -ELBO terms (``objective_keys``)."""

    def __init__(self, device: torch.device, step: int, started: float, extra: list[str] | None = None):
        self.extra = list(extra or [])
        self.sums = torch.zeros(3 + len(self.extra), dtype=torch.float64, device=device)
        self.step, self.started = step, started

    def close(self, runtime: Runtime, step: int, epoch: int, lr: float, batch: int) -> dict:
        """The record for ``steps.jsonl``: means over the window (of the global batch under torchrun); then reopen."""
        now = time.perf_counter()
        sums = runtime.all_reduce(self.sums.cpu()) / runtime.world_size
        n = step - self.step
        loss, likelihood, kl, *extra = (sums / n).tolist()
        record = {"step": step, "epoch": epoch, "loss": loss, "L_likelihood": likelihood, "L_KL": kl,
                  **dict(zip(self.extra, extra)), "lr": lr, "img_per_s": n * batch / max(now - self.started, 1e-9)}
        self.sums.zero_()
        self.step, self.started = step, now
        return record
