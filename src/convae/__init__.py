"""convae: convolutional variational autoencoders on images, starting from the ADCME.jl seed tutorial."""

from .version import __version__


def load(run_dir, device: str = "auto"):
    """The trained model of a run folder, ready for inference: ``encode``, ``decode``, ``reconstruct``, ``sample``
    (see ``convae.inference.TrainedModel``)."""
    from .inference import load as _load

    return _load(run_dir, device)

__all__ = ["__version__", "load"]
