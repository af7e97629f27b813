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


def kl_per_dimension(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """N x D: each latent dimension's KL to N(0, 1), 0.5 * (mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1), the seed's
    formula (in float32 at least; float64 stays float64)."""
    mu, sigma = _at_least_float32(mu), _at_least_float32(sigma)
    var = sigma * sigma
    return 0.5 * (mu * mu + var - torch.log(KL_LOG_EPS + var) - 1)


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per image: the seed's KL to N(0, I), summed over the latent dimensions (halving is exact in binary, so
    this is the seed's 0.5 * sum(...) to the bit)."""
    return kl_per_dimension(mu, sigma).sum(1)


# ----------------------------------------------------------------------------------------------------------
# Likelihoods p(x | z): what the decoder's output means. Each gives per-image negative log-likelihoods in nats
# and the mean image (for pictures). ``params`` is the decoder output: N x (params_per_channel * C) x H x W.


class Likelihood:
    name = ""
    params_per_channel = 1
    discrete = False       # a probability mass on the 256 levels of 8-bit data: bits per dimension mean something
    entropy_floor = False  # the Bernoulli entropy of gray targets bounds the NLL from below

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One value per pixel for an autoregressive decoder: a sample where the likelihood is a Bernoulli, the
        mean elsewhere."""
        return self.mean(params)

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale halves of a two-parameter output (channel c's scale is channel C + c)."""
        c = params.shape[1] // 2
        return params[:, :c], params[:, c:]


class Bernoulli(Likelihood):
    """The seed's: each value a Bernoulli probability (gray values are treated as soft targets)."""
    name, entropy_floor = "bernoulli", True

    def nll(self, params, x):
        return bernoulli_nll(params, x)

    def mean(self, params):
        return torch.sigmoid(params)

    def draw(self, params, generator=None):
        return torch.bernoulli(torch.sigmoid(params.float()), generator=generator).to(params.dtype)


class ContinuousBernoulli(Likelihood):
    """Loaiza-Ganem & Cunningham (2019): the Bernoulli density normalised on [0, 1]. With logit l the normaliser
    is C(l) = 2 artanh(1 - 2 sigmoid(l)) / (1 - 2 sigmoid(l)) = l / tanh(l / 2), 2 at l = 0."""
    name = "continuous-bernoulli"

    @staticmethod
    def log_normaliser(logits: torch.Tensor) -> torch.Tensor:
        small = logits.abs() < 1e-2
        safe = torch.where(small, torch.ones_like(logits), logits)
        exact = torch.log(safe / torch.tanh(safe / 2))
        return torch.where(small, math.log(2) + logits.square() / 12, exact)

    def nll(self, params, x):
        logits = _at_least_float32(params).clamp(-LOGIT_BOUND, LOGIT_BOUND)
        return bernoulli_nll(logits, x) - self.log_normaliser(logits).flatten(1).sum(1)

    def mean(self, params):
        logits = params.float().clamp(-LOGIT_BOUND, LOGIT_BOUND)
        small = logits.abs() < 1e-2
        safe = torch.where(small, torch.ones_like(logits), logits)
        exact = torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe
        return torch.where(small, 0.5 + logits / 12, exact)


class DiscretizedLogistic(Likelihood):
    """A logistic distribution per value, integrated over the value's bin of the 256 levels of 8-bit data
    (PixelCNN++, Salimans et al. 2017): values k/255 are rescaled to [-1, 1], bins have half-width 1/255, the
    lowest and highest bins take the tails. Log-scales are clamped at -7 as there."""
    name, params_per_channel, discrete = "logistic", 2, True

    def nll(self, params, x):
        mean, log_scale = (_at_least_float32(t) for t in self.split(params))
        log_scale = log_scale.clamp(min=-7.0)
        x = 2 * x.to(mean.dtype) - 1
        inv_scale = torch.exp(-log_scale)
        upper = (x - mean + 1 / 255) * inv_scale  # a
        lower = (x - mean - 1 / 255) * inv_scale  # b
        # log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(-(a - b))), a - b > 0
        interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-(2 / 255) * inv_scale))
        log_p = torch.where(x < -0.999, F.logsigmoid(upper), torch.where(x > 0.999, F.logsigmoid(-lower), interior))
        return -log_p.flatten(1).sum(1)

    def mean(self, params):
        return ((self.split(params)[0].float() + 1) / 2).clamp(0, 1)


class Gaussian(Likelihood):
    """A normal density per value: learned scale (two outputs per channel), or a fixed ``sigma`` (one)."""
    name = "gaussian"

    def __init__(self, sigma: float | None = None):
        self.sigma = sigma
        self.params_per_channel = 1 if sigma else 2

    def nll(self, params, x):
        if self.sigma:
            mean, log_scale = _at_least_float32(params), torch.full_like(params.float(), math.log(self.sigma))
        else:
            mean, log_scale = (_at_least_float32(t) for t in self.split(params))
            log_scale = log_scale.clamp(min=-7.0)
        z = (x.to(mean.dtype) - mean) * torch.exp(-log_scale)
        return (0.5 * math.log(2 * math.pi) + log_scale + 0.5 * z.square()).flatten(1).sum(1)

    def mean(self, params):
        return (params if self.sigma else self.split(params)[0]).float().clamp(0, 1)


