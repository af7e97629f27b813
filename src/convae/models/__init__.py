"""Models built by name: ``build_model("seed")``.

Each entry of ``MODELS`` pairs a decoder with the encoder and latent size of its recipe. A new model is one
more entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from .decoders import FCDecoder, ResizeDecoder, SeedDecoder, SubPixelDecoder
from .encoders import ConvEncoder, MLPEncoder
from .vae import VAE, VAEOutput, keras_init

ENCODERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLPEncoder, "conv": ConvEncoder}


@dataclass(frozen=True)
class ModelSpec:
    decoder: Callable[..., nn.Module]
    latent_dim: int
    encoder: str = "mlp"
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "seed": ModelSpec(SeedDecoder, 100, "mlp", "the seed: MLP encoder, transposed-conv decoder (k=s=4 last layer)"),
    "fc": ModelSpec(FCDecoder, 20, "mlp", "the fully connected VAE the seed compares with (dim_z 20)"),
    "resize": ModelSpec(ResizeDecoder, 100, "mlp", "resize-convolution decoder: nearest x2 upsampling + 3x3 conv"),
    "subpixel": ModelSpec(SubPixelDecoder, 100, "mlp", "sub-pixel convolution decoder (PixelShuffle, ICNR init)"),
}


def build_model(name: str = "seed", encoder: str | None = None, image_size: int = 32) -> VAE:
    """The VAE called ``name``, optionally with another encoder (``"mlp"`` or ``"conv"``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    spec = MODELS[name]
    encoder = encoder or spec.encoder
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r} (choose from {', '.join(ENCODERS)})")
    model = VAE(ENCODERS[encoder](image_size=image_size, latent_dim=spec.latent_dim),
                spec.decoder(latent_dim=spec.latent_dim, image_size=image_size), spec.latent_dim)
    model.apply(keras_init)
    if hasattr(model.decoder, "special_init"):  # e.g. ICNR for sub-pixel convolutions, after the default init
        model.decoder.special_init()
    return model


__all__ = ["MODELS", "ENCODERS", "ModelSpec", "VAE", "VAEOutput", "build_model"]
