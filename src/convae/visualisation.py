"""Pictures: the seed's per-epoch 3x3 grid, rows of images, latent scatter, loss curves, spectra."""

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


def show(ax, image: torch.Tensor) -> None:
    """One C x H x W image in [0, 1]: gray with a gray colour map, colour as RGB."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] == 3:
        ax.imshow(image.permute(1, 2, 0).numpy())
    else:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)


def seed_grid(inputs: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, title: str = "") -> None:
    """The seed's result{K}.png: the first nine reconstructions resized to 28x28 in a 3x3 grid, inputs beside."""
    def to_28(t: torch.Tensor) -> torch.Tensor:
        size = 28 if t.shape[-1] == 32 else t.shape[-1]  # the seed's 28x28; other sizes as they are
        return F.interpolate(t[:9].float().cpu(), size=(size, size), mode="bilinear", align_corners=False)

    # each 3x3 panel is one tiled image in one axes: drawn every epoch, 18 axes took most of a second. The figure
    # grows with the images so that each is drawn at its own resolution at least (128-px images were shown at ~85 px)
    panel = (3 * (max(28, inputs.shape[-1]) + 1) + 1) / 100  # inches across one panel at 100 dpi
    if panel <= 3.0:  # the seed's picture, as it always was
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), gridspec_kw=dict(wspace=0.08))
    else:  # margins of 1 %, 10 % on top for the titles: each panel gets its images' own pixels at least
        fig, axes = plt.subplots(1, 2, figsize=(2.2 * panel / 0.98, 1.05 * panel / 0.89),
                                 gridspec_kw=dict(wspace=0.08, left=0.01, right=0.99, bottom=0.01, top=0.9))
    for ax, (name, images) in zip(axes, [("input", to_28(inputs)), ("reconstruction", to_28(reconstructions))]):
        show(ax, tile(images, 3, pad=1))
        ax.set_axis_off()
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def tile(images: torch.Tensor, columns: int, pad: int = 2) -> torch.Tensor:
    """N x C x H x W images -> one C x H' x W' image of them in rows of ``columns``, on a white background."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(c, rows * (h + pad) + pad, columns * (w + pad) + pad, dtype=torch.float32)
    for k, image in enumerate(images.detach().float().cpu()):
        top, left = pad + (k // columns) * (h + pad), pad + (k % columns) * (w + pad)
        canvas[:, top:top + h, left:left + w] = image
    return canvas


def rows_grid(rows: list[torch.Tensor], path: str | Path, labels: list[str] | None = None, title: str = "") -> None:
    """Several rows of images (each K x C x H x W, C = 1 or 3), optionally labelled on the left; drawn as one tiled
    image (an axes per image took seconds per picture), shorter rows padded with white."""
    n_cols = max(len(r) for r in rows)
    c, h, w = rows[0].shape[1:]
    cells = torch.ones(len(rows), n_cols, c, h, w)
    for i, row in enumerate(rows):
        cells[i, :len(row)] = row.detach().float().cpu()
    pad = max(1, h // 16)
    fig, ax = plt.subplots(figsize=(n_cols * 0.75 + 0.8, len(rows) * 0.75 + 0.4))
    show(ax, tile(cells.flatten(0, 1), n_cols, pad))
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if labels:
        ax.set_yticks([pad + i * (h + pad) + (h - 1) / 2 for i in range(len(rows))], labels[:len(rows)], fontsize=7)
        ax.tick_params(axis="y", length=0)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def latent_scatter(points: torch.Tensor, labels: torch.Tensor, path: str | Path, title: str,
                   names: list[str] | None = None) -> None:
    """A 2-D projection of latent means, one colour per label, the legend naming each class (``names``, where the
    data named them: a folder's sub-folders, the shapes' kinds; else its number)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    labels = labels.cpu()
    classes = sorted(set(labels.tolist()))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20").colors
    for k, label in enumerate(classes):
        chosen = labels == label
        name = names[label] if names and 0 <= label < len(names) else str(label)
        ax.scatter(points[chosen, 0].cpu(), points[chosen, 1].cpu(), color=colours[k % len(colours)], s=3, alpha=0.7,
                   label=name if k < 20 else None)
    ax.legend(fontsize=7, loc="best", title="label" + (" (the first 20)" if len(classes) > 20 else ""),
              title_fontsize=7, markerscale=3)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("PC 1"), ax.set_ylabel("PC 2")
    save_figure(fig, path)


def loss_curves(metrics: list[dict], path: str | Path, title: str = "") -> None:
    """Test negative ELBO and training loss against epochs (and training time), from metrics.jsonl. The y-axes hold
    every point from the second epoch on, of both curves (the first epoch's loss, far above the rest, may leave)."""
    ends = [m for m in metrics if not m.get("partial_epoch")] or metrics
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    x = [m["epoch"] for m in ends]
    test, train = [m["test_neg_elbo"] for m in ends], [m["train_loss"] for m in ends]
    left.plot(x, test, "o-", label="test -ELBO")
    left.plot(x, train, "s--", label="training loss (epoch mean)")
    floor = ends[0].get("entropy_floor") if ends else None
    if floor:
        left.axhline(floor, color="gray", lw=0.8, ls=":", label="entropy floor")
    left.set_xlabel("epoch"), left.set_ylabel("nats per image"), left.legend(fontsize=8)
    right.plot([m["train_seconds"] for m in ends], test, "o-")
    right.set_xlabel("training seconds"), right.set_ylabel("test -ELBO, nats per image")
    for ax, curves in ((left, [test, train]), (right, [test])):
        ax.grid(alpha=0.3)
        shown = [v for curve in curves for v in (curve[1:] if len(curve) > 2 else curve)]
        if shown:
            lo, hi = min(shown), max(shown)
            margin = max(0.08 * (hi - lo), 1.0)
            ax.set_ylim(lo - margin, hi + margin)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def spectrum_panel(mean_generated: torch.Tensor, mean_data: torch.Tensor, power_generated: torch.Tensor,
                   power_data: torch.Tensor, path: str | Path, title: str, crop: int = 12) -> None:
    """The checkerboard picture: mean sample, its log power spectrum beside the data's, and a zoomed crop."""
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.3))
    shift = lambda p: torch.fft.fftshift(torch.log10(p + 1e-12))  # noqa: E731
    panels = [(mean_generated, "mean of generated", "gray"), (mean_data, "mean of test images", "gray"),
              (shift(power_generated), "log power, generated (mean image)", "magma"),
              (shift(power_data), "log power, data (mean image)", "magma")]
    for ax, (img, name, cmap) in zip(axes, panels):
        ax.imshow(img.cpu().numpy(), cmap=cmap)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    c = mean_generated.shape[-1] // 2
    zoom = mean_generated[c - crop // 2:c + crop // 2, c - crop // 2:c + crop // 2]
    axes[4].imshow(zoom.cpu().numpy(), cmap="gray", interpolation="nearest")
    axes[4].set_title(f"centre {crop}x{crop}, zoomed", fontsize=9)
    axes[4].set_xticks([]), axes[4].set_yticks([])
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
