"""The random numbers a training step draws inside the model — dropout masks and the reparameterisation's eps — with
a way to draw them outside it.

By default they come from PyTorch's global generator exactly as ``nn.Dropout`` and ``torch.randn`` draw them (the
seed's arithmetic, bit for bit). Under ``noise_from(source)`` they come from ``source`` instead:

* ``Draws`` draws them from a generator of its own, the same values as the global one would give in its state;
* a ``Recorder`` does that and notes what was drawn (kind, shape, dtype): the plan of one step's noise;
* a ``Replay`` hands out tensors drawn beforehand, in order.

A packed sweep (``convae.training.packed``) gives each member a generator of its own: members stepping side by side
on threads draw from it directly (``Draws``); members in one batched pass get their noise drawn beforehand, each from
its generator by the plan one member's step recorded (``draw``), and replayed inside the pass. Either way each
member gets the noise its run would have drawn alone, on the CPU value for value.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn as nn

_SOURCE: contextvars.ContextVar = contextvars.ContextVar("convae_noise_source", default=None)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask can come from a noise source (the same mask: Bernoulli(1 - p) / (1 - p))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = _SOURCE.get()
        if source is None or not self.training or self.p == 0:
            return super().forward(x)
        return x * source.dropout_mask(x, self.p)


def standard_normal(shape, *, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """N(0, 1) values of ``shape`` (eps of z = mu + sigma * eps): from ``generator`` (the global one if None), or
    from the active noise source."""
    source = _SOURCE.get()
    if source is None or generator is not None:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return source.normal(tuple(shape), device, dtype)


def dropout_mask(shape, dtype, p: float, generator: torch.Generator, device) -> torch.Tensor:
    """What ``F.dropout`` multiplies by on the CPU, drawn from ``generator``."""
    return torch.empty(shape, dtype=dtype, device=device).bernoulli_(1 - p, generator=generator).div_(1 - p)


class Draws:
    """Draws from ``generator``."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def dropout_mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        return dropout_mask(x.shape, x.dtype, p, self.generator, x.device)

    def normal(self, shape, device, dtype) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=device, dtype=dtype)


class Recorder(Draws):
    """Draws from ``generator`` and notes each draw: ("dropout", shape, dtype, p) or ("normal", shape, dtype, None)."""

    def __init__(self, generator: torch.Generator):
        super().__init__(generator)
        self.plan = []

    def dropout_mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        self.plan.append(("dropout", tuple(x.shape), x.dtype, p))
        return super().dropout_mask(x, p)

    def normal(self, shape, device, dtype) -> torch.Tensor:
        self.plan.append(("normal", shape, dtype, None))
        return super().normal(shape, device, dtype)


class Replay:
    """Hands out ``tensors`` in order (drawn beforehand by ``draw``)."""

    def __init__(self, tensors):
        self.tensors = list(tensors)

    def dropout_mask(self, x: torch.Tensor, p: float) -> torch.Tensor:
        return self.tensors.pop(0)

    def normal(self, shape, device, dtype) -> torch.Tensor:
        return self.tensors.pop(0)


def draw(plan: list, generator: torch.Generator, device) -> list[torch.Tensor]:
    """One step's noise as ``plan`` says, from ``generator``."""
    return [dropout_mask(shape, dtype, p, generator, device) if kind == "dropout" else
            torch.randn(shape, generator=generator, device=device, dtype=dtype) for kind, shape, dtype, p in plan]


@contextlib.contextmanager
def noise_from(source):
    """The model's noise from ``source`` (None: torch's global generator) for the duration, in this thread."""
    token = _SOURCE.set(source)
    try:
        yield source
    finally:
        _SOURCE.reset(token)
