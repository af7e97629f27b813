"""Building a model by name, the built-in ones and plug-ins alike: ``build_model("seed")``."""

from __future__ import annotations

import inspect

import torch

from ..errors import ConfigError
from . import LIKELIHOODS
from .likelihoods import make_likelihood
from .registry import entry
from .sizes import CONV_SIZES
from .vae import VAE


DATASET_SIZE_UNKNOWN = 1_000  # what a factory that asks for the training-set size is given before the data is read


def build_model(name: str = "seed", encoder: str | None = None, image_size: int = 32, channels: int = 1,
                likelihood: str = "bernoulli", gaussian_sigma: float | None = None, classes: int = 0,
                options: dict | None = None, dataset_size: int | None = None) -> VAE:
    """The VAE called ``name`` for ``channels`` x ``image_size`` x ``image_size`` images, optionally with another
    encoder (``"mlp"``, ``"conv"`` or ``"resnet"``, for the built-in models) and another likelihood; ``classes`` > 0:
    conditional on a label of that many classes (the encoder reads it beside the image, the decoder beside z);
    ``options``: the factory's keyword options (``--model-option KEY=VALUE``); ``dataset_size``: the number of
    training images, given to a factory that declares a ``dataset_size`` keyword (an objective that estimates the
    aggregate posterior may want it when it is built; it is also given to every call of a ``TrainingObjective``). A
    shape, likelihood or option the model cannot take is a ValueError."""
    try:
        factory = entry(name).factory
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("--model: ")) from None
    p_x = make_likelihood(likelihood, gaussian_sigma)
    options = dict(options or {})
    if encoder is not None:
        options["encoder"] = encoder
    if "dataset_size" in options:
        raise ValueError("--model-option dataset_size: set by convae (the number of training images), not an option")
    if "dataset_size" in inspect.signature(factory).parameters:
        # the training images; where they are not known yet (a shape check before the data is read), a stand-in
        options["dataset_size"] = dataset_size if dataset_size is not None else DATASET_SIZE_UNKNOWN
    try:
        inspect.signature(factory).bind(image_size, channels, p_x, classes, **options)
    except TypeError:
        taken = [n for n, p in inspect.signature(factory).parameters.items()
                 if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and n not in
                                                 ("image_size", "channels", "likelihood", "classes"))]
        wrong = next((k for k in options if k not in taken), next(iter(options), "?"))
        flag = "--encoder" if wrong == "encoder" else f"--model-option {wrong}"
        raise ValueError(f"{flag}: model {name!r} takes no such option (its options: "
                         f"{', '.join(taken) or 'none'})") from None
    model = factory(image_size, channels, p_x, classes, **options)
    if not isinstance(model, VAE):
        raise ValueError(f"the factory of model {name!r} returned a {type(model).__name__}, not a convae.VAE "
                         "(docs/own-model.md)")
    return model


def factory_defaults(name: str) -> dict:
    """The keyword options model ``name``'s factory takes with their defaults ({} where the model cannot be found
    now): what a run's recorded options mean where they leave one out."""
    try:
        factory = entry(name).factory
    except ConfigError:
        return {}
    return {n: p.default for n, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty and n not in ("classes", "dataset_size")}


def accepted_shapes(name: str) -> list[str]:
    """The image shapes model ``name`` takes (by building it, with the first likelihood it takes), e.g. ["1x32x32",
    "3x64x64"], and "any size (8 to 1024)" for a model that also builds at sizes other than 32 and 64 (fully
    connected ones)."""
    return [said for size, channels, said in [(s, c, f"{c}x{s}x{s}") for s in CONV_SIZES for c in (1, 3)]
            + [(20, 1, "any size (8 to 1024)")]
            if builds(lambda: example_model(name, image_size=size, channels=channels))]


def accepted_likelihoods(name: str) -> list[str]:
    """The likelihoods p(x | z) model ``name`` can draw (by building it at 1 x 32 x 32); "gaussian (fixed sigma)"
    for a model that takes the Gaussian only with --gaussian-sigma."""
    accepted = []
    for likelihood in LIKELIHOODS:
        for sigma, said in ((None, likelihood), (0.1, f"{likelihood} (fixed sigma)")):
            if sigma is not None and likelihood != "gaussian":
                continue
            if builds(lambda: build_model(name, likelihood=likelihood, gaussian_sigma=sigma)):
                accepted.append(said)
                break
    return accepted


def builds(build) -> bool:
    """Whether ``build()`` makes a model rather than a ValueError, tried on PyTorch's meta device (no memory, no
    initialisation: ``convae models`` asks this of every model at 20 shapes, 14 s of random weights otherwise); a
    model whose construction cannot run on meta is built for real."""
    try:
        with torch.device("meta"):
            build()
        return True
    except ValueError:
        return False
    except Exception:  # a layer that cannot be built on meta
        try:
            build()
            return True
        except ValueError:
            return False


