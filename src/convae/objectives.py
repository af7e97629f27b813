"""The seed's loss, the negative ELBO, computed so that float32 (and bf16 autocast) stays finite.

The seed computes ``x log y + (1 - x) log(1 - y)`` with ``y = clip(sigmoid(logits), 1e-8, 1 - 1e-8)``. In float32
``1 - 1e-8`` rounds to 1.0, the clip does nothing at the top, and ``log(1 - y)`` becomes -inf. Clipping y to
[1e-8, 1 - 1e-8] is the same as clipping the logits to +-log((1 - 1e-8) / 1e-8) ~ +-18.42, so we clip there and
use binary_cross_entropy_with_logits: the seed's values and gradients, without the overflow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

CLIP = 1e-8
LOGIT_BOUND = math.log((1 - CLIP) / CLIP)  # logit of 1 - 1e-8
KL_LOG_EPS = 1e-8  # the seed: log(1e-8 + sigma^2)


class NegELBO(NamedTuple):
    total: torch.Tensor       # L_tot = L_likelihood + L_KL
    likelihood: torch.Tensor  # L_likelihood, the Bernoulli negative log-likelihood summed over pixels
    kl: torch.Tensor          # L_KL, KL(q(z|x) || N(0, I)) summed over latent dimensions


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Losses are summed in float32 even under bf16 autocast; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image: -sum_pixels [x log y + (1 - x) log(1 - y)], y = clip(sigmoid(logits)) as in the seed."""
    logits = _at_least_float32(logits).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    return nll.flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per image: 0.5 * sum(mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1), the seed's KL to N(0, I)."""
    mu, sigma = _at_least_float32(mu), _at_least_float32(sigma)
    var = sigma * sigma
    return 0.5 * (mu * mu + var - torch.log(KL_LOG_EPS + var) - 1).sum(1)


def per_image_neg_elbo(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> NegELBO:
    """The two terms and their sum for each image (vectors of length N)."""
    likelihood = bernoulli_nll(logits, x)
    kl = gaussian_kl(mu, sigma).to(likelihood.dtype)
    return NegELBO(likelihood + kl, likelihood, kl)


def neg_elbo(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> NegELBO:
    """The seed's loss: each term summed per image, then averaged over the batch."""
    per_image = per_image_neg_elbo(logits, x, mu, sigma)
    return NegELBO(*(t.mean() for t in per_image))


def seed_formula_float32(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The seed's likelihood term written line by line (clip on probabilities). Kept to show why we don't."""
    y = y.clamp(CLIP, 1 - CLIP)
    return -(x * torch.log(y) + (1 - x) * torch.log(1 - y)).flatten(1).sum(1)


def bernoulli_entropy_floor(x: torch.Tensor) -> torch.Tensor:
    """Per image: the least Bernoulli NLL any model can reach on gray targets, sum of binary entropies H(x)."""
    x = x.double()
    h = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
    return h.flatten(1).sum(1)
