"""Are the latents used? KL per dimension, active units, and the mutual information between x and z.

- KL per dimension: the mean over test images of each dimension's KL(q(z_u|x) || N(0, 1)), the seed's formula.
- Active units (Burda et al. 2016): dimension u is active when Cov_x(E_q[z_u | x]) — the variance of its posterior
  mean across images — exceeds 0.01. A collapsed dimension has the same posterior for every image.
- Mutual information under q (Hoffman & Johnson 2016; estimated as He et al. 2019 do): I(x; z) =
  E_x E_{q(z|x)}[log q(z|x) - log q(z)], with the aggregate posterior q(z) = mean_i q(z | x_i) over the images
  evaluated and one z drawn per image. It is at most log N for N images.
"""

from __future__ import annotations

import math

import torch

from ..data import EvalImages
from ..objectives import kl_per_dimension

ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def posterior_parameters(model, data: EvalImages, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    p = next(model.parameters())
    mus, sigmas = [], []
    for start in range(0, len(data), batch_size):
        params = model.encode(data.floats(start, start + batch_size, p.dtype, p.device),
                              data.labels_of(start, start + batch_size, p.device))
        mu, sigma = params[0], params[1]
        mus.append(mu.double())
        sigmas.append(sigma.double())
    return torch.cat(mus), torch.cat(sigmas)


@torch.no_grad()
def latent_means(model, data: EvalImages, batch_size: int = 500) -> torch.Tensor:
    """One representative z per image of ``data`` (the posterior's ``mean``: mu for a Gaussian, mu through a flow
    for a flow posterior), in the model's dtype: z for pictures and read-outs."""
    p = next(model.parameters())
    return torch.cat([model.posterior_mean(data.floats(start, start + batch_size, p.dtype, p.device),
                                           data.labels_of(start, start + batch_size, p.device))
                      for start in range(0, len(data), batch_size)])


def latent_usage(mu: torch.Tensor, sigma: torch.Tensor, seed: int = 0, max_images: int = 2000) -> dict:
    """The three measures from the posterior parameters of N images (N x D each)."""
    kl_per_dim = kl_per_dimension(mu, sigma).mean(0)
    mean_variance = mu.var(0, unbiased=False) if len(mu) > 1 else torch.zeros_like(mu[0])
    active = int((mean_variance > ACTIVE_THRESHOLD).sum())

    mu, sigma = mu[:max_images], sigma[:max_images]
    n, d = mu.shape
    generator = torch.Generator(device=mu.device).manual_seed(seed)
    z = mu + sigma * torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    log_q_own = (-0.5 * d * math.log(2 * math.pi) - sigma.log().sum(1)
                 - 0.5 * ((z - mu) / sigma).square().sum(1))
    # log mean_i q(z_j | x_i) for every pair, N x N: the squared distances as products, sum_d (z_jd - mu_id)^2 /
    # sigma_id^2 = z_j^2 . w_i - 2 z_j . (mu_i w_i) + mu_i^2 . w_i with w = 1 / sigma^2 (float64), so that no
    # N x N x D tensor is made (a hierarchy's 3,328 latent values would need 200 GB for 2,000 images)
    w = sigma.square().reciprocal()
    squared = z.square() @ w.T - 2 * z @ (mu * w).T + (mu.square() * w).sum(1)[None]
    log_q = -0.5 * d * math.log(2 * math.pi) - sigma.log().sum(1)[None] - 0.5 * squared
    mutual_information = (log_q_own - (torch.logsumexp(log_q, 1) - math.log(n))).mean().item()
    return {"kl_per_dim": kl_per_dim.tolist(), "active_units": active, "active_threshold": ACTIVE_THRESHOLD,
            "latent_dim": d, "mutual_information": mutual_information, "mutual_information_images": n,
            "mutual_information_max": math.log(n)}


def usage_by_group(model, mu: torch.Tensor, kl_per_unit: list[float]) -> list[dict] | None:
    """For a hierarchical model: each group's active units (posterior-mean variance across images above the
    threshold, of every channel and position) and KL (from the ELBO's KL per unit, against the group's own prior);
    None for a model with one stochastic layer."""
    variance = mu.var(0, unbiased=False) if len(mu) > 1 else torch.zeros_like(mu[0])
    named = model.named_groups(variance[None])
    if len(named) == 1:
        return None
    groups, start = [], 0
    for name, part in named.items():
        channels = part.shape[1]
        groups.append({"group": name, "units": part.numel(), "active_units": int((part > ACTIVE_THRESHOLD).sum()),
                       "kl": float(sum(kl_per_unit[start:start + channels]))})
        start += channels
    return groups
