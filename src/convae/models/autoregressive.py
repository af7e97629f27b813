"""An autoregressive decoder head (PixelCNN, van den Oord et al. 2016; PixelVAE, Gulrajani et al. 2017).

p(x | z) = prod_i p(x_i | x_<i, z): a residual decoder turns z into a feature map at full resolution, and a few
masked convolutions read the pixels above and to the left of each pixel (raster order). In training and in
likelihood evaluation every pixel's conditional comes out of one pass (the true pixels go in: teacher forcing);
drawing a new image is sequential, one pixel at a time. The head is kept shallow on purpose: with a small
receptive field the local texture is left to the masked convolutions and the shape of the digit to z, so the
latents stay in use.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .residual import ResNetDecoder


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only the pixels before the centre in raster order (mask "A"), or those and the
    centre itself (mask "B", for layers after the first, whose centre holds no information about x_i)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask: str):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        k = kernel_size
        allowed = torch.zeros(k, k)
        allowed[: k // 2] = 1
        allowed[k // 2, : k // 2 + (mask == "B")] = 1
        self.register_buffer("mask", allowed.expand_as(self.weight).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedBlock(nn.Module):
    """h + 1x1(ELU(masked 3x3(ELU(h)) + 1x1(features))): a residual masked layer conditioned on the features."""

    def __init__(self, width: int, feature_channels: int):
        super().__init__()
        self.masked = MaskedConv2d(width, width, 3, "B")
        self.condition = nn.Conv2d(feature_channels, width, 1)
        self.mix = nn.Conv2d(width, width, 1)

    def forward(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return h + self.mix(F.elu(self.masked(F.elu(h)) + self.condition(features)))


class MaskedHead:
    """The PixelCNN head itself, for any module that has the features it reads: a 5x5 mask-"A" layer, ``layers``
    gated residual masked layers conditioned on the features, a 1x1 output. ``PixelDecoder`` and the ladder's head
    mix it in (their state-dict names stay ``first``, ``blocks``, ...)."""

    def build_head(self, width: int, features: int, layers: int, out_channels: int) -> None:
        self.first = MaskedConv2d(1, width, 5, "A")
        self.first_condition = nn.Conv2d(features, width, 1)
        self.blocks = nn.ModuleList(GatedBlock(width, features) for _ in range(layers))
        self.out = nn.Conv2d(width, out_channels, 1)
        # rows above a pixel, and columns to either side, that can reach it: 2 from the 5x5 mask, 1 per 3x3 masked
        # layer (to the right only through the rows above)
        self.reach = 2 + layers

    def head(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        h = self.first(x) + self.first_condition(features)
        for block in self.blocks:
            h = block(h, features)
        return self.out(F.elu(h))

    @torch.no_grad()
    def draw_pixels(self, features: torch.Tensor, draw) -> torch.Tensor:
        """A new image for these features, pixel by pixel: ``draw(logits)`` turns one pixel's logits into its value.
        Only the window that can reach the current pixel is recomputed (``reach`` rows above it and columns to either
        side): a convolution of a cropped map is exact ``reach`` pixels in from the crop's edges, as each layer's
        zero padding there spoils one more ring (two for the 5x5 layer)."""
        n, _, height, width = features.shape
        x = torch.zeros(n, 1, height, width, device=features.device, dtype=features.dtype)
        for row in range(height):
            for col in range(width):
                x[:, :, row, col] = draw(self.pixel_logits(x, features, row, col))
        return x

    def pixel_logits(self, x: torch.Tensor, features: torch.Tensor, row: int, col: int) -> torch.Tensor:
        """The logits of pixel (row, col) given the pixels before it, from the window of ``x`` that reaches it."""
        top, left, right = max(0, row - self.reach), max(0, col - self.reach), min(x.shape[-1], col + self.reach + 1)
        logits = self.head(x[:, :, top:row + 1, left:right], features[:, :, top:row + 1, left:right])
        return logits[:, :, -1, col - left]


class PixelDecoder(MaskedHead, nn.Module):
    """``ResNetDecoder`` features + a PixelCNN head; one gray channel (binary MNIST is what it is for)."""

    autoregressive = True

    def __init__(self, latent_dim: int = 32, image_size: int = 32, out_channels: int = 1, width: int = 32,
                 trunk_width: int = 16, features: int = 32, layers: int = 4):
        super().__init__()
        if out_channels != 1:
            raise ValueError(f"the pixel model draws gray images with one output per pixel (Bernoulli or continuous "
                             f"Bernoulli likelihood), not {out_channels} output channel(s)")
        self.latent_dim = latent_dim
        self.trunk = ResNetDecoder(latent_dim, image_size, features, trunk_width)
        self.build_head(width, features, layers, out_channels)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel given z and the pixels before it in ``x``."""
        return self.head(x, self.trunk(z))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, draw) -> torch.Tensor:
        """A new image for each z, pixel by pixel (``MaskedHead.draw_pixels``)."""
        return self.draw_pixels(self.trunk(z), draw)

    padding_reach = ResNetDecoder.padding_reach

    def upsampling_stack(self) -> tuple[nn.Module, int]:
        return self.trunk.upsampling_stack()
