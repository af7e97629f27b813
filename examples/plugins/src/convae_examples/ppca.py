"""Probabilistic PCA as a VAE (Tipping & Bishop 1999): x = W z + b + sigma * e, z ~ N(0, I), e ~ N(0, I), with a
fixed sigma (``--likelihood gaussian --gaussian-sigma S``). Its exact log p(x) = log N(x; b, W W^T + sigma^2 I) is
known in closed form (``exact_log_likelihood``), so the ELBO and the IW bound can be checked against the truth.

    convae train --plugin convae_examples.ppca --model ppca --likelihood gaussian --gaussian-sigma 0.1

The encoder is linear with one learned standard deviation per latent dimension: when W's columns are orthogonal the
true posterior is exactly such a Gaussian (``exact_posterior`` sets it), and then every importance weight equals
p(x).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import convae


class LinearEncoder(nn.Module):
    def __init__(self, pixels: int, latent_dim: int):
        super().__init__()
        self.mean = nn.Linear(pixels, latent_dim)
        self.log_sigma = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x):
        mu = self.mean(x.flatten(1))
        return mu, torch.exp(self.log_sigma).expand_as(mu)


class LinearDecoder(nn.Module):
    def __init__(self, latent_dim: int, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape
        self.linear = nn.Linear(latent_dim, math.prod(shape))

    def forward(self, z):
        return self.linear(z).view(len(z), *self.shape)


@convae.register_model("ppca", description="probabilistic PCA, exact log p(x) known (a plug-in)")
def build(image_size, channels, likelihood, classes, *, latent_dim: int = 8):
    if likelihood.name != "gaussian" or not getattr(likelihood, "sigma", None):
        raise ValueError("ppca is linear-Gaussian: train it with --likelihood gaussian --gaussian-sigma S")
    if classes:
        raise ValueError("ppca is unconditional (train without --conditional)")
    pixels = channels * image_size * image_size
    return convae.VAE(LinearEncoder(pixels, latent_dim), LinearDecoder(latent_dim, (channels, image_size, image_size)),
                      latent_dim, likelihood)


def exact_log_likelihood(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of each image, exactly, in float64: log N(x; b, C) with C = W W^T + s^2 I, through the matrix
    determinant lemma and Woodbury's identity (D x D never formed): M = s^2 I + W^T W (d x d),
    log det C = (D - d) log s^2 + log det M, r^T C^-1 r = (r^T r - r^T W M^-1 W^T r) / s^2."""
    s2 = model.likelihood.sigma ** 2
    w = model.decoder.linear.weight.double()                 # D x d
    r = x.flatten(1).double() - model.decoder.linear.bias.double()
    pixels, d = w.shape
    m = s2 * torch.eye(d, dtype=torch.float64) + w.T @ w
    projected = r @ w                                         # N x d
    quadratic = (r.square().sum(1) - (projected * torch.linalg.solve(m, projected.T).T).sum(1)) / s2
    log_det = (pixels - d) * math.log(s2) + torch.logdet(m)
    return -0.5 * (pixels * math.log(2 * math.pi) + log_det + quadratic)


@torch.no_grad()
def exact_posterior(model) -> None:
    """Make W's columns orthogonal (keeping their lengths) and set the encoder to the true posterior, which is then
    diagonal: q(z | x) = N(M^-1 W^T (x - b), s^2 M^-1), M = s^2 I + W^T W."""
    s2 = model.likelihood.sigma ** 2
    w = model.decoder.linear.weight
    q, _ = torch.linalg.qr(w.double())
    w.copy_((q * w.double().norm(dim=0)).to(w.dtype))
    m = s2 + w.double().square().sum(0)                        # M's diagonal
    model.encoder.mean.weight.copy_((w.double().T / m[:, None]).to(w.dtype))
    model.encoder.mean.bias.copy_((-(w.double().T @ model.decoder.linear.bias.double()) / m).to(w.dtype))
    model.encoder.log_sigma.copy_(0.5 * torch.log(s2 / m).to(w.dtype))
