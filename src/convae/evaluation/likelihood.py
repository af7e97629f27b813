"""The importance-weighted bound on log p(x) (Burda et al. 2016), the number papers report as "test NLL".

    log p(x) >= E[ log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x) ],  z_k ~ q(z | x)

K = 1 is the ELBO (in expectation); the bound tightens as K grows. Samples are drawn in chunks so that K = 1000
or 5000 fits in memory: every image's K log-weights are kept (K floats each) and combined with logsumexp.
K = 5000 over 10,000 test images is 50 million decoder passes (hours on a CPU, minutes on a GPU): the bounds of
the images done so far can be handed out after every batch and handed back to go on after an interruption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..models import VAE
from ..objectives import log_weight_terms
from ..runtime import Runtime
from .elbo import EvalImages, batch_generator

@dataclass
class IWResult:
    nll: float            # -mean log p(x) bound, nats per image
    k: int
    n_images: int
    std_error: float      # of the mean over images
    bounds: list[float]   # each image's log p(x) bound, in the order of the images


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
                            progress: bool = False, done: Sequence[float] = (),
                            save: Callable[[list[float]], None] | None = None,
                            runtime: Runtime | None = None) -> IWResult:
    """-log p(x) bounded with K importance samples, averaged over ``data`` (eval mode).

    Each batch of images draws its samples from a generator of its own (``batch_generator``: a function of
    ``seed`` and its first image), so an image's bound does not depend on the batches before it or on who computes
    it: an evaluation that stopped and goes on from ``done`` (the bounds of the first images, as ``save`` was given
    them after every batch) ends with the numbers of one that ran through, and under torchrun each of W ranks takes
    one batch of every W and the bounds are gathered in order (``save`` and the progress bar on rank 0)."""
    if len(done) > len(data) or (len(done) % batch_size and len(done) != len(data)):
        raise ValueError(f"{len(done)} bounds already done do not end a batch of {batch_size} of {len(data)} images")
    runtime = runtime or Runtime()
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    bounds = [float(b) for b in done]
    starts = range(len(bounds), len(data), batch_size)
    rounds = [starts[i:i + runtime.world_size] for i in range(0, len(starts), runtime.world_size)]
    bar = tqdm(desc=f"IW bound, K={k}", unit="batch", disable=not (progress and runtime.is_writer), leave=False,
               initial=len(bounds) // batch_size, total=math.ceil(len(data) / batch_size))
    try:
        for batch_starts in rounds:
            mine: list[float] = []
            if runtime.rank < len(batch_starts):
                start = batch_starts[runtime.rank]
                x = data.floats(start, start + batch_size, p.dtype, p.device)
                w = log_weights(model, x, k, batch_generator(p.device, seed, start),
                                labels=data.labels_of(start, start + batch_size, p.device))
                mine = (torch.logsumexp(w, dim=1) - math.log(k)).tolist()
            for rank_bounds in runtime.all_gather(mine):  # in rank order = batch order
                bounds.extend(rank_bounds)
            bar.update(len(batch_starts))
            if save is not None and runtime.is_writer:
                save(bounds)
    finally:
        bar.close()
        model.train(was_training)
    b = torch.tensor(bounds, dtype=torch.float64)
    return IWResult(-b.mean().item(), k, len(b), (b.std() / math.sqrt(len(b))).item() if len(b) > 1 else 0.0, bounds)
