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
        return VAEOutput(self.decode(z, x), mu, sigma, z)

    @property
    def autoregressive(self) -> bool:
        """Whether p(x | z) reads x itself (a PixelCNN head): scoring x is one pass, drawing a picture is not."""
        return getattr(self.decoder, "autoregressive", False)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The parameters of p(x | z) for the images ``x`` being scored (only an autoregressive decoder reads x)."""
        return self.decoder(z, x) if self.autoregressive else self.decoder(z)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The picture for each z: the mean of p(x | z) (no pixel noise: the usual way to show samples); for an
        autoregressive decoder, whose mean has no closed form, an image drawn pixel by pixel."""
        if not self.autoregressive:
            return self.likelihood.mean(self.decoder(z))
        return self.decoder.generate(z, lambda params: self.likelihood.draw(params, generator))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pictures (``generate``) for z ~ N(0, I)."""
        p = next(self.parameters())
        z = torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        return self.generate(z, generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pictures (``generate``) for one z ~ q(z | x) per image."""
        if not self.autoregressive:
            return self.likelihood.mean(self(x, generator=generator).logits)
        mu, sigma = self.encoder(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.generate(mu + sigma * eps, generator)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the Keras/TensorFlow defaults the seed's layers start from."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
