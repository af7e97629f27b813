"""A posterior of planar-flow steps (Rezende & Mohamed 2015): z_0 = mu + sigma * eps from the encoder's diagonal
Gaussian, then z_{t+1} = z_t + u_t tanh(w_t . z_t + b_t), with the fully connected VAE's encoder and decoder.

    convae train --plugin convae_examples.planar --model planar --model-option steps=4

log q(z | x) = log N(z_0; mu, sigma) - sum_t log |1 + (1 - tanh^2(w_t . z_t + b_t)) w_t . u_t|. The steps'
parameters are learned and shared by every image (the flow is not amortised); u_t is constrained so that each step
is invertible (w . u >= -1, Rezende & Mohamed's appendix).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import convae


class PlanarFlow(convae.Posterior):
    def __init__(self, latent_dim: int, steps: int):
        super().__init__()
        self.u = nn.Parameter(0.01 * torch.randn(steps, latent_dim))
        self.w = nn.Parameter(0.01 * torch.randn(steps, latent_dim))
        self.b = nn.Parameter(torch.zeros(steps))

    def flow(self, z):
        """z_T and sum_t log |det dz_{t+1}/dz_t| (shape of z without its last axis)."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for u, w, b in zip(self.u, self.w, self.b):
            wu = w @ u
            u = u + (F.softplus(wu) - 1 - wu) * w / w.square().sum()  # invertible: w . u_hat >= -1
            a = torch.tanh(z @ w + b)
            log_det = log_det + torch.log((1 + (1 - a.square()) * (w @ u)).abs() + 1e-8)
            z = z + u * a[..., None]
        return z, log_det

    def rsample(self, params, eps):
        return self.flow(params[0] + params[1] * eps)[0]

    def log_prob(self, params, z, eps):
        sigma = params[1].float() if params[1].dtype != torch.float64 else params[1]
        _, log_det = self.flow(params[0] + params[1] * eps)
        eps = eps.to(sigma.dtype)
        base = -0.5 * (eps.square().sum(-1) + eps.shape[-1] * math.log(2 * math.pi)) - sigma.log().sum(-1)
        return base - log_det.to(base.dtype)

    def mean(self, params):
        return self.flow(params[0])[0]


@convae.register_model("planar", description="the fc VAE with a planar-flow posterior (a plug-in)")
def build(image_size, channels, likelihood, classes, *, steps: int = 4, latent_dim: int = 20):
    if not (isinstance(steps, int) and steps > 0):
        raise ValueError(f"--model-option steps={steps!r}: a positive integer")
    return convae.VAE(convae.make_encoder("mlp", image_size, latent_dim, channels, classes),
                      convae.make_decoder("fc", latent_dim + classes, image_size,
                                          channels * likelihood.params_per_channel),
                      latent_dim, likelihood, classes, posterior=PlanarFlow(latent_dim, steps))
