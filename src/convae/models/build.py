"""Building the models of ``convae.models.MODELS`` by name: ``build_model("seed")``."""

from __future__ import annotations

from ..errors import ConfigError
from . import ENCODERS, LIKELIHOODS, MODELS, resolve
from .likelihoods import make_likelihood
from .vae import VAE, keras_init


def build_model(name: str = "seed", encoder: str | None = None, image_size: int = 32, channels: int = 1,
                likelihood: str = "bernoulli", gaussian_sigma: float | None = None, classes: int = 0) -> VAE:
    """The VAE called ``name`` for ``channels`` x ``image_size`` x ``image_size`` images, optionally with another
    encoder (``"mlp"``, ``"conv"`` or ``"resnet"``) and another likelihood; ``classes`` > 0: conditional on a label
    of that many classes (the encoder reads it beside the image, the decoder beside z). A shape the model cannot
    draw is a ValueError."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    spec = MODELS[name]
    p_x = make_likelihood(likelihood, gaussian_sigma)
    if spec.builder is not None:  # a model with its own encoder (the hierarchical ones)
        if encoder is not None:
            raise ValueError(f"--encoder {encoder}: model {name!r} reads images with its own bottom-up path")
        model = resolve(spec.builder)(image_size, channels, p_x, classes)
    else:
        encoder = encoder or spec.encoder
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r} (choose from {', '.join(ENCODERS)})")
        encoder_class, decoder_class = resolve(ENCODERS[encoder]), resolve(spec.decoder)
        model = VAE(encoder_class(image_size=image_size, latent_dim=spec.latent_dim, channels=channels,
                                  classes=classes),
                    decoder_class(latent_dim=spec.latent_dim + classes, image_size=image_size,
                                  out_channels=channels * p_x.params_per_channel), spec.latent_dim, p_x, classes)
    model.apply(keras_init)
    for module in model.modules():  # e.g. ICNR for sub-pixel convolutions, after the default init
        if hasattr(module, "special_init"):
            module.special_init()
    return model


def accepted_shapes(name: str) -> list[str]:
    """The image shapes model ``name`` takes (by building it), e.g. ["1x32x32", "3x64x64"], and "any size (8 to
    1024)" for a model that also builds at sizes other than 32 and 64 (fully connected ones)."""
    shapes = []
    for size in (32, 64):
        for channels in (1, 3):
            try:
                build_model(name, image_size=size, channels=channels)
                shapes.append(f"{channels}x{size}x{size}")
            except ValueError:
                pass
    try:
        build_model(name, image_size=20)
        shapes.append("any size (8 to 1024)")
    except ValueError:
        pass
    return shapes


def accepted_likelihoods(name: str) -> list[str]:
    """The likelihoods p(x | z) model ``name`` can draw (by building it at 1 x 32 x 32)."""
    accepted = []
    for likelihood in LIKELIHOODS:
        try:
            build_model(name, likelihood=likelihood)
            accepted.append(likelihood)
        except ValueError:
            pass
    return accepted


def build_run_model(config, channels: int, classes: int = 0) -> VAE:
    """The model a run's settings (a ``TrainConfig``) describe, for images with ``channels`` channels (and, with
    ``--conditional``, labels of ``classes`` classes); a shape or likelihood the model cannot take is a
    ConfigError naming the model."""
    if config.conditional and classes < 1:
        raise ConfigError("--conditional: the number of classes is unknown (the data has no labels)")
    try:
        return build_model(config.model, config.encoder, config.image_size, channels, config.likelihood,
                           config.gaussian_sigma, classes if config.conditional else 0)
    except ValueError as e:
        raise ConfigError(f"--model {config.model}: {e}") from None
