"""The latent densities of a VAE, as pieces a model is built from: a prior p(z) and a posterior q(z | x).

    Prior:      log_prob(z, model) -> log p(z);   sample(n, model, generator) -> z;   optionally kl_units(mu, sigma)
    Posterior:  rsample(params, eps) -> z;   log_prob(params, z, eps) -> log q(z | x);   mean(params) -> z

``params`` is what the encoder returns, a tuple whose first two members are the mean and standard deviation of a
diagonal Gaussian (N x D each; more members may follow for a posterior that needs them, e.g. a flow's context); eps
is standard-normal noise. Shapes broadcast: ``z`` is (..., D) and a log density sums over the last axis, so the same
code serves one sample per image (N x D) and K samples (N x K x D, with ``params`` as N x 1 x D). Densities are
returned in float32 at least, whatever autocast does around them.

The defaults are the seed's: ``StandardNormal`` (with the closed-form KL the seed computes) and ``DiagonalGaussian``
(z = mu + sigma * eps). A model whose posterior is a diagonal Gaussian and whose prior has a closed-form KL gets it,
one unit per latent dimension; any other pair gets the Monte-Carlo estimate log q(z | x) - log p(z) from the
training sample itself (one unit), and every figure says which (``VAE.kl_estimate``).

Randomness: a prior or posterior draws none in a training step (eps comes in from outside), so packed sweeps can
batch it; ``sample`` may draw from the generator it is given.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..objectives import LOG_2PI, at_least_float32, kl_per_dimension


class Prior(nn.Module):
    """p(z). Subclass it: ``log_prob`` and ``sample`` are required, ``kl_units`` where a closed form exists.

    ``model`` is the VAE the prior belongs to (a VampPrior reads its encoder); the prior's own parameters are its
    own (they train, checkpoint, pack and export with the model)."""

    standard_normal = False  # N(0, I): the latent statistics measured against N(0, 1) apply

    def log_prob(self, z: torch.Tensor, model) -> torch.Tensor:
        """log p(z), summed over the last axis: (..., D) -> (...)."""
        raise NotImplementedError(f"{type(self).__name__}.log_prob")

    def sample(self, n: int, model, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws, N x D, on the model's device and in its dtype."""
        raise NotImplementedError(f"{type(self).__name__}.sample")

    # no closed form unless a subclass gives one: kl_units(mu, sigma) -> N x D, KL(N(mu, sigma^2) || p) per unit
    kl_units = None

    def from_noise(self, noise: torch.Tensor, model) -> torch.Tensor:
        """z as a function of standard-normal ``noise`` (N x ``noise_dim``), for exported files that sample without
        convae; a prior that does not define it cannot be exported as a graph (safetensors still can)."""
        raise NotImplementedError(f"{type(self).__name__}.from_noise")

    def noise_dim(self, latent_dim: int) -> int:
        return latent_dim


class StandardNormal(Prior):
    """N(0, I), the seed's prior."""

    standard_normal = True

    def log_prob(self, z: torch.Tensor, model=None) -> torch.Tensor:
        z = at_least_float32(z)
        return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)

    def sample(self, n: int, model, generator: torch.Generator | None = None) -> torch.Tensor:
        p = next(model.parameters())
        return torch.randn((n, model.latent_dim), generator=generator, device=p.device, dtype=p.dtype)

    def kl_units(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The seed's formula, 0.5 * (mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1) per dimension."""
        return kl_per_dimension(mu, sigma)

    def from_noise(self, noise: torch.Tensor, model=None) -> torch.Tensor:
        return noise


class Posterior(nn.Module):
    """q(z | x) from the encoder's ``params``. Subclass it: ``rsample``, ``log_prob`` and ``mean``."""

    diagonal_gaussian = False  # q is N(mu, diag sigma^2): closed-form KLs, active units and I(x; z) apply

    def noise_dim(self, latent_dim: int) -> int:
        """Standard-normal values one sample of z is made from."""
        return latent_dim

    def rsample(self, params: tuple, eps: torch.Tensor) -> torch.Tensor:
        """z for the noise ``eps`` (differentiable in ``params``)."""
        raise NotImplementedError(f"{type(self).__name__}.rsample")

    def log_prob(self, params: tuple, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log q(z | x) of the z that ``rsample(params, eps)`` made, summed over the last axis."""
        raise NotImplementedError(f"{type(self).__name__}.log_prob")

    def mean(self, params: tuple) -> torch.Tensor:
        """One representative z per image (the z that zero noise gives): what ``reconstruct`` decodes."""
        mu = params[0]
        return self.rsample(params, torch.zeros(mu.shape[:-1] + (self.noise_dim(mu.shape[-1]),), dtype=mu.dtype,
                                                device=mu.device))


class DiagonalGaussian(Posterior):
    """N(mu, diag sigma^2), the seed's posterior: z = mu + sigma * eps."""

    diagonal_gaussian = True

    def rsample(self, params: tuple, eps: torch.Tensor) -> torch.Tensor:
        mu, sigma = params[0], params[1]
        return mu + sigma * eps

    def log_prob(self, params: tuple, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        sigma, eps = at_least_float32(params[1]), at_least_float32(eps)
        return -0.5 * (eps.square().sum(-1) + eps.shape[-1] * LOG_2PI) - sigma.log().sum(-1)

    def mean(self, params: tuple) -> torch.Tensor:
        return params[0]


def parameter_names(count: int) -> list[str]:
    """The names of the ``count`` posterior parameters an encoder returns, as files and model.json call them: "mu",
    "sigma", then "context0", "context1", ... (what a flow or another posterior reads besides)."""
    return ["mu", "sigma"] + [f"context{k}" for k in range(count - 2)]


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag sigma^2) summed over the last axis (float32 at least): for priors made of Gaussians."""
    z, mu, sigma = at_least_float32(z), at_least_float32(mu), at_least_float32(sigma)
    return (-0.5 * ((z - mu) / sigma).square() - sigma.log() - 0.5 * LOG_2PI).sum(-1)


def log_mean_exp(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(t, dim) - math.log(t.shape[dim])


__all__ = ["DiagonalGaussian", "Posterior", "Prior", "StandardNormal", "gaussian_log_prob", "log_mean_exp",
           "parameter_names"]