LIKELIHOODS = {"bernoulli": Bernoulli, "continuous-bernoulli": ContinuousBernoulli, "logistic": DiscretizedLogistic,
               "gaussian": Gaussian}
BERNOULLI = Bernoulli()


def make_likelihood(name: str = "bernoulli", gaussian_sigma: float | None = None) -> Likelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r} (choose from {', '.join(LIKELIHOODS)})")
    return Gaussian(gaussian_sigma) if name == "gaussian" else LIKELIHOODS[name]()


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """Nats per image of a discrete likelihood -> bits per dimension (C x H x W values), the unit of CIFAR-10."""
    return nats_per_image / (dims * math.log(2))


def per_image_neg_elbo(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                       likelihood: Likelihood = BERNOULLI) -> NegELBO:
    """The two terms and their sum for each image (vectors of length N)."""
    nll = likelihood.nll(logits, x)
    kl = gaussian_kl(mu, sigma).to(nll.dtype)
    return NegELBO(nll + kl, nll, kl)


def neg_elbo(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
             likelihood: Likelihood = BERNOULLI) -> NegELBO:
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

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Objective:
    """What a training step minimises.

    beta:       the KL term's weight (beta-VAE; 1 is the ELBO).
    kl_warmup:  steps over which that weight rises linearly from 0 to beta (Sønderby et al. 2016).
    free_bits:  nats per latent dimension below which its batch-mean KL is not penalised (Kingma et al. 2016).
    iw_samples: K > 1 trains on the importance-weighted bound (IWAE, Burda et al. 2016); K = 1 is the ELBO.
    """

    beta: float = 1.0
    kl_warmup: int = 0
    free_bits: float = 0.0
    iw_samples: int = 1

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

    ``model`` is the VAE or its DDP wrapper (whose forward is what DDP must see). The logged L_tot is the -ELBO,
    or under ``iw_samples`` > 1 the batch's IW bound; L_likelihood and L_KL are the ELBO's two terms. ``labels``:
    the batch's classes, for a conditional model.
    """
    vae = getattr(model, "module", model)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if objective.iw_samples == 1:
        with autocast:
            out = model(x, labels)
        if objective.plain:
            terms = torch.stack(neg_elbo(out.logits, x, out.mu, out.sigma, vae.likelihood))
            return terms[0], terms
        nll = vae.likelihood.nll(out.logits, x).mean()
        kl_dims = kl_per_dimension(out.mu, out.sigma).to(nll.dtype)
        kl = kl_dims.sum(1).mean()
        penalised = kl_dims.mean(0).clamp(min=objective.free_bits).sum() if objective.free_bits else kl
        return nll + kl_weight * penalised, torch.stack([nll + kl, nll, kl])
    # IWAE: K samples of z per image through the decoder at once; the DDP wrapper is bypassed here (its forward
    # is the one-sample pass), so IW training is single-process or needs its own gradient all-reduce.
    k = objective.iw_samples
    with autocast:
        mu, sigma = vae.encode(x, labels)
        eps = torch.randn((*mu.shape[:1], k, mu.shape[1]), device=mu.device, dtype=mu.dtype)
        log_px_z, log_pz, log_qz = log_weight_terms(vae, x, mu, sigma, eps, labels)
    log_w = log_px_z + kl_weight * (log_pz - log_qz)
    bound = -(torch.logsumexp(log_w, dim=1) - math.log(k)).mean()
    exact_bound = -(torch.logsumexp(log_px_z + log_pz - log_qz, dim=1) - math.log(k)).mean()
    kl = gaussian_kl(mu, sigma).mean()
    return bound, torch.stack([exact_bound, -log_px_z.mean(), kl]).detach()


def log_weight_terms(vae, x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor,
                     labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(x | z_k), log p(z_k), log q(z_k | x), each N x K, for z_k = mu + sigma * eps_k (eps: N x K x D):
    the pieces of the importance weights, for training (IWAE) and for the evaluation bound alike (given the
    ``labels`` for a conditional model)."""
    n, k, d = eps.shape
    z = mu[:, None] + sigma[:, None] * eps
    targets = x[:, None].expand(n, k, *x.shape[1:]).reshape(n * k, *x.shape[1:])
    repeated = None if labels is None else labels.reshape(-1, 1).expand(n, k).reshape(n * k)
    log_px_z = -vae.likelihood.nll(vae.decode(z.reshape(n * k, d), targets, repeated), targets).view(n, k)
    z, eps, sigma = (_at_least_float32(t) for t in (z, eps, sigma))
    log_pz = -0.5 * (z.square().sum(-1) + d * LOG_2PI)
    log_qz = -0.5 * (eps.square().sum(-1) + d * LOG_2PI) - sigma.log().sum(-1)[:, None]
    return log_px_z, log_pz, log_qz
