"""The negative ELBO of a model on a set of images, in eval mode (dropout off, BatchNorm running stats)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import EvalImages
from ..models import VAE
from ..objectives import bernoulli_entropy_floor
from ..runtime import Runtime


@dataclass
class ElboResult:
    neg_elbo: float      # mean over images of L_likelihood + L_KL, nats per image
    likelihood: float    # mean Bernoulli NLL term
    kl: float            # mean KL term
    n_images: int
    kl_per_dim: list[float] | None = None  # mean KL of each latent dimension (they sum to ``kl``)


def batch_generator(device: torch.device, seed: int, start: int) -> torch.Generator:
    """The noise for the evaluation batch that begins at image ``start``: a function of (seed, start) alone, so
    the figure does not depend on how many processes share the work (batch 0 keeps the plain ``seed``)."""
    return torch.Generator(device=device).manual_seed(seed + 1_000_003 * start)


@torch.no_grad()
def evaluate_neg_elbo(model: VAE, data: EvalImages, *, batch_size: int = 500, seed: int = 0,
                      precision: str = "fp32", runtime: Runtime | None = None) -> ElboResult:
    """One-sample negative ELBO over ``data``, with noise from generators seeded by ``seed`` so the same model
    always gets the same number and the training RNG is left untouched. Under torchrun each rank takes every
    W-th batch and the sums are all-reduced: the single-process figure, up to the order of float64 additions."""
    runtime = runtime or Runtime()
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    sums = torch.zeros(3, dtype=torch.float64, device=p.device)
    kl_dims = torch.zeros(model.kl_unit_count, dtype=torch.float64, device=p.device)
    try:
        for start in range(runtime.rank * batch_size, len(data), runtime.world_size * batch_size):
            x = data.floats(start, start + batch_size, p.dtype, p.device)
            with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x, data.labels_of(start, start + batch_size, p.device),
                            generator=batch_generator(p.device, seed, start))
            nll, kl_units = model.loss_terms(out, x)
            kl = kl_units.sum(1)
            sums += torch.stack([t.double().sum() for t in (nll + kl, nll, kl)])
            kl_dims += model.kl_units(out, torch.float64).sum(0)
    finally:
        model.train(was_training)
    total, likelihood, kl = (runtime.all_reduce(sums) / len(data)).tolist()
    return ElboResult(total, likelihood, kl, len(data), (runtime.all_reduce(kl_dims) / len(data)).tolist())


def entropy_floor(data: EvalImages) -> float:
    """Mean over images of the summed binary entropy of the targets: no Bernoulli decoder can go below it
    (0 for binary images)."""
    total = 0.0
    for start in range(0, len(data), 1000):
        total += bernoulli_entropy_floor(data.floats(start, start + 1000, torch.float64, torch.device("cpu"))).sum().item()
    return total / len(data)
