"""The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), the encoder's posteriors of K learned
pseudo-inputs u_k, with the fully connected VAE's encoder and decoder (``--model fc``'s, initialised alike).

    convae train --plugin convae_examples.vamp --model vamp --model-option components=50

Its KL has no closed form: convae trains and evaluates it with the Monte-Carlo estimate log q(z|x) - log p(z) of
the training sample, and the IW bound uses log p(z) exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import convae


class VampPrior(convae.Prior):
    def __init__(self, components: int, image_shape: tuple[int, int, int]):
        super().__init__()
        # pseudo-inputs start near the data's middle gray, as Tomczak & Welling's N(0.05, 0.01) do for [0, 1]
        # pixels after the hard tanh: a small spread, so the first mixture is broad
        self.pseudo_inputs = nn.Parameter(0.5 + 0.01 * torch.randn(components, *image_shape))

    def components(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """The K mixture components: the encoder's (mu, sigma) of the pseudo-inputs, K x D each."""
        params = model.encode(F.hardtanh(self.pseudo_inputs, 0.0, 1.0))
        return params[0], params[1]

    def log_prob(self, z, model):
        mu, sigma = self.components(model)
        per_component = convae.gaussian_log_prob(z[..., None, :], mu, sigma)  # (..., K)
        return torch.logsumexp(per_component, -1) - math.log(len(mu))

    def sample(self, n, model, generator=None):
        mu, sigma = self.components(model)
        which = torch.randint(len(mu), (n,), generator=generator, device=mu.device)
        eps = torch.randn((n, mu.shape[1]), generator=generator, device=mu.device, dtype=mu.dtype)
        return mu[which] + sigma[which] * eps

    def noise_dim(self, latent_dim):
        return latent_dim + 1  # the first value picks the component

    def from_noise(self, noise, model):
        """The component from the first standard-normal value (its normal CDF is uniform), z from the rest."""
        mu, sigma = self.components(model)
        uniform = 0.5 * (1 + torch.erf(noise[:, :1] / math.sqrt(2)))
        which = (uniform * len(mu)).long().clamp(max=len(mu) - 1).squeeze(1)
        return mu[which] + sigma[which] * noise[:, 1:]


@convae.register_model("vamp", description="the fc VAE with a VampPrior of learned pseudo-inputs (a plug-in)")
def build(image_size, channels, likelihood, classes, *, components: int = 50, latent_dim: int = 20):
    if classes:
        raise ValueError("the VampPrior here is unconditional (train without --conditional)")
    if not (isinstance(components, int) and components > 0):
        raise ValueError(f"--model-option components={components!r}: a positive integer")
    return convae.VAE(convae.make_encoder("mlp", image_size, latent_dim, channels),
                      convae.make_decoder("fc", latent_dim, image_size, channels * likelihood.params_per_channel),
                      latent_dim, likelihood, prior=VampPrior(components, (channels, image_size, image_size)))
