"""The seed's loss, the negative ELBO, computed so that float32 (and bf16 autocast) stays finite.

The seed computes ``x log y + (1 - x) log(1 - y)`` with ``y = clip(sigmoid(logits), 1e-8, 1 - 1e-8)``. In float32
``1 - 1e-8`` rounds to 1.0, the clip does nothing at the top, and ``log(1 - y)`` becomes -inf. Clipping y to
[1e-8, 1 - 1e-8] is the same as clipping the logits to +-log((1 - 1e-8) / 1e-8) ~ +-18.42, so we clip there and
use binary_cross_entropy_with_logits: the seed's values and gradients, without the overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

CLIP = 1e-8
LOGIT_BOUND = math.log((1 - CLIP) / CLIP)  # logit of 1 - 1e-8
KL_LOG_EPS = 1e-8  # the seed: log(1e-8 + sigma^2)
LOG_2PI = math.log(2 * math.pi)


class LossTerms(NamedTuple):
    """The -ELBO of each image, in its two terms: L_tot = nll + kl.sum(1)."""

    nll: torch.Tensor  # N: -log p(x | z), nats per image (L_likelihood)
    kl: torch.Tensor   # N x U: KL(q || p) of each latent unit (they sum to the image's L_KL)

    @property
    def total(self) -> torch.Tensor:
        return self.nll + self.kl.sum(1)


class NegELBO(NamedTuple):
    total: torch.Tensor       # L_tot = L_likelihood + L_KL
    likelihood: torch.Tensor  # L_likelihood, the Bernoulli negative log-likelihood summed over pixels
    kl: torch.Tensor          # L_KL, KL(q(z|x) || N(0, I)) summed over latent dimensions


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Losses are summed in float32 even under bf16 autocast; float64 stays float64."""
    return t if t.dtype == torch.float64 else t.float()


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image: -sum_pixels [x log y + (1 - x) log(1 - y)], y = clip(sigmoid(logits)) as in the seed."""
    logits = at_least_float32(logits).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    nll = F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")
    return nll.flatten(1).sum(1)


def kl_per_dimension(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """N x D: each latent dimension's KL to N(0, 1), 0.5 * (mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1), the seed's
    formula (in float32 at least; float64 stays float64)."""
    mu, sigma = at_least_float32(mu), at_least_float32(sigma)
    var = sigma * sigma
    return 0.5 * (mu * mu + var - torch.log(KL_LOG_EPS + var) - 1)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per image: the seed's KL to N(0, I), summed over the latent dimensions (halving is exact in binary, so
    this is the seed's 0.5 * sum(...) to the bit)."""
    return kl_per_dimension(mu, sigma).sum(1)


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """Nats per image of a discrete likelihood -> bits per dimension (C x H x W values), the unit of CIFAR-10."""
    return nats_per_image / (dims * math.log(2))


def per_image_neg_elbo(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                       likelihood=None) -> NegELBO:
    """The two terms and their sum for each image (vectors of length N); ``likelihood``: a
    ``convae.models.likelihoods.Likelihood``, by default the seed's Bernoulli."""
    nll = bernoulli_nll(logits, x) if likelihood is None else likelihood.nll(logits, x)
    kl = gaussian_kl(mu, sigma).to(nll.dtype)
    return NegELBO(nll + kl, nll, kl)


def neg_elbo(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
             likelihood=None) -> NegELBO:
    """The seed's loss: each term summed per image, then averaged over the batch."""
    per_image = per_image_neg_elbo(logits, x, mu, sigma, likelihood)
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


# ----------------------------------------------------------------------------------------------------------
# Training objectives beyond the seed's plain ELBO: the levers the literature trains with. The figures logged
# and evaluated stay the true -ELBO (or, under --iw-train, the IW bound); only the differentiated loss changes.



