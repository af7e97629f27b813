"""Models built by name: ``build_model("seed")``.

Each entry of ``MODELS`` pairs a decoder with the encoder and latent size of its recipe. A new model is one
more entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from .autoregressive import PixelDecoder
from .decoders import FCDecoder, ResizeDecoder, SeedDecoder, SubPixelDecoder
from .encoders import ConvEncoder, MLPEncoder
from .residual import ResNetDecoder, ResNetEncoder
from ..objectives import make_likelihood
from .vae import VAE, VAEOutput, keras_init

ENCODERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLPEncoder, "conv": ConvEncoder, "resnet": ResNetEncoder}


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
    "resnet": ModelSpec(ResNetDecoder, 64, "resnet", "residual encoder and resize-convolution decoder (one stochastic layer)"),
    "pixel": ModelSpec(PixelDecoder, 32, "resnet", "residual encoder; residual decoder + PixelCNN head (autoregressive p(x|z))"),
}


def build_model(name: str = "seed", encoder: str | None = None, image_size: int = 32, channels: int = 1,
                likelihood: str = "bernoulli", gaussian_sigma: float | None = None, classes: int = 0) -> VAE:
    """The VAE called ``name`` for ``channels`` x ``image_size`` x ``image_size`` images, optionally with another
    encoder (``"mlp"`` or ``"conv"``) and another likelihood; ``classes`` > 0: conditional on a label of that many
    classes (the encoder reads it beside the image, the decoder beside z). A shape the model cannot draw is a
    ValueError."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    spec = MODELS[name]
    encoder = encoder or spec.encoder
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r} (choose from {', '.join(ENCODERS)})")
    p_x = make_likelihood(likelihood, gaussian_sigma)
    model = VAE(ENCODERS[encoder](image_size=image_size, latent_dim=spec.latent_dim, channels=channels, classes=classes),
                spec.decoder(latent_dim=spec.latent_dim + classes, image_size=image_size,
                             out_channels=channels * p_x.params_per_channel), spec.latent_dim, p_x, classes)
    model.apply(keras_init)
    for module in model.modules():  # e.g. ICNR for sub-pixel convolutions, after the default init
        if hasattr(module, "special_init"):
            module.special_init()
    return model


def accepted_shapes(name: str) -> list[str]:
    """The image shapes model ``name`` takes (by building it), e.g. ["1x32x32", "3x64x64"]."""
    shapes = []
    for size in (32, 64):
        for channels in (1, 3):
            try:
                build_model(name, image_size=size, channels=channels)
                shapes.append(f"{channels}x{size}x{size}")
            except ValueError:
                pass
    return shapes


def accepted_likelihoods(name: str) -> list[str]:
    """The likelihoods p(x | z) model ``name`` can draw (by building it at 1 x 32 x 32)."""
    from ..objectives import LIKELIHOODS

    accepted = []
    for likelihood in LIKELIHOODS:
        try:
            build_model(name, likelihood=likelihood)
            accepted.append(likelihood)
        except ValueError:
            pass
    return accepted


def build_run_model(config, channels: int, classes: int = 0) -> VAE:
    """The model a run's settings describe, for images with ``channels`` channels (and, with ``--conditional``,
    labels of ``classes`` classes); a shape or likelihood the model cannot take is a ConfigError naming the model."""
    from ..config import ConfigError

    if config.conditional and classes < 1:
        raise ConfigError("--conditional: the number of classes is unknown (the data has no labels)")
    try:
        return build_model(config.model, config.encoder, config.image_size, channels, config.likelihood,
                           config.gaussian_sigma, classes if config.conditional else 0)
    except ValueError as e:
        raise ConfigError(f"--model {config.model}: {e}") from None


__all__ = ["accepted_likelihoods", "accepted_shapes", "build_run_model", "MODELS", "ENCODERS", "ModelSpec", "VAE", "VAEOutput", "build_model"]