def example_model(name: str, encoder: str | None = None, image_size: int = 32, channels: int = 1) -> VAE:
    """Model ``name`` (at 1 x 32 x 32 unless told) with the first likelihood it takes (with ``encoder`` where it takes
    one): what ``convae models`` counts and times. A ValueError where it builds with none."""
    error = None
    for attempt in ({"encoder": encoder}, {}) if encoder else ({},):
        for likelihood, sigma in [(n, None) for n in LIKELIHOODS] + [("gaussian", 0.1)]:
            try:
                return build_model(name, likelihood=likelihood, gaussian_sigma=sigma, image_size=image_size,
                                   channels=channels, **attempt)
            except ValueError as e:
                error = e
    raise error


def build_run_model(config, channels: int, classes: int = 0, dataset_size: int | None = None) -> VAE:
    """The model a run's settings (a ``TrainConfig``) describe, for images with ``channels`` channels (and, with
    ``--conditional``, labels of ``classes`` classes); a shape or likelihood the model cannot take is a
    ConfigError naming the model."""
    if config.conditional and classes < 1:
        raise ConfigError("--conditional: the number of classes is unknown (the data has no labels)")
    try:
        model = build_model(config.model, config.encoder, config.image_size, channels, config.likelihood,
                            config.gaussian_sigma, classes if config.conditional else 0, config.model_options,
                            dataset_size)
    except ValueError as e:
        raise ConfigError(f"--model {config.model}: {e}") from None
    check_outputs(model, config.model, config.image_size, channels, config.likelihood)
    return model


def check_buildable(config) -> None:
    """Before any data is read or prepared: the model of a run's settings builds for these settings with one of the
    channel counts the data may have (the settings' own, or 1 and 3 where they say auto), counted on PyTorch's meta
    device (nothing allocated). A size or likelihood it cannot take is its ConfigError, before a folder of images is
    prepared for nothing."""
    counts = [int(config.channels)] if config.channels in ("1", "3") else [1, 3]
    first = None
    for channels in counts:
        try:
            with torch.device("meta"):
                build_run_model(config, channels, 2 if config.conditional else 0)
            return
        except ConfigError as e:
            first = first or e
        except Exception:  # a layer that cannot be built on meta: the real build says what is wrong, later
            return
    raise first


PROBE_IMAGES = 2


def shape_said(shape) -> str:
    return "x".join(str(d) for d in shape)


def check_outputs(model: VAE, name: str, image_size: int, channels: int, likelihood: str) -> None:
    """One pass of two gray images through a model just built, before anything is written: the encoder must give
    a mean and a positive scale of N x latent_dim each, and the decoder N x (channels x the likelihood's values per
    channel) x H x W. Anything else is a ConfigError naming the model, the expected and the received shape (a
    decoder of the wrong size or channel count otherwise trains on a wrong or empty likelihood). Nothing moves: the
    model is in eval mode for the pass (no BatchNorm statistic changes), and torch's random generators are left as
    they were. A model on PyTorch's meta device (counting memory) is not probed."""
    p = next(model.parameters(), None)
    if p is None or p.device.type == "meta":
        return
    n = PROBE_IMAGES
    x = torch.full((n, channels, image_size, image_size), 0.5, dtype=p.dtype, device=p.device)
    labels = torch.zeros(n, dtype=torch.long, device=p.device) if model.classes else None
    images = f"{n} images of {shape_said(x.shape[1:])}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = model(x, labels, generator=torch.Generator(device=p.device).manual_seed(0))
    except ConfigError:
        raise
    except Exception as e:  # a layer that cannot take these shapes: its own message, on one line
        said = " ".join(str(e).split())[:200]
        raise ConfigError(f"--model {name}: a pass of {images} through it fails ({type(e).__name__}: {said})") from None
    finally:
        model.train(was_training)
    for what, t in (("mean", out.mu), ("scale", out.sigma)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, model.latent_dim):
            got = shape_said(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ConfigError(f"--model {name}: its encoder's {what} for {images} is {got}; expected "
                              f"{n}x{model.latent_dim} (N x latent_dim)")
    if not bool(torch.isfinite(out.sigma).all() and (out.sigma > 0).all()):
        raise ConfigError(f"--model {name}: its encoder's scale (sigma) is not positive and finite for {images} "
                          "(give it a softplus or exp; a scale <= 0 has no density)")
    per_channel = model.likelihood.params_per_channel
    expected = (n, channels * per_channel, image_size, image_size)
    got = tuple(out.logits.shape)
    if got != expected:
        values = f"{per_channel} values per channel" if per_channel > 1 else "1 value per channel"
        raise ConfigError(f"--model {name}: its decoder returns {shape_said(got)} for {images} under --likelihood "
                          f"{likelihood}, which needs {values}: expected {shape_said(expected)} (N x C*{per_channel} x "
                          "H x W)")
