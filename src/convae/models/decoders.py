"""Decoders: z -> the parameters of p(x | z) for a C x H x W image (for the seed's Bernoulli likelihood, the
logits of a 1 x 32 x 32 image).

Every decoder returns unconstrained parameters (logits, not probabilities), so the loss can use
binary_cross_entropy_with_logits; ``VAE.likelihood.mean(params)`` (for the seed: the sigmoid it applies) gives
the picture.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .noise import Dropout
from .sizes import CONV_SIZES, sizes_said

# The seed's layers come from Keras: BatchNormalization(momentum=0.99, epsilon=1e-3). PyTorch's momentum
# is the weight of the new batch, so 1 - 0.99.
KERAS_BN = dict(eps=1e-3, momentum=0.01)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as one matrix product where the layer is one in disguise.

    Two of the seed's layers are: on a 1x1 input (layer 1) every output is a dot product of z with a column of
    the kernel, and with kernel = stride and no padding (layer 4) each input pixel paints its own k x k tile.
    Written as a matmul these run several times faster on CPU than the generic deconvolution, with the same
    parameters (same shapes and names, so checkpoints don't change) and the same sums. Any other configuration
    takes nn.ConvTranspose2d's own path.
    """

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        plain = (self.padding == (0, 0) and self.output_padding == (0, 0) and self.dilation == (1, 1)
                 and self.groups == 1 and output_size is None)
        n, c_in, h, w = x.shape
        if plain and h == 1 and w == 1:
            return self.product(x.reshape(n, c_in)).view(n, self.out_channels, *k)
        if plain and k == s:
            tiles = self.product(x.permute(0, 2, 3, 1).reshape(n * h * w, c_in))
            tiles = tiles.view(n, h, w, self.out_channels, k[0], k[1])
            return tiles.permute(0, 3, 1, 4, 2, 5).reshape(n, self.out_channels, h * k[0], w * k[1])
        return super().forward(x, output_size)

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (M x C_in) times the kernel as a C_in x (C_out k k) matrix, plus the bias of each output channel
        (the seed's layers have none; a BatchNorm folded into the layer for evaluation gives one)."""
        columns = self.weight.reshape(self.in_channels, -1)
        if self.bias is None:
            return rows @ columns
        return torch.addmm(self.bias.repeat_interleave(columns.shape[1] // self.out_channels), rows, columns)


class ResizeConv2d(nn.Conv2d):
    """Nearest-neighbour x2 upsampling followed by this 3x3 convolution (padding 1), computed as one stride-2
    transposed convolution of the small input: the same sums without the 4x larger copy of the input, and 4 instead
    of 9 multiply-adds per output value.

    Along each axis, output pixel 2i of the upsampled-and-convolved map meets input pixels i-1 (kernel tap 0) and i
    (taps 1 and 2); pixel 2i+1 meets i (taps 0 and 1) and i+1 (tap 2). Adding the taps that meet the same input
    pixel gives the 4-tap transposed kernel (W2, W1+W2, W0+W1, W0). Measured per layer on 2 CPU cores: 1.7-3.8x
    faster than nn.Upsample + nn.Conv2d, forward and backward (docs/performance.md). Same parameters and names as
    nn.Conv2d, so checkpoints don't change.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = torch.stack([w[:, :, 2], w[:, :, 1] + w[:, :, 2], w[:, :, 0] + w[:, :, 1], w[:, :, 0]], dim=2)
        w = torch.stack([w[..., 2], w[..., 1] + w[..., 2], w[..., 0] + w[..., 1], w[..., 0]], dim=3)
        return F.conv_transpose2d(x, w.transpose(0, 1), self.bias, stride=2, padding=1)


def numbered_as_before_fusion(layers: list[nn.Module]) -> nn.Sequential:
    """nn.Sequential(*layers), but numbered as when each ResizeConv2d was two layers (nn.Upsample, nn.Conv2d), so
    that checkpoints written before the fusion keep their keys (``up.1.weight``, not ``up.0.weight``)."""
    named, index = OrderedDict(), 0
    for layer in layers:
        index += isinstance(layer, ResizeConv2d)
        named[str(index)] = layer
        index += 1
    return nn.Sequential(named)


class CropLast(nn.Module):
    """Drop the last ``n`` rows and columns: turns PyTorch's padding=1 transposed conv into TF's "same"."""

    def __init__(self, n: int = 1):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : x.shape[-2] - self.n, : x.shape[-1] - self.n]


class PadBottomRight(nn.Module):
    """Zero-pad one row at the bottom and one column at the right (the seed's ``pad`` after layer 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 1, 0, 1))


class SeedDecoder(nn.Module):
    """The seed's "Generator": four transposed convolutions, 1x1 -> 4 -> 4 -> 7 (pad 8) -> 32.

    Layer by layer as reference.md section 1 lists it; ``ngf = 8`` gives 256, 128, 64 channels. The last layer
    has kernel 4 and stride 4, so each 8x8 feature pixel paints its own 4x4 tile: the source of the "dots".
    """

    def __init__(self, latent_dim: int = 100, ngf: int = 8, image_size: int = 32, out_channels: int = 1):
        super().__init__()
        if image_size != 32 or out_channels != 1:
            raise ValueError(f"the seed model draws 32x32 gray images with one output per pixel (a Bernoulli or "
                             f"continuous Bernoulli likelihood), not {out_channels} output channel(s) at "
                             f"{image_size}x{image_size}; use --model resize or subpixel")
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            ConvTranspose2d(latent_dim, ngf * 32, 4, 1, bias=False),              # 1 -> 4
            nn.BatchNorm2d(ngf * 32, **KERAS_BN), nn.ReLU(),
            ConvTranspose2d(ngf * 32, ngf * 16, 4, 1, padding=1, bias=False),        # 4 -> 5
            CropLast(1),                                                             # 5 -> 4 ("same")
            nn.BatchNorm2d(ngf * 16, **KERAS_BN), nn.ReLU(),
            ConvTranspose2d(ngf * 16, ngf * 8, 4, 1, bias=False),                    # 4 -> 7
            PadBottomRight(),                                                        # 7 -> 8
            nn.BatchNorm2d(ngf * 8, **KERAS_BN), nn.ReLU(),
            ConvTranspose2d(ngf * 8, 1, 4, 4, bias=False),                        # 8 -> 32
            nn.BatchNorm2d(1, **KERAS_BN),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))

    def upsampling_stack(self) -> tuple[nn.Module, int]:
        """The layers that paint the dots (the k = s = 4 transposed conv and its BatchNorm), and their input channels."""
        return self.net[-2:], self.net[-2].in_channels


class FCDecoder(nn.Module):
    """The fully connected decoder of the tutorial the seed compares with: Linear-tanh-Dropout, Linear-ELU-Dropout,
    Linear to every pixel (here 32x32, so the two compare on the same data)."""

    def __init__(self, latent_dim: int = 20, hidden: int = 500, dropout: float = 0.1, image_size: int = 32,
                 out_channels: int = 1):
        super().__init__()
        self.image_size, self.out_channels = image_size, out_channels
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Tanh(), Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ELU(), Dropout(dropout),
            nn.Linear(hidden, out_channels * image_size * image_size),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], self.out_channels, self.image_size, self.image_size)  # a traced export keeps C x H x W


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out, **KERAS_BN), nn.ReLU()]