@dataclass(frozen=True)
class Objective:
    """What a training step minimises.

    beta:       the KL term's weight (beta-VAE; 1 is the ELBO).
    kl_warmup:  steps over which that weight rises linearly from 0 to beta (Sønderby et al. 2016).
    free_bits:  nats per latent dimension below which its batch-mean KL is not penalised (Kingma et al. 2016).
    iw_samples: K > 1 trains on the importance-weighted bound (IWAE, Burda et al. 2016); K = 1 is the ELBO.
    dataset_size: the number of training images, for a model's own objective (``TrainingObjective``).
    """

    beta: float = 1.0
    kl_warmup: int = 0
    free_bits: float = 0.0
    iw_samples: int = 1
    dataset_size: int = 0

    @property
    def plain(self) -> bool:
        """The seed's objective exactly (the step then runs the seed's arithmetic, bit for bit)."""
        return self.beta == 1.0 and self.kl_warmup == 0 and self.free_bits == 0.0 and self.iw_samples == 1

    def kl_weight(self, step: int) -> float:
        """The KL weight at ``step`` (0-based): beta * min(1, step / kl_warmup)."""
        if self.kl_warmup <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.kl_warmup)


def training_loss(model, x: torch.Tensor, objective: Objective, kl_weight: torch.Tensor | float = 1.0,
                  precision: str = "fp32", labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to differentiate, the stacked figures to log [L_tot, L_likelihood, L_KL]) for one batch.

    ``model`` is the VAE or its DDP wrapper (whose forward is what DDP must see); the VAE's ``loss_terms`` say what
    its -ELBO is made of. The logged L_tot is the -ELBO, or under ``iw_samples`` > 1 the batch's IW bound; L_likelihood
    and L_KL are the ELBO's two terms. ``labels``: the batch's classes, for a conditional model.

    A model with an objective of its own (``VAE.objective``, which refuses the levers above) differentiates that
    objective; the figures then go on with its batch mean and the means of its parts: [L_tot, L_likelihood, L_KL,
    objective, part, ...], the first three the true -ELBO's as always.
    """
    vae = getattr(model, "module", model)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if objective.iw_samples == 1:
        with autocast:
            out = model(x, labels)
        nll, kl_units = vae.loss_terms(out, x)
        own = vae.training_objective(out, x, LossTerms(nll, kl_units), objective.dataset_size)
        if own is not None:
            kl = kl_units.sum(1)
            terms = torch.stack([(nll + kl).mean(), nll.mean(), kl.mean(), at_least_float32(own.total).mean(),
                                 *(at_least_float32(own.parts[name]).mean() for name in vae.objective.parts)])
            return terms[3], terms
        if objective.plain:
            kl = kl_units.sum(1)
            terms = torch.stack([(nll + kl).mean(), nll.mean(), kl.mean()])
            return terms[0], terms
        nll, kl = nll.mean(), kl_units.sum(1).mean()
        penalised = kl_units.mean(0).clamp(min=objective.free_bits).sum() if objective.free_bits else kl
        return nll + kl_weight * penalised, torch.stack([nll + kl, nll, kl])
    # IWAE: K samples of z per image through the decoder at once; the DDP wrapper is bypassed here (its forward
    # is the one-sample pass), so IW training is single-process or needs its own gradient all-reduce.
    k = objective.iw_samples
    with autocast:
        posterior = vae.infer(x, labels)
        first = posterior[0]  # mu for one stochastic layer (the noise in its dtype), a hierarchy's features
        dtype = first.dtype if isinstance(first, torch.Tensor) else x.dtype
        eps = torch.randn((len(x), k, vae.noise_dim), device=x.device, dtype=dtype)
        log_px_z, log_pz, log_qz = vae.log_weight_terms(x, posterior, eps, labels)
    log_w = log_px_z + kl_weight * (log_pz - log_qz)
    bound = -(torch.logsumexp(log_w, dim=1) - math.log(k)).mean()
    exact_bound = -(torch.logsumexp(log_px_z + log_pz - log_qz, dim=1) - math.log(k)).mean()
    # the logged KL: closed form where the model has one (the seed's), else the mean of log q - log p over the samples
    exact_kl = vae.closed_form_kl_of(posterior)
    kl = (exact_kl if exact_kl is not None else log_qz - log_pz).mean()
    return bound, torch.stack([exact_bound, -log_px_z.mean(), kl]).detach()
