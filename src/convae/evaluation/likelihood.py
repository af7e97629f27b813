"""The importance-weighted bound on log p(x) (Burda et al. 2016), the number papers report as "test NLL".

    log p(x) >= E[ log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x) ],  z_k ~ q(z | x)

K = 1 is the ELBO (in expectation); the bound tightens as K grows. Samples are drawn in chunks so that K = 1000
or 5000 fits in memory: every image's K log-weights are kept (K floats each) and combined with logsumexp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..models import VAE
from ..objectives import log_weight_terms
from .elbo import EvalImages

@dataclass
class IWResult:
    nll: float            # -mean log p(x) bound, nats per image
    k: int
    n_images: int
    std_error: float      # of the mean over images


def log_weights(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator, max_batch: int = 4096,
                labels: torch.Tensor | None = None) -> torch.Tensor:
    """N x K log importance weights log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x) (given the ``labels`` of a
    conditional model)."""
    mu, sigma = model.encode(x, labels)
    n, d = mu.shape
    chunk = max(1, max_batch // n)
    out = []
    for start in range(0, k, chunk):
        kc = min(chunk, k - start)
        eps = torch.randn((n, kc, d), generator=generator, device=mu.device, dtype=mu.dtype)
        log_px_z, log_pz, log_qz = log_weight_terms(model, x, mu, sigma, eps, labels)
        out.append(log_px_z.double() + log_pz.double() - log_qz.double())
    return torch.cat(out, dim=1)


@torch.no_grad()
def importance_weighted_nll(model: VAE, data: EvalImages, k: int, *, batch_size: int = 100, seed: int = 0,
                            progress: bool = False) -> IWResult:
    """-log p(x) bounded with K importance samples, averaged over ``data`` (eval mode)."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    generator = torch.Generator(device=p.device).manual_seed(seed)
    bounds = []
    try:
        for start in tqdm(range(0, len(data), batch_size), desc=f"IW bound, K={k}", unit="batch",
                          disable=not progress, leave=False):
            x = data.floats(start, start + batch_size, p.dtype, p.device)
            w = log_weights(model, x, k, generator, labels=data.labels_of(start, start + batch_size, p.device))
            bounds.append(torch.logsumexp(w, dim=1) - math.log(k))
    finally:
        model.train(was_training)
    b = torch.cat(bounds)
    return IWResult(-b.mean().item(), k, len(b), (b.std() / math.sqrt(len(b))).item() if len(b) > 1 else 0.0)
