"""Evaluating trained models: the ELBO on a data set (more in later modules)."""

from .elbo import ElboResult, evaluate_neg_elbo

__all__ = ["ElboResult", "evaluate_neg_elbo"]
