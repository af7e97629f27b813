"""The variational autoencoder: an encoder for q(z|x), the reparameterisation, a decoder for p(x|z)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..objectives import BERNOULLI, Likelihood


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # N x (P * C) x H x W: the parameters of p(x | z) (for the seed, Bernoulli logits)
    mu: torch.Tensor      # N x latent_dim
    sigma: torch.Tensor   # N x latent_dim
    z: torch.Tensor       # N x latent_dim, the sample the decoder saw


class VAE(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood = BERNOULLI):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood  # what the decoder's output means (it has no parameters)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> VAEOutput:
        """One-sample pass: z = mu + sigma * eps, eps ~ N(0, I) drawn from ``generator`` (global RNG if None), or
        the ``eps`` given (to compare passes with the same noise)."""
        mu, sigma = self.encoder(x)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + sigma * eps
        return VAEOutput(self.decoder(z), mu, sigma, z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean images of p(x | z) for z ~ N(0, I) (no pixel noise: the usual way to show samples)."""
        p = next(self.parameters())
        z = torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        return self.likelihood.mean(self.decoder(z))


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the Keras/TensorFlow defaults the seed's layers start from."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
