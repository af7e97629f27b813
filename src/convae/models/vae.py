"""The variational autoencoder: an encoder for q(z|x), the reparameterisation, a decoder for p(x|z), and the loss
terms they make: the model owns its -ELBO (``loss``) and its importance weights (``log_weight_terms``), so training,
the ELBO evaluation and the IW bound never take it apart themselves."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..objectives import LOG_2PI, at_least_float32, kl_per_dimension
from .likelihoods import BERNOULLI, Likelihood
from .noise import standard_normal


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # N x (P * C) x H x W: the parameters of p(x | z) (for the seed, Bernoulli logits)
    mu: torch.Tensor      # N x latent_dim
    sigma: torch.Tensor   # N x latent_dim
    z: torch.Tensor       # N x latent_dim, the sample the decoder saw


class LossTerms(NamedTuple):
    """The -ELBO of each image, in its two terms: L_tot = nll + kl.sum(1)."""

    nll: torch.Tensor  # N: -log p(x | z), nats per image (L_likelihood)
    kl: torch.Tensor   # N x U: KL(q || p) of each latent unit (they sum to the image's L_KL)

    @property
    def total(self) -> torch.Tensor:
        return self.nll + self.kl.sum(1)


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
            eps = standard_normal(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + sigma * eps
        return VAEOutput(self.decode(z, x, labels), mu, sigma, z)

    @property
    def noise_dim(self) -> int:
        """Standard-normal values one sample of z is made from (``log_weight_terms`` takes N x K x noise_dim)."""
        return self.latent_dim

    @property
    def kl_unit_count(self) -> int:
        """How many latent units the KL term is reported by (``kl_units``' columns)."""
        return self.latent_dim

    def kl_units(self, out: VAEOutput, dtype: torch.dtype | None = None) -> torch.Tensor:
        """N x U: each latent unit's KL(q(z_u | x) || N(0, 1)) (the seed's formula), in float32 at least, or in
        ``dtype``."""
        mu, sigma = (out.mu, out.sigma) if dtype is None else (out.mu.to(dtype), out.sigma.to(dtype))
        return kl_per_dimension(mu, sigma)

    def loss_terms(self, out: VAEOutput, x: torch.Tensor) -> LossTerms:
        """The -ELBO terms of the images ``x`` from the pass ``out`` over them (in float32 at least: computed outside
        any autocast region by the caller, as the seed's arithmetic wants)."""
        nll = self.likelihood.nll(out.logits, x)
        return LossTerms(nll, self.kl_units(out).to(nll.dtype))

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None) -> LossTerms:
        """The one-sample -ELBO terms of each image: ``loss(x).total.mean()`` is the seed's loss."""
        return self.loss_terms(self(x, labels, generator=generator), x)

    def log_weight_terms(self, x: torch.Tensor, posterior: tuple[torch.Tensor, torch.Tensor], eps: torch.Tensor,
                         labels: torch.Tensor | None = None, decode_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x | z_k), log p(z_k), log q(z_k | x), each N x K, for z_k = mu + sigma * eps_k (``posterior`` =
        ``encode(x)``, eps: N x K x noise_dim): the pieces of the importance weights, for training (IWAE) and for
        the evaluation bound alike. ``decode_dtype`` (bfloat16): the decoder's products in that dtype under
        autocast; z, the latent densities and the likelihood stay in float32 at least."""
        mu, sigma = posterior
        n, k, d = eps.shape
        z = mu[:, None] + sigma[:, None] * eps
        # only a PixelCNN head reads the image while decoding: then it is copied for each sample
        targets = x.repeat_interleave(k, 0) if self.autoregressive else None
        repeated = None if labels is None else labels.reshape(-1).repeat_interleave(k)
        with torch.autocast(x.device.type, dtype=decode_dtype or torch.bfloat16, enabled=decode_dtype is not None):
            params = self.decode(z.reshape(n * k, d), targets, repeated)
        log_px_z = -self.likelihood.nll_of_samples(params, x, k)
        z, eps, sigma = (at_least_float32(t) for t in (z, eps, sigma))
        log_pz = -0.5 * (z.square().sum(-1) + d * LOG_2PI)
        log_qz = -0.5 * (eps.square().sum(-1) + d * LOG_2PI) - sigma.log().sum(-1)[:, None]
        return log_px_z, log_pz, log_qz

    # the latent densities of the weights come from the encoder and z alone, not the decoder: the decoder may
    # compute in bfloat16 for the bound (a hierarchy's priors come from its top-down path: it says False)
    decoder_holds_no_density = True

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
        return self.encode_onehot(x, self.onehot(labels, len(x)))

    def encode_onehot(self, x: torch.Tensor, onehot: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` with the labels as one-hot rows already (what an exported encoder takes)."""
        return self.encoder(x) if onehot is None else self.encoder(x, onehot)

    def infer(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """What ``log_weight_terms`` draws its samples of z from: here the posterior's (mu, sigma); a hierarchical
        model's are its bottom-up features."""
        return self.encode(x, labels)

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
