"""The built-in models, registered through ``register_model`` like anybody's: one factory per entry of ``MODELS``.

Each factory takes the contract's arguments and one option, ``encoder`` (``--encoder``: another encoder of
``ENCODERS`` for a model of one stochastic layer), and starts the weights as the seed's layers do (Keras' defaults,
then any layer's ``special_init``, such as ICNR for sub-pixel convolutions).
"""

from __future__ import annotations

from . import ENCODERS, MODELS, ModelSpec, resolve
from .likelihoods import Likelihood
from .registry import register_model
from .vae import VAE, keras_init


def builtin_factory(name: str, spec: ModelSpec):
    def build(image_size: int, channels: int, likelihood: Likelihood, classes: int = 0, *,
              encoder: str | None = None) -> VAE:
        if spec.builder is not None:  # a model with its own encoder (the hierarchical ones)
            if encoder is not None:
                raise ValueError(f"--encoder {encoder}: model {name!r} reads images with its own bottom-up path")
            model = resolve(spec.builder)(image_size, channels, likelihood, classes)
        else:
            encoder = encoder or spec.encoder
            model = VAE(encoder_module(encoder, image_size, spec.latent_dim, channels, classes),
                        decoder_module(name, spec.latent_dim + classes, image_size,
                                       channels * likelihood.params_per_channel),
                        spec.latent_dim, likelihood, classes)
        return initialised(model)

    build.__name__ = build.__qualname__ = f"build_{name.replace('-', '_')}"
    build.__doc__ = spec.description
    return build



def initialised(module):
    """``module`` with the seed's initial weights: Keras' defaults (Glorot-uniform, zero biases), then each layer's
    ``special_init`` (e.g. ICNR for sub-pixel convolutions)."""
    module.apply(keras_init)
    for layer in module.modules():
        if hasattr(layer, "special_init"):
            layer.special_init()
    return module


def encoder_module(name: str, image_size: int, latent_dim: int, channels: int = 1, classes: int = 0):
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r} (choose from {', '.join(ENCODERS)})")
    return resolve(ENCODERS[name])(image_size=image_size, latent_dim=latent_dim, channels=channels, classes=classes)


def decoder_module(model: str, latent_dim: int, image_size: int, out_channels: int):
    spec = MODELS.get(model)
    if spec is None or spec.builder is not None:
        raise ValueError(f"no decoder of its own to lend: {model!r} (choose from "
                         f"{', '.join(n for n, s in MODELS.items() if s.builder is None)})")
    return resolve(spec.decoder)(latent_dim=latent_dim, image_size=image_size, out_channels=out_channels)


def make_encoder(name: str, image_size: int, latent_dim: int, channels: int = 1, classes: int = 0):
    """One of convae's encoders by name (``"mlp"``, ``"conv"``, ``"resnet"``), initialised as the built-in models
    are: images N x C x H x W (and a conditional model's one-hot labels) -> (mu, sigma) of a diagonal Gaussian,
    N x latent_dim each; for a plug-in that brings its own decoder, prior or posterior. A shape it cannot take is a
    ValueError."""
    return initialised(encoder_module(name, image_size, latent_dim, channels, classes))


def make_decoder(model: str, latent_dim: int, image_size: int, out_channels: int):
    """The decoder of built-in model ``model`` (``"fc"``, ``"seed"``, ``"resize"``, ...), initialised as the built-in
    models are: z (N x latent_dim) -> N x out_channels x image_size x image_size, the parameters of p(x | z)
    (``out_channels`` = channels x the likelihood's ``params_per_channel``). A shape it cannot take is a
    ValueError."""
    return initialised(decoder_module(model, latent_dim, image_size, out_channels))

for _name, _spec in MODELS.items():
    register_model(_name, description=_spec.description)(builtin_factory(_name, _spec))
