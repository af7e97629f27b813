"""A decoder of your own with convae's encoder and loss: nearest-neighbour upsampling, each doubling followed by a
3x3 convolution (no transposed convolution, so no checkerboard "dots").

    convae train --plugin convae_examples.nnup --model nnup --model-option width=32
"""

from __future__ import annotations

import torch.nn as nn

import convae


class NearestUpsamplingDecoder(nn.Module):
    """z -> 4x4 maps -> doublings (nearest, 3x3 conv, BatchNorm, ReLU) -> the likelihood's parameters."""

    def __init__(self, latent_dim: int, image_size: int, out_channels: int, width: int = 32):
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"nnup draws images of a power-of-two size from 8 up, not {image_size}")
        doublings = image_size.bit_length() - 3  # 4 -> image_size
        self.start = nn.Sequential(nn.Linear(latent_dim, width * 16), nn.ReLU())
        layers = []
        for _ in range(doublings):
            # no bias before a BatchNorm: its gradient is zero but for rounding, which Adam would turn into full-size
            # steps of either sign (a run's figures would then hang on the last bits of float32)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
        self.up = nn.Sequential(*layers, nn.Conv2d(width, out_channels, 3, padding=1))
        self.width = width

    def forward(self, z):
        return self.up(self.start(z).view(len(z), self.width, 4, 4))


@convae.register_model("nnup", description="MLP encoder, nearest-upsampling + 3x3 conv decoder (a plug-in)")
def build(image_size, channels, likelihood, classes, *, latent_dim: int = 32, width: int = 32, encoder: str = "mlp"):
    if not (isinstance(width, int) and width > 0):
        raise ValueError(f"--model-option width={width!r}: a positive integer")
    return convae.VAE(convae.make_encoder(encoder, image_size, latent_dim, channels, classes),
                      NearestUpsamplingDecoder(latent_dim + classes, image_size,
                                               channels * likelihood.params_per_channel, width),
                      latent_dim, likelihood, classes)
