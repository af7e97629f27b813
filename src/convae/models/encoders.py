"""Encoders: image -> (mu, sigma) of a diagonal Gaussian q(z | x)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sizes import CONV_SIZES, sizes_said
from .noise import Dropout

SIGMA_FLOOR = 1e-6  # the seed: sigma = 1e-6 + softplus(.)


def with_label_maps(x: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """A conditional encoder's input: the image with one constant map per class appended as channels (1 for the
    image's class, 0 elsewhere); the image alone when there is no label."""
    if onehot is None:
        return x
    maps = onehot.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
    return torch.cat([x, maps], dim=1)


def gaussian_parameters(h: torch.Tensor, latent_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the last layer's 2 * latent_dim outputs into mu and a positive sigma, as the seed does."""
    mu, pre_sigma = h[:, :latent_dim], h[:, latent_dim:]
    return mu, SIGMA_FLOOR + F.softplus(pre_sigma)


class MLPEncoder(nn.Module):
    """The seed's fully connected encoder: Linear-ELU-Dropout, Linear-tanh-Dropout, Linear."""

    def __init__(self, image_size: int = 32, latent_dim: int = 100, hidden: int = 500, dropout: float = 0.1,
                 channels: int = 1, classes: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * image_size * image_size + classes, hidden), nn.ELU(), Dropout(dropout),
            nn.Linear(hidden, hidden), nn.Tanh(), Dropout(dropout),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``onehot``: the class of each image (N x classes) for a conditional encoder, appended to the pixels."""
        if onehot is not None:
            x = torch.cat([x.flatten(1), onehot.to(x.dtype)], dim=1)
        return gaussian_parameters(self.net(x), self.latent_dim)


class ConvEncoder(nn.Module):
    """A small DCGAN-style convolutional encoder: three stride-2 convolutions, then a linear head.

    32x32 -> 16 -> 8 -> 4 with 32, 64, 128 channels; about the seed encoder's parameter count. A larger input
    (64, 128, 256) gets one more stride-2 convolution of 32 channels per doubling, so the linear head sees 4x4 again.
    """

    def __init__(self, image_size: int = 32, latent_dim: int = 100, width: int = 32, dropout: float = 0.1,
                 channels: int = 1, classes: int = 0):
        super().__init__()
        if image_size not in CONV_SIZES:
            raise ValueError(f"the conv encoder takes {sizes_said()} images, not {image_size}x{image_size}")
        self.latent_dim = latent_dim
        c = width
        channels += classes  # a conditional encoder reads the label maps as channels
        extra = []
        for k in range(image_size.bit_length() - 6):  # 64 -> 32, 128 -> 64 -> 32, ...
            extra += [nn.Conv2d(c if k else channels, c, 4, 2, 1), nn.ELU()]
        self.net = nn.Sequential(
            *extra,
            nn.Conv2d(c if extra else channels, c, 4, 2, 1), nn.ELU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ELU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.ELU(),
            nn.Flatten(), Dropout(dropout),
            nn.Linear(4 * c * 4 * 4, 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_parameters(self.net(with_label_maps(x, onehot)), self.latent_dim)
