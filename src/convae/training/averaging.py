"""Weight averaging (``--ema``): an exponential moving average of the parameters, used to evaluate.

Averaging the iterates of Adam (Polyak & Juditsky 1992; the EMA of most modern generative-model code) smooths
the noise of the last steps out of the weights that get evaluated. The decay ramps up as min(decay, (1 + t) /
(10 + t)) so a short run's average is not dominated by the initial weights.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..runs.checkpoint import EMA_PREFIX as PREFIX


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the model for the duration (evaluation, pictures); the live ones after."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, live)

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {PREFIX + name: a for name, a in zip(self.names, self.average)}
        tensors[PREFIX + "updates"] = torch.tensor(self.updates)
        return tensors

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """From a checkpoint's ``ema.*`` tensors (or, when it has none, start the average at the current weights)."""
        if PREFIX + "updates" not in tensors:
            torch._foreach_copy_(self.average, [p.detach() for p in self.params])
            return
        for name, a in zip(self.names, self.average):
            a.copy_(tensors[PREFIX + name])
        self.updates = int(tensors[PREFIX + "updates"])
