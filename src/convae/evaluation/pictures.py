"""The pictures ``convae eval`` draws in RUN/eval/: samples (per class for a conditional model), reconstructions,
interpolations, traversals of the most active latent dimensions, the PCA of the latent means, the loss curves."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import EvalImages
from ..runs import Run
from ..visualisation import latent_scatter, loss_curves, rows_grid
from .latents import latent_means


def class_names(data, classes: int) -> list[str]:
    """The names of a labelled source's classes (a folder's sub-folders), else the label numbers."""
    names = data.classes or []
    return [names[k] if k < len(names) else str(k) for k in range(classes)]


@torch.no_grad()
def draw_pictures(run: Run, test_set: EvalImages, labels: torch.Tensor, folder: Path,
                  names: list[str] | None = None) -> list[str]:
    """Samples, reconstructions, interpolations, traversals, the latent PCA and the loss curves; for a conditional
    model also samples per class (one row each, named by ``names``). Interpolations and traversals of a
    conditional model keep the label of the image they start from."""
    model, p = run.model, next(run.model.parameters())
    generator = torch.Generator(device=p.device).manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{run.config.model} ({run.path.name}, step {run.step})"
    written = []

    def save(fn, file, *args, **kw):
        fn(*args, folder / file, **kw)
        written.append(file)

    samples = model.sample(64, generator=generator)
    save(rows_grid, "samples.png", list(samples.view(8, 8, *samples.shape[1:])), title=f"samples from the prior: {name}")
    if model.classes:
        shown = min(model.classes, 20)
        rows = [model.sample(10, generator, labels=torch.full((10,), k, device=p.device)) for k in range(shown)]
        save(rows_grid, "samples_by_class.png", rows, labels=(names or [str(k) for k in range(shown)])[:shown],
             title=f"samples of each class (z from the prior, one row per label): {name}")

    def label_of(i: int, n: int) -> torch.Tensor | None:
        return None if test_set.labels is None else test_set.labels_of(i, i + 1, p.device).expand(n)

    x = test_set.floats(0, 10, p.dtype, p.device)
    recon = model.reconstruct(x, generator, labels=test_set.labels_of(0, 10, p.device))
    save(rows_grid, "reconstructions.png", [x, recon], labels=["input", "recon."], title=f"test reconstructions: {name}")

    mu = latent_means(model, test_set)
    pairs = min(8, len(mu) // 2)  # fewer where the test set is small
    a, b = mu[:pairs], mu[pairs:2 * pairs]
    t = torch.linspace(0, 1, 10, device=p.device, dtype=p.dtype)
    rows = [model.generate(a[i] + t[:, None] * (b[i] - a[i]), generator, labels=label_of(i, len(t)))
            for i in range(pairs)]
    if rows:
        save(rows_grid, "interpolations.png", rows, title=f"latent interpolations between test images: {name}")

    active = mu.var(0).argsort(descending=True)[:8]
    values = torch.linspace(-3, 3, 11, device=p.device, dtype=p.dtype)
    base = mu[0]
    rows = []
    for d in active.tolist():
        z = base.repeat(len(values), 1)
        z[:, d] = values
        rows.append(model.generate(z, generator, labels=label_of(0, len(values))))
    save(rows_grid, "traversals.png", rows, labels=[f"z{d}" for d in active.tolist()],
         title=f"traversals -3..3 of the most active latent dimensions: {name}")

    centred = (mu - mu.mean(0)).float().cpu()
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    save(latent_scatter, "latent_pca.png", centred @ v[:2].T, labels[:len(centred)],
         title=f"PCA of test-set latent means: {name}", names=names)
    if run.metrics:
        save(loss_curves, "loss_curves.png", run.metrics, title=name)
    return written
