"""convae: convolutional variational autoencoders on images, starting from the ADCME.jl seed tutorial.

The public contract, all of it (docs/own-model.md): using a trained run, ``load``; bringing a model of your own,
``register_model`` on a factory that returns a ``VAE`` made of your pieces, with ``Prior`` / ``Posterior`` (defaults
``StandardNormal`` / ``DiagonalGaussian``; ``gaussian_log_prob`` for densities made of Gaussians), ``make_encoder``
and ``make_decoder`` for convae's own networks, and the noise a training
step draws, ``standard_normal`` and ``Dropout`` (what lets packed sweeps batch your model); a training objective of
your own, ``TrainingObjective`` returning an ``ObjectiveValue`` (what is reported stays the -ELBO); ``load_plugin``
imports a module of models as ``--plugin`` does. Everything else may change between versions.
"""

from .version import __version__

# imported when first asked for: the parts that need torch, and the registry too, so that `import convae` (which
# `python -m convae` and the convae script do before any code of ours can catch a Ctrl-C) is the version alone
_LAZY = {"register_model": "models.registry", "load_plugin": "models.registry",
         "VAE": "models.vae", "Prior": "models.densities", "Posterior": "models.densities",
         "StandardNormal": "models.densities", "DiagonalGaussian": "models.densities",
         "make_encoder": "models.builtin", "make_decoder": "models.builtin",
         "gaussian_log_prob": "models.densities", "standard_normal": "models.noise", "Dropout": "models.noise",
         "TrainingObjective": "models.objective", "ObjectiveValue": "models.objective"}


def load(run_dir, device: str = "auto"):
    """The trained model of a run folder, ready for inference: ``encode``, ``decode``, ``reconstruct``, ``sample``
    (see ``convae.inference.TrainedModel``)."""
    from .inference import load as _load

    return _load(run_dir, device)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DiagonalGaussian", "Dropout", "ObjectiveValue", "Posterior", "Prior", "StandardNormal", "TrainingObjective",
           "VAE", "__version__",
           "gaussian_log_prob", "load", "load_plugin", "make_decoder", "make_encoder", "register_model",
           "standard_normal"]
