"""convae: convolutional variational autoencoders on images, starting from the ADCME.jl seed tutorial."""

__version__ = "0.1.0"


def load(run_dir, device: str = "auto"):
    """The trained model of a run folder, ready for inference: ``encode``, ``decode``, ``reconstruct``, ``sample``
    (see ``convae.inference.TrainedModel``)."""
    from .inference import load as _load

    return _load(run_dir, device)
