"""How well the latent space recovers known generative factors (the generated shapes data set).

A linear read-out from the latent means: least squares fitted on the training images, scored on the test images.
Continuous factors get R^2 (hue as its cosine and sine, since it is circular); the shape kind gets the accuracy of
a one-vs-rest linear classifier. Rotation is left out: a square looks the same every 90 degrees and a circle at
every angle, so no read-out can recover it from the image.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import EvalImages
from .latents import latent_means


def _design(mu: np.ndarray) -> np.ndarray:
    return np.concatenate([mu, np.ones((len(mu), 1))], 1)


def linear_r2(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(_design(train_x), train_y, rcond=None)
    residual = test_y - _design(test_x) @ coef
    return float(1 - (residual ** 2).sum() / ((test_y - test_y.mean(0)) ** 2).sum())


@torch.no_grad()
def factor_recovery(model, train: EvalImages, test: EvalImages, train_factors: np.ndarray,
                    test_factors: np.ndarray) -> dict:
    """{"kind_accuracy", "hue_r2", "size_r2", "x_r2", "y_r2"} from linear read-outs of the latent means."""
    mu_train = latent_means(model, train).double().cpu().numpy()
    mu_test = latent_means(model, test).double().cpu().numpy()
    out = {}
    kinds = train_factors[:, 0].astype(int)
    onehot = np.eye(kinds.max() + 1)[kinds]
    coef, *_ = np.linalg.lstsq(_design(mu_train), onehot, rcond=None)
    predicted = (_design(mu_test) @ coef).argmax(1)
    out["kind_accuracy"] = float((predicted == test_factors[:, 0].astype(int)).mean())
    hue = lambda f: np.stack([np.cos(2 * np.pi * f[:, 1]), np.sin(2 * np.pi * f[:, 1])], 1)  # noqa: E731
    out["hue_r2"] = linear_r2(mu_train, hue(train_factors), mu_test, hue(test_factors))
    for name, column in (("size", 2), ("x", 4), ("y", 5)):
        out[f"{name}_r2"] = linear_r2(mu_train, train_factors[:, column], mu_test, test_factors[:, column])
    return out
