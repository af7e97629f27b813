"""A training objective of a model's own, kept apart from what convae reports.

convae trains on the -ELBO by default. A model may carry another *objective* — beta-TCVAE's total-correlation
penalty, InfoVAE's MMD, any regularised loss — as a ``TrainingObjective``: training differentiates it, and it is
logged under its own name (``train_objective`` and its named parts) beside the true terms. Everything convae
reports and ranks by — the test -ELBO and its two terms, the IW bound, bits/dim, a sweep's table, a search's value,
the report — stays the model's true quantity, computed from its densities, whatever the objective is.

    class MyObjective(convae.TrainingObjective):
        parts = ("penalty",)                    # the named parts it logs (each a per-image value)

        def __call__(self, model, out, x, terms, dataset_size):
            penalty = ...                       # N values, from the whole batch if it needs it
            return convae.ObjectiveValue(terms.total + penalty, {"penalty": penalty})

``out`` is the model's one-sample pass over the batch (``VAEOutput``: the decoder's parameters, mu, sigma, the z
the decoder saw), ``terms`` the true -ELBO terms of each image (``LossTerms``: nll, the KL per unit; ``.total``),
``dataset_size`` the number of training images (what minibatch-weighted estimators of q(z) need). The objective
returns one value per image; training minimises their mean over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ObjectiveValue(NamedTuple):
    """What a ``TrainingObjective`` returns for a batch: the value to minimise and its named parts, N values each."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = {}


class TrainingObjective:
    """What a model trains on, where it is not the ELBO. Subclass it: ``parts`` (the names of the parts it logs)
    and ``__call__`` (see the module's docstring). ``name`` is how logs and the report call it."""

    name = "objective"
    parts: tuple[str, ...] = ()

    def __call__(self, model, out, x: torch.Tensor, terms, dataset_size: int) -> ObjectiveValue:
        raise NotImplementedError(f"{type(self).__name__}.__call__")

    def describe(self) -> dict:
        """What config.json and the report say of it."""
        return {"name": self.name, "class": type(self).__name__, "parts": list(self.parts)}

    def evaluate(self, model, out, x: torch.Tensor, terms, dataset_size: int) -> ObjectiveValue:
        """``self(...)``, checked: a value per image for the total and for each part named in ``parts``."""
        value = self(model, out, x, terms, dataset_size)
        if not isinstance(value, ObjectiveValue):
            total, parts = (value, {}) if isinstance(value, torch.Tensor) else (None, None)
            if total is None:
                raise TypeError(f"{type(self).__name__} returned a {type(value).__name__}, not a "
                                "convae.ObjectiveValue(total, parts)")
            value = ObjectiveValue(total, parts)
        n = len(x)
        wrong = [name for name, t in (("total", value.total), *value.parts.items())
                 if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,)]
        missing = [p for p in self.parts if p not in value.parts]
        if wrong or missing or set(value.parts) - set(self.parts):
            raise ValueError(f"{type(self).__name__}: expected one value per image ({n}) for the total and for each "
                             f"of its parts {list(self.parts)}; "
                             + (f"{', '.join(wrong)} not of shape ({n},)" if wrong else
                                f"parts returned: {sorted(value.parts)}"))
        return value


# The levers of convae's own objective that have no meaning for another one: each is refused by name with a model's
# own objective (the objective is the model's; its weights and schedules are its options).
OWN_OBJECTIVE_REFUSES = {
    "iw_train": ("--iw-train", "the IWAE bound would replace the model's objective"),
    "beta": ("--beta", "weights the ELBO's KL term, which the model's objective defines itself"),
    "free_bits": ("--free-bits", "acts on the ELBO's KL term, which the model's objective defines itself"),
    "kl_warmup": ("--kl-warmup", "ramps the ELBO's KL term, which the model's objective defines itself"),
    "kl_warmup_fraction": ("--kl-warmup-fraction", "ramps the ELBO's KL term, which the model's objective defines "
                                                   "itself"),
}


def refused_with_objective(config) -> tuple[str, str] | None:
    """The first setting of ``config`` (a ``TrainConfig``) that a model's own objective cannot take: (flag, why)."""
    defaults = {"iw_train": 1, "beta": 1.0, "free_bits": 0.0, "kl_warmup": 0, "kl_warmup_fraction": None}
    for key, (flag, why) in OWN_OBJECTIVE_REFUSES.items():
        if getattr(config, key) != defaults[key]:
            return flag, why
    return None


__all__ = ["ObjectiveValue", "TrainingObjective", "refused_with_objective"]
