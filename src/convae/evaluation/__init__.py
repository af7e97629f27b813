"""Evaluating trained models: the ELBO on a data set (``elbo.py``), the importance-weighted bound and its kept
per-image bounds (``likelihood.py``), latent usage (``latents.py``), sample quality (``frechet.py``), the dots
(``artifacts.py``), pictures (``pictures.py``), and everything ``convae eval`` reports for a run (``evaluate.py``)."""

from .elbo import ElboResult, entropy_floor, evaluate_neg_elbo

__all__ = ["ElboResult", "entropy_floor", "evaluate_neg_elbo"]
