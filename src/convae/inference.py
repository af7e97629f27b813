"""Using a trained model: ``convae.load(RUN)`` and what it returns.

``TrainedModel`` wraps a run's VAE in eval mode on its device and takes what a user has — Pillow images, uint8 or
float arrays or tensors, one image or a batch, channels first or last, with or without alpha — and prepares it as
the run's own training did (alpha over the background, gray or colour, values in [0, 1], the run's resize, the
8-bit levels of a discrete likelihood) before it reaches the model. Outputs are float tensors on the CPU: images in [0, 1] as N x C x H x W, latents as N x latent_dim.
A model trained with ``--conditional`` takes the images' class labels too (one per image, or one for all).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import to_float
from .errors import ConfigError
from .models.densities import parameter_names
from .runs import Run, open_run


class TrainedModel:
    def __init__(self, run: Run):
        self.run, self.model, self.config = run, run.model, run.config
        self.param = next(self.model.parameters())
        data = run.settings.get("data", {})
        self.channels = data.get("shape", [1])[0]
        # what the stored bytes were divided by in training (the embedded MNIST stores k/256)
        self.levels = data.get("levels", 256.0 if run.config.source == "mnist" else 255.0)
        self.last_prepared: list[dict] = []  # what ``prepare`` did to each image (for a run prepared once)

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def classes(self) -> int:
        """The number of classes a conditional model takes labels of; 0 for an unconditional one."""
        return self.model.classes

    @property
    def class_names(self) -> list[str] | None:
        """The classes' names where the data named them (an image folder's sub-folders, the shapes' kinds)."""
        return self.run.settings.get("data", {}).get("classes")

    def prepare_labels(self, labels, n: int) -> torch.Tensor | None:
        """Labels as a user has them (one int or class name for all ``n`` images, or one per image) -> a tensor on
        the device; None for an unconditional model."""
        if labels is None:
            if self.classes:
                raise ConfigError(f"this model is conditional on {self.classes} classes: give the labels "
                                  f"(0..{self.classes - 1})")
            return None
        if not self.classes:
            raise ConfigError(f"the model of {self.run.path} is not conditional (trained without --conditional): it "
                              "takes no labels")
        if isinstance(labels, np.ndarray) and labels.dtype.kind in "USO":  # names in an array
            labels = labels.tolist()
        if isinstance(labels, str) or (isinstance(labels, (list, tuple)) and labels and isinstance(labels[0], str)):
            labels = self.label_numbers([labels] if isinstance(labels, str) else list(labels))
        try:
            y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        except (TypeError, ValueError):
            raise ConfigError(f"labels: give integers 0..{self.classes - 1} or class names, not {labels!r:.60}") from None
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ConfigError(f"labels of dtype {y.dtype}: give integers 0..{self.classes - 1}")
        y = y.reshape(-1).long()
        if len(y) == 1:
            y = y.expand(n)
        if len(y) != n:
            raise ConfigError(f"{len(y)} labels for {n} images: give one label, or one per image")
        if len(y) and (y.min() < 0 or y.max() >= self.classes):
            raise ConfigError(f"labels must be classes 0..{self.classes - 1} of this model (got "
                              f"{int(y.min() if y.min() < 0 else y.max())})")
        return y.to(self.device)

    @property
    def device(self) -> torch.device:
        return self.param.device

    @property
    def prepared_once(self) -> bool:
        """Whether training prepared its images once, each brought to the model's size by ``prepare_image`` (a folder,
        arrays, the shapes), rather than per batch (MNIST and IDX files, resized as the seed does)."""
        return self.run.settings.get("data", {}).get("kind") in ("folder", "arrays", "shapes")

    def prepare(self, images) -> torch.Tensor:
        """Images as a user has them -> the model's input, N x C x size x size floats on the model's device,
        prepared exactly as the run's training prepared its own.

        Accepted: Pillow images of any mode (one, or a list), NumPy arrays and tensors (or lists of them) of one image
        or a batch, gray (H x W, N x H x W), channels first (C x H x W, N x C x H x W) or channels last as NumPy and
        Pillow give them (H x W x C, N x H x W x C); uint8 (0..255), uint16 (0..65535) or floats in [0, 1]. A list
        may mix sizes: each image is prepared alone. An alpha channel is drawn over the run's ``--background``. For
        a run on a folder or arrays each image is cropped (or padded), resized and converted by the very function
        that filled training's cache, so a file gives the cached image bit for bit; ``last_prepared`` then says
        what was done to each (cropped or padded, the area kept, the scale)."""
        if self.prepared_once:
            x = self.prepare_as_training(images)
            return to_float(x.to(self.device), 255.0, self.config.image_size, self.param.dtype,
                            self.config.resize_mode, self.config.quantize)
        if isinstance(images, (list, tuple)) and images and not isinstance(images[0], (int, float)):
            return torch.cat([self.prepare(image) for image in images])  # each alone: a list may mix sizes
        x = channels_first(as_tensor(pillow_as_array(images, self.channels, self.config.background)), self.channels)
        if x.shape[1] == self.channels + 1:  # with alpha: over the background, as the run's images were prepared
            x = over_background(x, self.config.background)
        if x.shape[1] != self.channels:
            raise ConfigError(f"images of shape {tuple(x.shape)}: this model takes {self.channels}-channel images "
                              f"({'gray' if self.channels == 1 else 'RGB'}, or with alpha), as H x W x C, "
                              "C x H x W, N x H x W x C or N x C x H x W arrays or Pillow images")
        if x.dtype == torch.uint16:  # a 16-bit image (Pillow's I;16): 0..65535 -> 0..255, as training reads one
            x = torch.round(x.to(torch.int32) / 257).to(torch.uint8)
        if x.dtype == torch.uint8:
            return to_float(x.to(self.device), self.levels, self.config.image_size, self.param.dtype,
                            self.config.resize_mode, self.config.quantize)
        if not x.is_floating_point():
            raise ConfigError(f"images of dtype {x.dtype}: give uint8 (0..255), uint16 (0..65535) or floats in [0, 1]")
        if x.numel() and not bool(x.isfinite().all()):  # NaN passes both comparisons below
            raise ConfigError("float images must lie in [0, 1]; these hold NaN or infinite values")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ConfigError("float images must lie in [0, 1]")
        x = x.to(self.device, self.param.dtype)
        if x.shape[-1] != self.config.image_size:  # the same resize as training, on the values given
            x = to_float(x, 1.0, self.config.image_size, self.param.dtype, self.config.resize_mode,
                         self.config.quantize)
        return x

    def prepare_as_training(self, images) -> torch.Tensor:
        """uint8 N x C x size x size: each image through ``data.prepare.prepare_image`` with the run's size,
        channels, --resize and --background (a Pillow image turned upright by its EXIF tag first, as training reads
        a file; an array or tensor first brought to uint8 by the rules training reads arrays with). Public: compare
        it with the run's cached images to check the promise that a file is prepared as training prepared it, bit
        for bit (``last_prepared`` says what was done to each image)."""
        from PIL import Image, ImageOps

        from .data.arrays import as_images
        from .data.prepare import composite_arrays, fitting, prepare_array, prepare_image
        from .errors import DataError

        size, channels, policy, background = (self.config.image_size, self.channels, self.config.resize,
                                              self.config.background)
        many = isinstance(images, (list, tuple)) and images and not isinstance(images[0], (int, float))
        prepared, self.last_prepared = [], []
        try:
            for item in (images if many else [images]):
                if isinstance(item, Image.Image):
                    array, facts = prepare_image(ImageOps.exif_transpose(item), size, channels, policy, background)
                    prepared.append(array[None])
                    self.last_prepared.append(facts)
                    continue
                x = channels_first(as_tensor(item), self.channels)
                n, c, h, w = x.shape
                x = as_images(x.detach().cpu().reshape(n * c, 1, h, w).numpy(), Path("images")).reshape(n, c, h, w)
                transparent = np.zeros(n, dtype=bool)
                if c in (2, 4):  # an alpha channel: over the background, as training draws one
                    transparent = (x[:, -1] < 255).reshape(n, -1).any(1)
                    x, _ = composite_arrays(x, background)
                self.last_prepared += [{**fitting(w, h, size, policy), "transparent": bool(t)} for t in transparent]
                prepared.append(prepare_array(np.ascontiguousarray(x), size, channels, policy, background))
        except DataError as e:
            raise ConfigError(str(e)) from None
        return torch.from_numpy(np.concatenate(prepared))

    def __repr__(self) -> str:
        c = self.config
        options = "".join(f", {k}={v!r}" for k, v in c.model_options.items())
        densities = self.model.describe_densities()
        return (f"TrainedModel(model {c.model!r}{options}, encoder {c.encoder or 'its own'}, prior "
                f"{densities['prior']}, posterior {densities['posterior']}, "
                f"{self.channels}x{c.image_size}x{c.image_size} images, latent_dim {self.latent_dim}, "
                f"{self.model.likelihood.name} likelihood"
                + (f", conditional on {self.classes} classes" if self.classes else "")
                + f", step {self.run.step}, run {str(self.run.path)!r}, on {self.device})")

    def label_numbers(self, names: list[str]) -> list[int]:
        """Class names -> their label numbers (a number written as text is taken as it is)."""
        known = self.class_names or []
        numbers = []
        for name in map(str, names):
            if name in known:
                numbers.append(known.index(name))
            elif name.lstrip("-").isdigit():
                numbers.append(int(name))
            else:
                raise ConfigError(f"{name!r} is not a class of this model (" + (
                    f"its classes: {', '.join(known)}" if known else f"give a number 0..{self.classes - 1}") + ")")
        return numbers

    @torch.no_grad()
    def encode(self, images, labels=None) -> tuple[torch.Tensor, ...]:
        """The posterior q(z | x) (q(z | x, label) for a conditional model): every parameter its encoder gives, in
        order and named by ``parameter_names`` — the means and standard deviations (of its base Gaussian, for a flow
        posterior), then any context a posterior reads besides. ``latents`` gives the representative z itself."""
        x = self.prepare(images)
        params = self.model.encode(x, self.prepare_labels(labels, len(x)))
        return tuple(p.float().cpu() for p in params)

    @property
    def parameter_names(self) -> list[str]:
        """The names of what ``encode`` returns (and ``convae encode`` writes): "mu", "sigma", "context0", ..."""
        with torch.no_grad():
            x = torch.full((1, self.channels, self.config.image_size, self.config.image_size), 0.5,
                           dtype=self.param.dtype, device=self.device)
            labels = torch.zeros(1, dtype=torch.long, device=self.device) if self.classes else None
            return parameter_names(len(self.model.encode(x, labels)))

    @torch.no_grad()
    def latents(self, images, labels=None) -> torch.Tensor:
        """One representative z per image, without noise: the posterior's mean (mu pushed through a flow)."""
        x = self.prepare(images)
        return self.model.posterior_mean(x, self.prepare_labels(labels, len(x))).float().cpu()

    @torch.no_grad()
    def encode_groups(self, images, labels=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every group of latents of a hierarchical model, named ("z1 4x4", ...): the posterior's means and standard
        deviations as N x C x S x S maps (``encode`` gives them flat, in that order). One group ("z") for a model of
        one stochastic layer."""
        mu, sigma = self.encode(images, labels)[:2]
        return {name: (m, s) for (name, m), s in zip(self.model.named_groups(mu).items(),
                                                   self.model.named_groups(sigma).values())}

    @torch.no_grad()
    def decode(self, z, labels=None) -> torch.Tensor:
        """Mean images of p(x | z) (p(x | z, label)) for latents ``z`` (N x latent_dim, or one vector)."""
        z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z)
        z = z.reshape(1, -1) if z.dim() == 1 else z
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ConfigError(f"latents of shape {tuple(z.shape)}: this model takes N x {self.latent_dim}")
        z = z.to(self.device, self.param.dtype)
        return self.model.generate(z, labels=self.prepare_labels(labels, len(z))).float().cpu()

    @torch.no_grad()
    def reconstruct(self, images, labels=None) -> torch.Tensor:
        """Decode the posterior's mean (``latents``, through a flow where the posterior has one): the model's
        reconstruction without sampling noise."""
        x = self.prepare(images)
        y = self.prepare_labels(labels, len(x))
        return self.model.generate(self.model.posterior_mean(x, y), labels=y).float().cpu()

    @torch.no_grad()
    def sample(self, n: int, label=None, seed: int | None = None) -> torch.Tensor:
        """``n`` mean images of p(x | z) with z drawn from the prior (seeded when ``seed`` is given); for a
        conditional model of class ``label`` (one for all, or one per image), or of uniformly drawn classes."""
        if n <= 0:
            raise ConfigError(f"-n: must be a positive integer, got {n}")
        labels = self.prepare_labels(label, n) if label is not None else None
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        return self.model.sample(n, generator=generator, labels=labels).float().cpu()


def as_tensor(images) -> torch.Tensor:
    """A tensor of what a user passes: a tensor, an array (copied where NumPy marks it read-only, as Pillow's are),
    a Pillow image, or a list of any of these (stacked)."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, Image.Image):
        images = np.array(images)  # channels last; a palette image as its indices: convert it first
    if isinstance(images, (list, tuple)) and images and not isinstance(images[0], (int, float)):
        return torch.stack([as_tensor(image) for image in images])
    array = np.asarray(images)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def pillow_as_array(image, channels: int, background: str):
    """A Pillow image (any mode) -> a uint8 H x W (x C) array of its look: transparency over ``background``, a
    palette's colours (not its indices), 16-bit and float gray at 8 bits; anything else as it is."""
    from PIL import Image, ImageOps

    from .data.prepare import DEEP_GRAY, deep_gray_as_float, without_alpha

    if not isinstance(image, Image.Image):
        return image
    image, _ = without_alpha(ImageOps.exif_transpose(image), background)
    if image.mode in DEEP_GRAY:
        return np.rint(np.asarray(deep_gray_as_float(image), dtype=np.float32)).clip(0, 255).astype(np.uint8)
    return np.array(image.convert("RGB" if channels == 3 else "L"))


def channels_first(x: torch.Tensor, channels: int) -> torch.Tensor:
    """N x C x H x W from any accepted layout; a channels-last array is recognised by a last axis of 1 to 4 values
    where the first is not one (a 4 x 4 image stays ambiguous: give it channels first)."""
    is_channels = lambda n: n in (1, 2, 3, 4)  # noqa: E731  (gray, gray+alpha, RGB, RGBA)
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        if is_channels(x.shape[-1]) and not is_channels(x.shape[0]):
            return x.permute(2, 0, 1)[None]  # H x W x C
        if x.shape[0] == channels or (channels == 3 and x.shape[0] == 4):
            return x[None]  # C x H x W (for a gray model, 2 x H x W is two images)
        return x[:, None]  # N x H x W
    if x.dim() == 4:
        if is_channels(x.shape[-1]) and not is_channels(x.shape[1]):
            return x.permute(0, 3, 1, 2)  # N x H x W x C
        if is_channels(x.shape[1]):
            return x
    raise ConfigError(f"images of shape {tuple(x.shape)}: give H x W, H x W x C, C x H x W, N x H x W, "
                      "N x H x W x C or N x C x H x W (C = 1, 3, or with alpha 2, 4), or Pillow images")


def over_background(x: torch.Tensor, background: str) -> torch.Tensor:
    """N x (C + alpha) x H x W -> N x C x H x W drawn over ``background`` (uint8 stays uint8)."""
    from .data.prepare import BACKGROUNDS

    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    colour, alpha = x[:, :-1].double() / scale, x[:, -1:].double() / scale
    back = torch.tensor(BACKGROUNDS[background], dtype=torch.float64)[: colour.shape[1]].view(1, -1, 1, 1) / 255
    out = colour * alpha + back * (1 - alpha)
    return (out * 255).round().to(torch.uint8) if x.dtype == torch.uint8 else out.to(x.dtype)


def load(run_dir: str | Path, device: str = "auto") -> TrainedModel:
    """The model of the run in ``run_dir`` at its newest checkpoint, ready for inference."""
    return TrainedModel(open_run(run_dir, device))
