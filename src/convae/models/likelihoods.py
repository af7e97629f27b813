"""Likelihoods p(x | z): what a decoder's output means. Each gives per-image negative log-likelihoods in nats and
the mean image (for pictures). ``params`` is the decoder output: N x (params_per_channel * C) x H x W.

The seed's Bernoulli term is computed from logits clipped at +-log((1 - 1e-8) / 1e-8): the seed's clip of the
probabilities without its float32 overflow (see ``convae.objectives``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..objectives import LOGIT_BOUND, at_least_float32, bernoulli_nll



class Likelihood:
    name = ""
    params_per_channel = 1
    discrete = False       # a probability mass on the 256 levels of 8-bit data: bits per dimension mean something
    entropy_floor = False  # the Bernoulli entropy of gray targets bounds the NLL from below

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nll_of_samples(self, params: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        """N x K negative log-likelihoods of the images ``x`` (N x C x H x W) under ``params`` of K samples of each
        (N * K rows, image-major: what the importance-weighted bound decodes)."""
        n = len(x)
        return self.nll(params, x.repeat_interleave(k, 0)).view(n, k)

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

    def nll_of_samples(self, params, x, k):
        """The seed's term per pixel, softplus(l) - x l for the clipped logits l (what binary cross-entropy with
        logits computes), summed over the pixels as sum log(1 + e^l) - x . l. Where no gradient is asked for (the
        bound), the first sum is computed as exp, +1, log in place in the logits' copy: on 2 CPU cores about 2x
        faster than softplus (whose log1p is slow) and its fresh output, and as accurate here: |l| <= LOGIT_BOUND
        keeps e^l finite, and the e^l < 6e-8 that 1 + e^l drops are below float32's rounding of the sum. The second
        is one matrix product per image, its image broadcast over its K samples instead of copied K times.
        Always float32 at least, even inside an autocast region."""
        n = len(x)
        with torch.autocast(params.device.type, enabled=False):
            # a copy of its own (float32 at least), clipped in place: one large allocation fewer
            logits = params.to(torch.promote_types(params.dtype, torch.float32), copy=True)
            logits = logits.clamp_(-LOGIT_BOUND, LOGIT_BOUND).view(n, k, -1)
            x_dot_logits = torch.bmm(logits, x.to(logits.dtype).reshape(n, -1, 1)).squeeze(-1)
            if logits.requires_grad:  # training (IWAE): autograd keeps values for the backward pass, no steps in place
                log_one_plus_exp = F.softplus(logits)
            else:
                log_one_plus_exp = logits.exp_().add_(1).log_()
            return log_one_plus_exp.sum(-1) - x_dot_logits

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
        logits = at_least_float32(params).clamp(-LOGIT_BOUND, LOGIT_BOUND)
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
        mean, log_scale = (at_least_float32(t) for t in self.split(params))
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
            mean = at_least_float32(params)  # a float64 model's fixed scale in float64 too
            log_scale = torch.full_like(mean, math.log(self.sigma))
        else:
            mean, log_scale = (at_least_float32(t) for t in self.split(params))
            log_scale = log_scale.clamp(min=-7.0)
        z = (x.to(mean.dtype) - mean) * torch.exp(-log_scale)
        return (0.5 * math.log(2 * math.pi) + log_scale + 0.5 * z.square()).flatten(1).sum(1)

    def mean(self, params):
        return (params if self.sigma else self.split(params)[0]).float().clamp(0, 1)


BERNOULLI = Bernoulli()


def make_likelihood(name: str = "bernoulli", gaussian_sigma: float | None = None) -> Likelihood:
    """The likelihood called ``name`` in ``convae.models.LIKELIHOODS``."""
    from . import LIKELIHOODS, resolve

    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r} (choose from {', '.join(LIKELIHOODS)})")
    kind = resolve(LIKELIHOODS[name])
    return kind(gaussian_sigma) if kind is Gaussian else kind()
