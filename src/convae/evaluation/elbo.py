"""The negative ELBO of a model on a set of images, in eval mode (dropout off, BatchNorm running stats)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import to_float
from ..models import VAE
from ..objectives import bernoulli_entropy_floor, per_image_neg_elbo


@dataclass
class ElboResult:
    neg_elbo: float      # mean over images of L_likelihood + L_KL, nats per image
    likelihood: float    # mean Bernoulli NLL term
    kl: float            # mean KL term
    n_images: int

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}neg_elbo": self.neg_elbo, f"{prefix}L_likelihood": self.likelihood,
                f"{prefix}L_KL": self.kl}


@torch.no_grad()
def evaluate_neg_elbo(model: VAE, images: torch.Tensor, *, levels: float, image_size: int, batch_size: int = 500,
                      seed: int = 0, precision: str = "fp32") -> ElboResult:
    """One-sample negative ELBO over ``images`` (uint8, N x 1 x H x W), with noise from a generator seeded by
    ``seed`` so the same model always gets the same number and the training RNG is left untouched."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    generator = torch.Generator(device=p.device).manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64, device=p.device)
    try:
        for start in range(0, len(images), batch_size):
            x = to_float(images[start:start + batch_size].to(p.device), levels, image_size, p.dtype)
            with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x, generator=generator)
            terms = per_image_neg_elbo(out.logits, x, out.mu, out.sigma)
            sums += torch.stack([t.double().sum() for t in terms])
    finally:
        model.train(was_training)
    total, likelihood, kl = (sums / len(images)).tolist()
    return ElboResult(total, likelihood, kl, len(images))


def entropy_floor(images: torch.Tensor, *, levels: float, image_size: int) -> float:
    """Mean over images of the summed binary entropy of the gray targets: no Bernoulli decoder can go below it."""
    total = 0.0
    for start in range(0, len(images), 1000):
        x = to_float(images[start:start + 1000], levels, image_size, torch.float64)
        total += bernoulli_entropy_floor(x).sum().item()
    return total / len(images)
