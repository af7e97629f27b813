"""The variational autoencoder: an encoder for q(z|x), the reparameterisation, a decoder for p(x|z), and the loss
terms they make: the model owns its -ELBO (``loss``) and its importance weights (``log_weight_terms``), so training,
the ELBO evaluation and the IW bound never take it apart themselves."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..objectives import LossTerms, at_least_float32
from .densities import DiagonalGaussian, Posterior, Prior, StandardNormal
from .likelihoods import BERNOULLI, Likelihood
from .noise import standard_normal
from .objective import ObjectiveValue, TrainingObjective


class VAEOutput(NamedTuple):
    logits: torch.Tensor  # N x (P * C) x H x W: the parameters of p(x | z) (for the seed, Bernoulli logits)
    mu: torch.Tensor      # N x latent_dim: the posterior's mean (of its base Gaussian, for a flow)
    sigma: torch.Tensor   # N x latent_dim
    z: torch.Tensor       # N x latent_dim, the sample the decoder saw
    kl: torch.Tensor | None = None  # N x 1, log q(z | x) - log p(z) of that sample, where the KL has no closed form


class VAE(nn.Module):
    """The model every convae model is, built-in or a plug-in's: ``encoder`` (images -> the posterior's parameters,
    (mu, sigma) of N x latent_dim each), ``decoder`` (z -> the parameters of p(x | z)), the ``likelihood`` p(x | z),
    and the latent densities ``prior`` (default N(0, I)) and ``posterior`` (default a diagonal Gaussian); see
    ``densities.py``. A hierarchy subclasses it and overrides its terms (``ladder.py``). ``objective``: what training
    minimises where it is not the -ELBO (``objective.py``); what is reported stays the -ELBO and its terms.

    ``classes`` > 0 makes it conditional (Sohn et al. 2015): q(z | x, y) and p(x | z, y) for a class label y,
    given to the encoder as one constant map per class beside the image and to the decoder as a one-hot vector
    beside z. Every method then takes ``labels`` (N integers); ``sample`` draws them uniformly when none are given."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood = BERNOULLI,
                 classes: int = 0, *, prior: Prior | None = None, posterior: Posterior | None = None,
                 objective: TrainingObjective | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood  # what the decoder's output means (it has no parameters)
        self.classes = classes
        self.prior = prior if prior is not None else StandardNormal()
        self.posterior = posterior if posterior is not None else DiagonalGaussian()
        if objective is not None and not isinstance(objective, TrainingObjective):
            raise TypeError(f"objective: a convae.TrainingObjective, not a {type(objective).__name__}")
        self.objective = objective

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> VAEOutput:
        """One-sample pass: z = the posterior's sample for eps ~ N(0, I) drawn from ``generator`` (global RNG if
        None), or the ``eps`` given (to compare passes with the same noise); for the seed z = mu + sigma * eps."""
        params = self.encode(x, labels)
        mu, sigma = params[0], params[1]
        if eps is None:
            eps = standard_normal((*mu.shape[:-1], self.noise_dim), generator=generator, device=mu.device,
                                  dtype=mu.dtype)
        z = self.posterior.rsample(params, eps)
        kl = None if self.closed_form_kl else self.monte_carlo_kl(params, z, eps)
        return VAEOutput(self.decode(z, x, labels), mu, sigma, z, kl)

    @property
    def closed_form_kl(self) -> bool:
        """Whether the KL term is exact (a diagonal-Gaussian posterior and a prior with a closed-form KL), or else
        the Monte-Carlo estimate log q(z | x) - log p(z) of the sample the decoder saw."""
        return self.posterior.diagonal_gaussian and self.prior.kl_units is not None

    @property
    def kl_estimate(self) -> str:
        """How the KL term is computed, as metrics and evaluations say it: "closed form" or "monte carlo"."""
        return "closed form" if self.closed_form_kl else "monte carlo"

    @property
    def latent_statistics_apply(self) -> bool:
        """Whether active units and I(x; z), which read q(z | x) as N(mu, sigma^2), mean something for this model."""
        return self.posterior.diagonal_gaussian

    def closed_form_kl_of(self, posterior: tuple) -> torch.Tensor | None:
        """N: the KL of each image's posterior as ``infer`` gives it, where it has a closed form (else None)."""
        return self.prior.kl_units(posterior[0], posterior[1]).sum(1) if self.closed_form_kl else None

    def monte_carlo_kl(self, params: tuple, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """N x 1: log q(z | x) - log p(z) of one sample, the KL's unbiased estimate."""
        return (self.posterior.log_prob(params, z, eps) - self.prior.log_prob(z, self))[..., None]

    @property
    def noise_dim(self) -> int:
        """Standard-normal values one sample of z is made from (``log_weight_terms`` takes N x K x noise_dim)."""
        return self.posterior.noise_dim(self.latent_dim)

    @property
    def kl_unit_count(self) -> int:
        """How many latent units the KL term is reported by (``kl_units``' columns): one per dimension where the KL
        has a closed form, else one."""
        return self.latent_dim if self.closed_form_kl else 1

    def kl_units(self, out: VAEOutput, dtype: torch.dtype | None = None) -> torch.Tensor:
        """N x U: each latent unit's KL(q(z_u | x) || p(z_u)) (for the seed, the seed's formula against N(0, 1)), in
        float32 at least, or in ``dtype``; where there is no closed form, one unit: the Monte-Carlo estimate."""
        if not self.closed_form_kl:
            return at_least_float32(out.kl) if dtype is None else out.kl.to(dtype)
        mu, sigma = (out.mu, out.sigma) if dtype is None else (out.mu.to(dtype), out.sigma.to(dtype))
        return self.prior.kl_units(mu, sigma)

    def loss_terms(self, out: VAEOutput, x: torch.Tensor) -> LossTerms:
        """The -ELBO terms of the images ``x`` from the pass ``out`` over them (in float32 at least: computed outside
        any autocast region by the caller, as the seed's arithmetic wants)."""
        nll = self.likelihood.nll(out.logits, x)
        return LossTerms(nll, self.kl_units(out).to(nll.dtype))

    def training_objective(self, out: VAEOutput, x: torch.Tensor, terms: LossTerms,
                           dataset_size: int) -> ObjectiveValue | None:
        """The model's own objective of the pass ``out`` over ``x`` (``terms``: its true -ELBO terms), or None where
        the model trains on the -ELBO itself."""
        if self.objective is None:
            return None
        return self.objective.evaluate(self, out, x, terms, dataset_size)

    def loss(self, x: torch.Tensor, labels: torch.Tensor | None = None, *,
             generator: torch.Generator | None = None) -> LossTerms:
        """The one-sample -ELBO terms of each image: ``loss(x).total.mean()`` is the seed's loss."""
        return self.loss_terms(self(x, labels, generator=generator), x)

    def log_weight_terms(self, x: torch.Tensor, posterior: tuple, eps: torch.Tensor,
                         labels: torch.Tensor | None = None, decode_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x | z_k), log p(z_k), log q(z_k | x), each N x K, for z_k the posterior's sample for eps_k
        (``posterior`` = ``infer(x)``, eps: N x K x noise_dim; for the seed z_k = mu + sigma * eps_k): the pieces
        of the importance weights, for training (IWAE) and for the evaluation bound alike. ``decode_dtype``
        (bfloat16): the decoder's products in that dtype under autocast; z, the latent densities and the likelihood
        stay in float32 at least."""
        n, k, _ = eps.shape
        params = tuple(p[:, None] for p in posterior)  # N x 1 x D: broadcast over the K samples
        z = self.posterior.rsample(params, eps)
        # only a PixelCNN head reads the image while decoding: then it is copied for each sample
        targets = x.repeat_interleave(k, 0) if self.autoregressive else None
        repeated = None if labels is None else labels.reshape(-1).repeat_interleave(k)
        with torch.autocast(x.device.type, dtype=decode_dtype or torch.bfloat16, enabled=decode_dtype is not None):
            decoded = self.decode(z.reshape(n * k, z.shape[-1]), targets, repeated)
        log_px_z = -self.likelihood.nll_of_samples(decoded, x, k)
        return log_px_z, self.prior.log_prob(z, self), self.posterior.log_prob(params, z, eps)

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

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """q(z | x) (or q(z | x, y)): its parameters, means and standard deviations first (N x latent_dim each)."""
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
        """Pictures (``generate``) for z drawn from the prior; a conditional model without ``labels`` draws them
        uniformly."""
        p = next(self.parameters())
        z = self.prior.sample(n, self, generator)
        if self.classes and labels is None:
            labels = torch.randint(self.classes, (n,), generator=generator, device=p.device)
        return self.generate(z, generator, labels=labels)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None, *,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        """Pictures (``generate``) for one z ~ q(z | x) per image (through the whole posterior, a flow's too)."""
        if not self.autoregressive:
            return self.likelihood.mean(self(x, labels, generator=generator).logits)
        params = self.encode(x, labels)
        mu = params[0]
        eps = torch.randn((*mu.shape[:-1], self.noise_dim), generator=generator, device=mu.device, dtype=mu.dtype)
        return self.generate(self.posterior.rsample(params, eps), generator, labels=labels)

    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """One representative z per image, without noise (the posterior's ``mean``): what ``convae.load``'s
        ``reconstruct`` decodes."""
        return self.posterior.mean(self.encode(x, labels))

    def named_groups(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat N x latent_dim tensor cut into the model's groups of latents, by name: one, "z", for a model of
        one stochastic layer (a hierarchy has several: ``ladder.py``)."""
        return {"z": flat}

    def describe_densities(self) -> dict:
        """What model.json, eval.json and the report say of the latent densities."""
        described = {"prior": type(self.prior).__name__, "posterior": type(self.posterior).__name__,
                     "kl": self.kl_estimate}
        if self.objective is not None:
            described["objective"] = self.objective.describe()
        return described


def keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the Keras/TensorFlow defaults the seed's layers start from."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
