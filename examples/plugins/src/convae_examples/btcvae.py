"""beta-TCVAE (Chen et al. 2018): the fc VAE trained on the ELBO with its total correlation weighted by beta,
through convae's objective contract (``convae.TrainingObjective``).

    convae train --plugin convae_examples.btcvae --model btcvae --model-option tc_beta=6

The KL term of the ELBO splits (Chen et al., eq. 2) into the index-code mutual information, the total correlation
TC = KL(q(z) || prod_d q(z_d)) and the dimension-wise KL. The aggregate posterior q(z) = (1/M) sum_n q(z | x_n) over
the M training images is estimated on the minibatch by minibatch-weighted sampling (their eq. 5):

    log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M),   log q(z_id) likewise per dimension d,

for z_i the sample of image i and j over the N images of the batch. The objective is the -ELBO plus (beta - 1) TC,
their "tcvae" loss; tc, mi and dwkl are logged as its parts. Training minimises it; every figure convae reports (the
test -ELBO, the IW bound, a sweep's table) stays the model's true -ELBO.
"""

from __future__ import annotations

import math

import torch

import convae


class BetaTC(convae.TrainingObjective):
    name = "beta-TCVAE"
    parts = ("tc", "mi", "dwkl")

    def __init__(self, tc_beta: float):
        self.tc_beta = tc_beta

    def describe(self) -> dict:
        return {**super().describe(), "tc_beta": self.tc_beta}

    def __call__(self, model, out, x, terms, dataset_size):
        z, mu, sigma = out.z.float(), out.mu.float(), out.sigma.float()
        n = len(z)
        # log q(z_id | x_j) for every pair (i, j) of the batch and every dimension d: N x N x D
        log_q_pairs = (-0.5 * ((z[:, None] - mu[None]) / sigma[None]).square() - sigma[None].log()
                       - 0.5 * math.log(2 * math.pi))
        log_norm = math.log(n * max(dataset_size, n))
        log_qz = torch.logsumexp(log_q_pairs.sum(2), dim=1) - log_norm                 # log q(z_i)
        log_qz_product = (torch.logsumexp(log_q_pairs, dim=1) - log_norm).sum(1)       # sum_d log q(z_id)
        log_qz_x = convae.gaussian_log_prob(z, mu, sigma)                              # log q(z_i | x_i)
        log_pz = model.prior.log_prob(z, model)
        tc = log_qz - log_qz_product
        mi, dwkl = log_qz_x - log_qz, log_qz_product - log_pz
        return convae.ObjectiveValue(terms.total + (self.tc_beta - 1) * tc, {"tc": tc, "mi": mi, "dwkl": dwkl})


@convae.register_model("btcvae", description="beta-TCVAE: the fc VAE with its total correlation weighted (a plug-in)")
def build(image_size, channels, likelihood, classes, *, tc_beta: float = 6.0, latent_dim: int = 10):
    if not isinstance(tc_beta, (int, float)) or tc_beta < 0:
        raise ValueError(f"--model-option tc_beta={tc_beta!r}: a number >= 0 (1 is the plain ELBO)")
    return convae.VAE(convae.make_encoder("mlp", image_size, latent_dim, channels, classes),
                      convae.make_decoder("fc", latent_dim + classes, image_size,
                                          channels * likelihood.params_per_channel),
                      latent_dim, likelihood, classes, objective=BetaTC(float(tc_beta)))
