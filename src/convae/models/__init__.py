"""The model family by name. Every model, built-in or a plug-in's, is a factory in the registry
(``registry.py``: ``register_model``, entry points, ``--plugin``); ``build_model`` (in ``build.py``) builds one.

The built-in recipes are the catalog below: ``MODELS`` (decoders with the encoder and latent size of their recipe),
``ENCODERS`` and ``LIKELIHOODS``, each naming the class that makes it as ``"module:Class"`` inside this package.
The catalog imports nothing (no torch), so ``convae --help`` lists the choices at once; ``builtin.py`` registers a
factory for each entry when a model is first built. A new built-in model is one more entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .registry import declare_builtin


@dataclass(frozen=True)
class ModelSpec:
    decoder: str          # "module:Class" in convae.models
    latent_dim: int       # at 32 x 32
    encoder: str = "mlp"  # a key of ENCODERS
    description: str = ""
    builder: str | None = None  # "module:function" building the whole model (one with its own encoder), or None


MODELS: dict[str, ModelSpec] = {
    "seed": ModelSpec("decoders:SeedDecoder", 100, "mlp",
                      "the seed: MLP encoder, transposed-conv decoder (k=s=4 last layer)"),
    "fc": ModelSpec("decoders:FCDecoder", 20, "mlp", "the fully connected VAE the seed compares with (dim_z 20)"),
    "resize": ModelSpec("decoders:ResizeDecoder", 100, "mlp",
                        "resize-convolution decoder: nearest x2 upsampling + 3x3 conv"),
    "subpixel": ModelSpec("decoders:SubPixelDecoder", 100, "mlp",
                          "sub-pixel convolution decoder (PixelShuffle, ICNR init)"),
    "resnet": ModelSpec("residual:ResNetDecoder", 64, "resnet",
                        "residual encoder and resize-convolution decoder (one stochastic layer)"),
    "pixel": ModelSpec("autoregressive:PixelDecoder", 32, "resnet",
                       "residual encoder; residual decoder + PixelCNN head (autoregressive p(x|z))"),
    "ladder": ModelSpec("ladder:TopDown", 3328, "bottom-up",
                        "hierarchical: 5 groups of spatial latents (4x4, 4x4, 8x8, 8x8, 16x16), bottom-up + top-down",
                        builder="ladder:build_ladder"),
    "ladder-pixel": ModelSpec("ladder:TopDown", 3328, "bottom-up",
                              "the hierarchical ladder with the PixelCNN head on top (autoregressive p(x|z))",
                              builder="ladder:build_ladder_pixel"),
}

ENCODERS: dict[str, str] = {"mlp": "encoders:MLPEncoder", "conv": "encoders:ConvEncoder",
                            "resnet": "residual:ResNetEncoder"}

LIKELIHOODS: dict[str, str] = {"bernoulli": "likelihoods:Bernoulli",
                               "continuous-bernoulli": "likelihoods:ContinuousBernoulli",
                               "logistic": "likelihoods:DiscretizedLogistic", "gaussian": "likelihoods:Gaussian"}


for _name, _spec in MODELS.items():
    declare_builtin(_name, _spec.description)


def resolve(reference: str) -> type:
    """The class a catalog entry names ("module:Class")."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


_BUILT = {"build_model": "build", "build_run_model": "build", "accepted_shapes": "build", "example_model": "build",
          "accepted_likelihoods": "build", "VAE": "vae", "VAEOutput": "vae", "LossTerms": "vae",
          "Prior": "densities", "Posterior": "densities", "StandardNormal": "densities",
          "DiagonalGaussian": "densities"}


def __getattr__(name: str):
    """``from convae.models import build_model, VAE``: the parts that need torch, imported when first asked for."""
    if name in _BUILT:
        return getattr(importlib.import_module(f"{__name__}.{_BUILT[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["accepted_likelihoods", "accepted_shapes", "build_model", "build_run_model", "DiagonalGaussian", "ENCODERS",
           "LIKELIHOODS", "LossTerms", "MODELS", "ModelSpec", "Posterior", "Prior", "resolve", "StandardNormal", "VAE",
           "VAEOutput"]
