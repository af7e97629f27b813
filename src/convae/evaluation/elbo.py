"""The negative ELBO of a model on a set of images, in eval mode (dropout off, BatchNorm running stats)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import EvalImages
from ..models import VAE
from ..objectives import bernoulli_entropy_floor
from ..runtime import Runtime


@dataclass
class ElboResult:
    neg_elbo: float      # mean over images of L_likelihood + L_KL, nats per image
    likelihood: float    # mean Bernoulli NLL term
    kl: float            # mean KL term
    n_images: int
    kl_per_dim: list[float] | None = None  # mean KL of each latent dimension (they sum to ``kl``)
    kl_std_error: float | None = None  # of ``kl``'s mean over the images (a Monte-Carlo KL's: is it below 0?)


def batch_generator(device: torch.device, seed: int, start: int) -> torch.Generator:
    """The noise for the evaluation batch that begins at image ``start``: a function of (seed, start) alone, so
    the figure does not depend on how many processes share the work (batch 0 keeps the plain ``seed``)."""
    return torch.Generator(device=device).manual_seed(seed + 1_000_003 * start)


@torch.no_grad()
def evaluate_neg_elbo(model: VAE, data: EvalImages, *, batch_size: int = 500, seed: int = 0,
                      precision: str = "fp32", runtime: Runtime | None = None) -> ElboResult:
    """One-sample negative ELBO over ``data``, with noise from generators seeded by ``seed`` so the same model
    always gets the same number and the training RNG is left untouched. Under torchrun each rank takes every
    W-th batch and the sums are all-reduced: the single-process figure, up to the order of float64 additions."""
    runtime = runtime or Runtime()
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    sums = torch.zeros(4, dtype=torch.float64, device=p.device)  # -ELBO, nll, KL, KL squared
    kl_dims = torch.zeros(model.kl_unit_count, dtype=torch.float64, device=p.device)
    try:
        for start in range(runtime.rank * batch_size, len(data), runtime.world_size * batch_size):
            x = data.floats(start, start + batch_size, p.dtype, p.device)
            with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x, data.labels_of(start, start + batch_size, p.device),
                            generator=batch_generator(p.device, seed, start))
            nll, kl_units = model.loss_terms(out, x)
            kl = kl_units.sum(1)
            sums += torch.stack([t.double().sum() for t in (nll + kl, nll, kl, kl.double().square())])
            kl_dims += model.kl_units(out, torch.float64).sum(0)
    finally:
        model.train(was_training)
    n = len(data)
    total, likelihood, kl, kl_square = (runtime.all_reduce(sums) / n).tolist()
    kl_std_error = (max(kl_square - kl * kl, 0.0) * n / max(n - 1, 1)) ** 0.5 / n ** 0.5
    return ElboResult(total, likelihood, kl, n, (runtime.all_reduce(kl_dims) / n).tolist(), kl_std_error)


def entropy_floor(data: EvalImages) -> float:
    """Mean over images of the summed binary entropy of the targets: no Bernoulli decoder can go below it
    (0 for binary images)."""
    total = 0.0
    for start in range(0, len(data), 1000):
        total += bernoulli_entropy_floor(data.floats(start, start + 1000, torch.float64, torch.device("cpu"))).sum().item()
    return total / len(data)


# -- the reported -ELBO against the model's own densities -------------------------------------------------------------

CHECK_IMAGES = 500   # test images the check reads (the first ones)
CHECK_SAMPLES = 8    # samples of z per image for the densities' estimate
CHECK_SIGMAS = 6.0   # how many standard errors apart the two estimates may be before the -ELBO is refused
CHECK_RELATIVE = 1e-3  # ... and how far apart relative to the -ELBO (float arithmetic, a hierarchy's sums)


@torch.no_grad()
def elbo_check(model: VAE, data: EvalImages, *, images: int = CHECK_IMAGES, samples: int = CHECK_SAMPLES,
               batch_size: int = 100, seed: int = 0) -> dict:
    """Whether the -ELBO the model reports (``loss_terms``, what every figure and table is made of) is the -ELBO of
    its own densities: E_q[-log p(x | z) - log p(z) + log q(z | x)], estimated from ``samples`` draws of
    ``log_weight_terms`` per image (the pieces of the IW bound), beside the reported terms of passes with the same
    draws. Both are unbiased estimates of the same number for each image, so their mean difference over ``images``
    test images is zero up to its standard error; a model
    whose ``kl_units`` or ``loss_terms`` hold something else (a penalty, a weighted term: an objective, which
    belongs in ``TrainingObjective``) is found here. Returns the two means, their difference, its standard error
    and ``agrees``."""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    differences, reported_sum, densities_sum = [], 0.0, 0.0
    try:
        for start in range(0, min(images, len(data)), batch_size):
            stop = min(start + batch_size, images, len(data))
            x = data.floats(start, stop, p.dtype, p.device)
            labels = data.labels_of(start, stop, p.device)
            generator = batch_generator(p.device, seed, start)
            eps = torch.randn((len(x), samples, model.noise_dim), generator=generator, device=p.device,
                              dtype=p.dtype)
            # the same noise for both (common random numbers): for a Monte-Carlo KL the two are then the same
            # number, for a closed-form KL they differ by the KL's sampling noise alone
            reported = torch.stack([model.loss_terms(model(x, labels, eps=eps[:, k]), x).total.double()
                                    for k in range(samples)], 1).mean(1)
            log_px_z, log_pz, log_qz = model.log_weight_terms(x, model.infer(x, labels), eps, labels)
            from_densities = -(log_px_z.double() + log_pz.double() - log_qz.double()).mean(1)
            differences.append(reported - from_densities)
            reported_sum += reported.sum().item()
            densities_sum += from_densities.sum().item()
    finally:
        model.train(was_training)
    d = torch.cat(differences)
    n = len(d)
    difference = d.mean().item()
    std_error = (d.std() / n ** 0.5).item() if n > 1 else float("inf")
    reported_mean = reported_sum / n
    agrees = not (abs(difference) > CHECK_SIGMAS * std_error
                  and abs(difference) > CHECK_RELATIVE * (abs(reported_mean) + 1.0))
    if difference != difference:  # NaN: neither agrees nor disagrees; the caller refuses the non-finite figure
        agrees = False
    return {"reported_neg_elbo": reported_mean, "densities_neg_elbo": densities_sum / n, "difference": difference,
            "std_error": std_error, "images": n, "samples": samples, "agrees": agrees}


def disagreement_line(check: dict, model_name: str) -> str:
    """The one line that refuses a -ELBO its densities contradict."""
    return (f"model {model_name!r}: the -ELBO it reports ({check['reported_neg_elbo']:.2f} nats/image on the first "
            f"{check['images']} test images) is not the -ELBO of its own prior, posterior and likelihood "
            f"({check['densities_neg_elbo']:.2f}, from {check['samples']} samples of log q(z|x) - log p(z) - log "
            f"p(x|z) per image; difference {check['difference']:.2f} +- {check['std_error']:.2f}): a kl_units or "
            "loss_terms override that is not the KL (a penalty or a weight belongs in a convae.TrainingObjective, "
            "docs/own-model.md#your-own-objective); no figure of it was reported")
