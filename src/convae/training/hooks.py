"""Where a caller can act on a training run without patching convae's modules: the tests inject faults here (a
signal at a chosen step, a loss that turns NaN, an allocation that fails, a damaged copy of the data on one rank),
and an experiment driver could watch. ``train(config, hooks=Hooks(...))``; ``convae.cli.main(argv, hooks=...)``
passes them on. Every hook does nothing by default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _nothing(step: int) -> None:
    return None


def _unchanged(loss_function: Callable) -> Callable:
    return loss_function


@dataclass(frozen=True)
class Hooks:
    before_step: Callable[[int], None] = _nothing  # called with the 0-based step about to be taken
    wrap_loss: Callable[[Callable], Callable] = _unchanged  # wraps ``objectives.training_loss`` for the step
    load_data: Callable | None = None  # config -> ImageData, read instead of the data the config names
