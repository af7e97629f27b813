"""Residual convolutional encoder and decoder: the stronger single-stochastic-layer model (``--model resnet``).

Each resolution has a residual block (ELU, 3x3 conv, ELU, 3x3 conv, added to its input); the encoder halves the
resolution with a stride-2 4x4 convolution, the decoder doubles it by nearest-neighbour resizing and a 3x3
convolution (the resize decoder's cure for the dots, so the constant-input test is flat by construction).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoders import ResizeConv2d, numbered_as_before_fusion
from .encoders import gaussian_parameters, with_label_maps
from .sizes import CONV_SIZES, sizes_said, stages


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))

    def special_init(self) -> None:
        """Start as the identity (the second conv at zero, as in SkipInit/Fixup): without normalisation layers a
        stack of Glorot-initialised blocks grows its activations with depth, and training at lr 2e-3 diverged."""
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)


def _levels(image_size: int, what: str) -> int:
    """Stride-2 stages between 4x4 and the image: 3 at 32x32, 4 at 64x64, 5 at 128x128, 6 at 256x256."""
    if image_size not in CONV_SIZES:
        raise ValueError(f"the residual {what} takes {sizes_said()} images, not {image_size}x{image_size}")
    return stages(image_size)


class ResNetEncoder(nn.Module):
    """32x32 -> 16 -> 8 -> 4 with ``width``, 2 ``width``, 4 ``width`` channels; a linear head to (mu, sigma)."""

    def __init__(self, image_size: int = 32, latent_dim: int = 64, width: int = 32, channels: int = 1,
                 classes: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        levels = _levels(image_size, "encoder")
        layers: list[nn.Module] = [nn.Conv2d(channels + classes, width, 3, padding=1)]
        c = width
        for i in range(levels):
            out = min(width * 2 ** (i + 1), 4 * width)
            layers += [ResidualBlock(c), nn.ELU(), nn.Conv2d(c, out, 4, 2, 1)]
            c = out
        layers += [ResidualBlock(c), nn.ELU(), nn.Flatten(), nn.Linear(c * 16, 2 * latent_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_parameters(self.net(with_label_maps(x, onehot)), self.latent_dim)


class ResNetDecoder(nn.Module):
    """z -> 4 ``width`` x 4 x 4 -> (residual block, nearest x2 + 3x3 conv) per stage -> residual block -> 3x3 conv."""

    def __init__(self, latent_dim: int = 64, image_size: int = 32, out_channels: int = 1, width: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        levels = _levels(image_size, "decoder")
        c = 4 * width
        self.project = nn.Linear(latent_dim, c * 16)
        stages: list[nn.Module] = []
        for i in range(levels):
            out = max(c // 2, width) if i >= levels - 2 else c
            stages += [ResidualBlock(c), ResizeConv2d(c, out)]
            c = out
        self.upsample = numbered_as_before_fusion(stages)  # the constant-input dots test feeds this
        self.out = nn.Sequential(ResidualBlock(c), nn.ELU(), nn.Conv2d(c, out_channels, 3, padding=1))
        self.features = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], -1, 4, 4)  # shape[0], not len(z): a traced export keeps the batch free
        return self.out(self.upsample(h))

    # pixels from the edge of the upsampled picture that the stages' zero padding reaches: 2 per residual block
    # and 1 per 3x3 conv at each scale, doubled by every later upsampling (35 at 16 -> 128); for the dots test
    padding_reach = 40

    def upsampling_stack(self) -> tuple[nn.Module, int]:
        """The resizing stages (for the constant-input dots test) and their input channels."""
        return self.upsample, self.project.out_features // 16
