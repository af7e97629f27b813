"""Decoders: z -> Bernoulli logits of a 1 x 32 x 32 image.

Every decoder returns logits (pre-sigmoid), so the loss can use binary_cross_entropy_with_logits; the
sigmoid that the seed applies is ``torch.sigmoid(logits)`` where a picture is wanted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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
                 and self.groups == 1 and output_size is None and self.bias is None)
        n, c_in, h, w = x.shape
        if plain and h == 1 and w == 1:
            return (x.reshape(n, c_in) @ self.weight.reshape(c_in, -1)).view(n, self.out_channels, *k)
        if plain and k == s:
            tiles = x.permute(0, 2, 3, 1).reshape(n * h * w, c_in) @ self.weight.reshape(c_in, -1)
            tiles = tiles.view(n, h, w, self.out_channels, k[0], k[1])
            return tiles.permute(0, 3, 1, 4, 2, 5).reshape(n, self.out_channels, h * k[0], w * k[1])
        return super().forward(x, output_size)


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

    def __init__(self, latent_dim: int = 100, ngf: int = 8, image_size: int = 32):
        super().__init__()
        if image_size != 32:
            raise ValueError(f"the seed decoder draws 32x32 images, not {image_size}x{image_size}")
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
