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
    """``classes`` > 0 makes it conditional (Sohn et al. 2015): q(z | x, y) and p(x | z, y) for a class label y,
    given to the encoder as one constant map per class beside the image and to the decoder as a one-hot vector
    beside z. Every method then takes ``labels`` (N integers); ``sample`` draws them uniformly when none are given."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood = BERNOULLI,
                 classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood  # what the decoder's output means (it has no parameters)
        self.classes = classes

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> VAEOutput:
        """One-sample pass: z = mu + sigma * eps, eps ~ N(0, I) drawn from ``generator`` (global RNG if None), or
        the ``eps`` given (to compare passes with the same noise)."""
        mu, sigma = self.encode(x, labels)
        if eps is None:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + sigma * eps
        return VAEOutput(self.decode(z, x, labels), mu, sigma, z)

    @property
    def autoregressive(self) -> bool:
        """Whether p(x | z) reads x itself (a PixelCNN head): scoring x is one pass, drawing a picture is not."""
        return getattr(self.decoder, "autoregressive", False)

    def onehot(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """The labels as N x classes one-hot rows for a conditional model (None for an unconditional one). Built by
        comparison, without reading the labels on the host, so a CUDA graph can hold it; the labels' range is
        checked where they enter (the data, ``convae.load``)."""
        if not self.classes:
            return None
        if labels is None:
            raise ValueError(f"this model is conditional on {self.classes} classes: give the labels")
        labels = torch.as_tensor(labels, device=next(self.parameters()).device).reshape(-1, 1)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} images")
        return (labels == torch.arange(self.classes, device=labels.device)).to(next(self.parameters()).dtype)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x) (or q(z | x, y)): its means and standard deviations."""
        onehot = self.onehot(labels, len(x))
        return self.encoder(x) if onehot is None else self.encoder(x, onehot)

    def decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """What the decoder reads: z, and for a conditional model the one-hot label beside it."""
        onehot = self.onehot(labels, len(z))
        return z if onehot is None else torch.cat([z, onehot.to(z.dtype)], dim=1)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The parameters of p(x | z) (or p(x | z, y)) for the images ``x`` being scored (only an autoregressive
        decoder reads x)."""
        z = self.decoder_input(z, labels)
        return self.decoder(z, x) if self.autoregressive else self.decoder(z)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, generator: torch.Generator | None = None, *,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
        """The picture for each z: the mean of p(x | z) (no pixel noise: the usual way to show samples); for an
        autoregressive decoder, whose mean has no closed form, an image drawn pixel by pixel."""
        if not self.autoregressive:
            return self.likelihood.mean(self.decode(z, labels=labels))
        return self.decoder.generate(self.decoder_input(z, labels), lambda params: self.likelihood.draw(params, generator))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pictures (``generate``) for z ~ N(0, I); a conditional model without ``labels`` draws them uniformly."""
        p = next(self.parameters())
        z = torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        if self.classes and labels is None:
            labels = torch.randint(self.classes, (n,), generator=generator, device=p.device)
        return self.generate(z, generator, labels=labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pictures (``generate``) for one z ~ q(z | x) per image."""
        if not self.autoregressive:
            return self.likelihood.mean(self(x, labels, generator=generator).logits)
        mu, sigma = self.encode(x, labels)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.generate(mu + sigma * eps, generator, labels=labels)


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the Keras/TensorFlow defaults the seed's layers start from."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
