"""What the seed does after each epoch, built once per run: the loss on the first training images, the test set's
-ELBO (shared among the ranks under torchrun), the 3x3 picture, and the pictures TensorBoard shows."""

from __future__ import annotations

import time

import torch

from ..config import TrainConfig
from ..data import ImageData, evaluation_images
from ..evaluation import entropy_floor, evaluate_neg_elbo
from ..models import VAE
from ..objectives import bits_per_dim
from ..runs import RunDir
from ..runtime import Runtime
from ..visualisation import rows_grid, seed_grid, tile


class EpochEvaluator:
    def __init__(self, model: VAE, config: TrainConfig, data: ImageData, run: RunDir, precision: str,
                 runtime: Runtime):
        self.model, self.config, self.run, self.precision, self.runtime = model, config, run, precision, runtime
        n = config.monitor_images
        self.monitor = evaluation_images(data.train_images[:n], data.levels, config, data.train_labels[:n])
        self.test_set = evaluation_images(data.test_images, data.levels, config, data.test_labels)
        # the least a Bernoulli decoder can score on these targets; for other likelihoods it means nothing
        self.floor = entropy_floor(self.test_set) if model.likelihood.entropy_floor else None

    def __call__(self, epoch: int, step: int, partial: bool, training: dict,
                 samples: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
        """The metrics record of this epoch end (``training``: the training figures it holds: train_loss, lr, the
        seconds and images per second) and, on rank 0, the pictures for TensorBoard: inputs over reconstructions,
        and with ``samples`` 64 samples from the prior (drawn only where a sink shows them: an autoregressive
        decoder draws them pixel by pixel)."""
        config, model = self.config, self.model
        started = time.perf_counter()
        on_monitor = evaluate_neg_elbo(model, self.monitor, batch_size=len(self.monitor), precision=self.precision,
                                       seed=config.seed + 1, runtime=self.runtime)
        on_test = evaluate_neg_elbo(model, self.test_set, batch_size=config.eval_batch_size, precision=self.precision,
                                    seed=config.seed + 1, runtime=self.runtime)
        pictures = self.pictures(epoch, step, partial, samples) if self.runtime.is_writer else {}
        record = {
            "epoch": epoch, "step": step, "partial_epoch": partial,
            "L_tot": on_monitor.neg_elbo, "L_likelihood": on_monitor.likelihood, "L_KL": on_monitor.kl,
            "test_neg_elbo": on_test.neg_elbo, "test_L_likelihood": on_test.likelihood, "test_L_KL": on_test.kl,
            "test_kl_per_dim": on_test.kl_per_dim, "entropy_floor": self.floor, **training,
            "eval_seconds": time.perf_counter() - started,
        }
        if model.likelihood.discrete:
            record["test_bits_per_dim"] = bits_per_dim(on_test.neg_elbo, self.test_set.dims)
        return record, pictures

    @torch.no_grad()
    def pictures(self, epoch: int, step: int, partial: bool, samples: bool) -> dict[str, torch.Tensor]:
        """The seed's 3x3 picture in RUN/images (``result{K}.png``, or ``result{K}-step{N}.png`` for a partial
        epoch), and the grids TensorBoard shows."""
        model = self.model
        model.eval()
        p = next(model.parameters())
        x = self.monitor.floats(0, 9, p.dtype, p.device)
        generator = torch.Generator(device=p.device).manual_seed(self.config.seed + 1)
        reconstruction = model.reconstruct(x, generator, labels=self.monitor.labels_of(0, 9, p.device))
        pictures = {"reconstructions": tile(torch.cat([x, reconstruction]), 9)}
        if samples:
            pictures["samples"] = tile(model.sample(64, generator=generator), 8)
        model.train()
        name = f"result{epoch}.png" if not partial else f"result{epoch}-step{step}.png"
        seed_grid(x, reconstruction, self.run.images / name, title=f"epoch {epoch}, step {step}")
        return pictures

    @torch.no_grad()
    def draw_samples(self, epoch: int, step: int) -> None:
        """RUN/images/samples.png: 64 samples from the prior now, for the report (the same draws at every epoch)."""
        model = self.model
        model.eval()
        p = next(model.parameters())
        samples = model.sample(64, generator=torch.Generator(device=p.device).manual_seed(self.config.seed + 1))
        model.train()
        rows_grid(list(samples.view(8, 8, *samples.shape[1:])), self.run.images / "samples.png",
                  title=f"samples from the prior, epoch {epoch} (step {step})")