class SubPixelUpsample(nn.Module):
    """x2 upsampling by sub-pixel convolution: a 3x3 conv to r^2 x the channels, then PixelShuffle(r).

    Initialised with ICNR (Aitken et al. 2017): one sub-kernel per output channel, copied to its r^2 phases in
    PixelShuffle's channel order (channel c * r^2 + phase), so at initialisation it equals nearest-neighbour
    upsampling followed by a convolution and paints no checkerboard. ``special_init`` applies it after the
    default initialisation.
    """

    def __init__(self, c_in: int, c_out: int, r: int = 2, bias: bool = False):
        super().__init__()
        self.r, self.c_out = r, c_out
        self.conv = nn.Conv2d(c_in, c_out * r * r, 3, padding=1, bias=bias)
        self.shuffle = nn.PixelShuffle(r)

    @torch.no_grad()
    def icnr_(self) -> None:
        sub = torch.empty(self.c_out, *self.conv.weight.shape[1:])
        nn.init.xavier_uniform_(sub)
        self.conv.weight.copy_(sub.repeat_interleave(self.r * self.r, dim=0))
        if self.conv.bias is not None:
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class _UpsamplingDecoder(nn.Module):
    """z -> 4x4x256 (a transposed conv of the 1x1 input, as the seed's first layer) -> a 3x3 conv at 4x4 -> x2
    upsamplings to the image size (three to 32x32, four to 64x64, up to six to 256x256). No BatchNorm right before the output: the last
    layer is a plain conv with a bias, giving ``out_channels`` maps (channels x the likelihood's parameters).
    At 32x32 gray: about 0.8 M parameters and 14.8 M multiply-adds per image (the seed decoder: 1.07 M and 11.0 M)."""

    def __init__(self, latent_dim: int, upsample, image_size: int = 32, out_channels: int = 1):
        super().__init__()
        if image_size not in CONV_SIZES:
            raise ValueError(f"this decoder draws {sizes_said()} images, not {image_size}x{image_size}")
        self.latent_dim = latent_dim
        self.stem = nn.Sequential(ConvTranspose2d(latent_dim, 256, 4, 1, bias=False),
                                  nn.BatchNorm2d(256, **KERAS_BN), nn.ReLU(), *conv_bn_relu(256, 128))
        widths = [128, 64, 32] + [16] * (image_size.bit_length() - 6)  # 16 channels from 64x64 up
        layers = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [*upsample(c_in, c_out), nn.BatchNorm2d(c_out, **KERAS_BN), nn.ReLU()]
        self.up = numbered_as_before_fusion([*layers, *upsample(widths[-1], out_channels, bias=True)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.stem(z.view(z.shape[0], self.latent_dim, 1, 1)))

    def upsampling_stack(self) -> tuple[nn.Module, int]:
        """The three x2 upsamplings, and their input channels."""
        return self.up, 128


class ResizeDecoder(_UpsamplingDecoder):
    """Resize-convolution (Odena et al. 2016): nearest-neighbour x2 upsampling, then a stride-1 3x3 conv."""

    def __init__(self, latent_dim: int = 100, image_size: int = 32, out_channels: int = 1):
        super().__init__(latent_dim, lambda c_in, c_out, bias=False: [ResizeConv2d(c_in, c_out, bias)],
                         image_size, out_channels)


class SubPixelDecoder(_UpsamplingDecoder):
    """Sub-pixel convolution (PixelShuffle) with ICNR initialisation."""

    def __init__(self, latent_dim: int = 100, image_size: int = 32, out_channels: int = 1):
        super().__init__(latent_dim, lambda c_in, c_out, bias=False: [SubPixelUpsample(c_in, c_out, 2, bias)],
                         image_size, out_channels)

    def special_init(self) -> None:
        for m in self.modules():
            if isinstance(m, SubPixelUpsample):
                m.icnr_()
