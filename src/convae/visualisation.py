"""Pictures: the seed's per-epoch 3x3 grid of reconstructions, and image grids in general."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .files import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 100) -> None:
    """Render to PNG in memory, then write atomically (a crash leaves no half picture)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def seed_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, title: str = "") -> None:
    """The seed's result{K}.png: the first nine reconstructions resized to 28x28 in a 3x3 grid, inputs beside."""
    def to_28(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t[:9].float().cpu(), size=(28, 28), mode="bilinear", align_corners=False)[:, 0]

    panels = [("input", to_28(inputs)), ("reconstruction", to_28(reconstructions))]
    fig = plt.figure(figsize=(7, 3.6))
    outer = fig.add_gridspec(1, 2, wspace=0.08)
    for column, (name, images) in enumerate(panels):
        inner = outer[column].subgridspec(3, 3, wspace=0.04, hspace=0.04)
        for k in range(min(9, len(images))):
            ax = fig.add_subplot(inner[k // 3, k % 3])
            ax.imshow(images[k].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if k == 1:
                ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def image_grid(images: torch.Tensor, path: str | Path, rows: int, title: str = "") -> None:
    """Images (N x 1 x H x W, values in [0, 1]) tiled in ``rows`` rows."""
    images = images.float().cpu()
    cols = -(-len(images) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8 + (0.3 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    save_figure(fig, path)
