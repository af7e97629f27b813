"""The negative ELBO of a model on a set of images, in eval mode (dropout off, BatchNorm running stats)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..data import fixed_binarization, to_float
from ..models import VAE
from ..objectives import bernoulli_entropy_floor, kl_per_dimension, per_image_neg_elbo
from ..runtime import Runtime


@dataclass
class EvalImages:
    """Images to evaluate on, as stored (uint8) plus how to turn them into the floats the model sees."""

    images: torch.Tensor
    levels: float
    image_size: int
    resize: str = "bilinear"
    quantize: bool = False
    labels: torch.Tensor | None = None  # the classes, where the model is conditional on them

    def __len__(self) -> int:
        return len(self.images)

    @property
    def dims(self) -> int:
        """Values per image (C x H x W at the model's size)."""
        return self.images.shape[1] * self.image_size * self.image_size

    def floats(self, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return to_float(self.images[start:stop].to(device), self.levels, self.image_size, dtype, self.resize,
                        self.quantize)

    def labels_of(self, start: int, stop: int, device: torch.device) -> torch.Tensor | None:
        """The classes of images ``start:stop`` for a conditional model; None for an unconditional one."""
        return None if self.labels is None else self.labels[start:stop].to(device)


def evaluation_images(images: torch.Tensor, levels: float, config: TrainConfig,
                      labels: torch.Tensor | None = None) -> EvalImages:
    """Images as they are, or for the binarized protocol one fixed Bernoulli draw of them (seed 0); with their
    ``labels`` when the run is conditional on them."""
    labels = labels if config.conditional else None
    if config.binarize == "dynamic":
        return EvalImages(fixed_binarization(images, levels, config.image_size, config.resize_mode), 1.0,
                          config.image_size, labels=labels)
    return EvalImages(images, levels, config.image_size, config.resize_mode, config.quantize, labels)


@dataclass
class ElboResult:
    neg_elbo: float      # mean over images of L_likelihood + L_KL, nats per image
    likelihood: float    # mean Bernoulli NLL term
    kl: float            # mean KL term
    n_images: int
    kl_per_dim: list[float] | None = None  # mean KL of each latent dimension (they sum to ``kl``)


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
    sums = torch.zeros(3, dtype=torch.float64, device=p.device)
    kl_dims = torch.zeros(model.latent_dim, dtype=torch.float64, device=p.device)
    try:
        for start in range(runtime.rank * batch_size, len(data), runtime.world_size * batch_size):
            x = data.floats(start, start + batch_size, p.dtype, p.device)
            with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = model(x, data.labels_of(start, start + batch_size, p.device),
                            generator=batch_generator(p.device, seed, start))
            terms = per_image_neg_elbo(out.logits, x, out.mu, out.sigma, model.likelihood)
            sums += torch.stack([t.double().sum() for t in terms])
            kl_dims += kl_per_dimension(out.mu.double(), out.sigma.double()).sum(0)
    finally:
        model.train(was_training)
    total, likelihood, kl = (runtime.all_reduce(sums) / len(data)).tolist()
    return ElboResult(total, likelihood, kl, len(data), (runtime.all_reduce(kl_dims) / len(data)).tolist())


def entropy_floor(data: EvalImages) -> float:
    """Mean over images of the summed binary entropy of the targets: no Bernoulli decoder can go below it
    (0 for binary images)."""
    total = 0.0
    for start in range(0, len(data), 1000):
        total += bernoulli_entropy_floor(data.floats(start, start + 1000, torch.float64, torch.device("cpu"))).sum().item()
    return total / len(data)
