r"""Gradient estimators as effect handlers: local reparameterization and Flipout.

Inside ``with local_reparameterization():`` or ``with flipout():`` the Linear layers
compute their outputs with that estimator instead of plain weight sampling, in both
modes:

* **torch_blue mode** (``model(x, samples=S)``): the layer uses its own Gaussian
  variational parameters. Local reparameterization (Kingma et al., 2015) samples
  the pre-activations :math:`z \sim \mathcal N(x\mu^\top + \mu_b, x^2 (\sigma^2)^\top +
  \sigma_b^2)` directly, so no weight is drawn; the KL term of the output's
  ``log_probs`` is then the closed-form :math:`\mathrm{KL}(q\,\|\,p)` (the log prior
  column holds :math:`-\mathrm{KL}`, the log variational column 0), which requires
  a ``MeanFieldNormal`` prior. Flipout (Wen et al., 2018) draws one weight
  perturbation :math:`\Delta_s = w_s - \mu` per sample and decorrelates the
  examples of a batch with random signs,
  :math:`z = x\mu^\top + ((x \circ r)\Delta_s^\top) \circ c + b_s`; its log-probs are
  those of the drawn weights.
* **Pyro mode** (SVI with ``model.guide``): the guide's draws carry their Gaussian's
  location and scale; the layers use them as above. The ELBO still scores the drawn
  weights, which keeps it unbiased. Draws of other guides (autoguides) are not
  marked, and the layers fall back to the plain estimator.

The handlers are :class:`~torch_blue_pyro.poutine.TransparentMessenger` s: they
keep a model in its mode. Which estimator is active is kept per thread.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from torch import Tensor

from .runtime import TransparentMessenger

#: ``infer`` key with which ``model.guide`` marks its Gaussian draws.
GAUSSIAN_DRAW = "torch_blue_pyro_gaussian"


class _ActiveEstimators(threading.local):
    def __init__(self) -> None:
        self.stack: list[EstimatorMessenger] = []


_ACTIVE = _ActiveEstimators()


class EstimatorMessenger(TransparentMessenger):
    """Base class of the estimator handlers; ``kind`` names the estimator."""

    kind: ClassVar[str]

    def __enter__(self) -> EstimatorMessenger:
        _ACTIVE.stack.append(self)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _ACTIVE.stack.remove(self)

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        gaussian = msg["infer"].get(GAUSSIAN_DRAW)
        if gaussian is not None and isinstance(msg["value"], Tensor):
            setattr(msg["value"], "_torch_blue_pyro_gaussian", gaussian)  # noqa: B010


class LocalReparameterizationMessenger(EstimatorMessenger):
    """Sample pre-activations from their Gaussian instead of weights."""

    kind = "local_reparameterization"


class FlipoutMessenger(EstimatorMessenger):
    """Share one weight perturbation per sample, decorrelated by random signs."""

    kind = "flipout"


def local_reparameterization() -> LocalReparameterizationMessenger:
    """Handler: Linear layers use the local reparameterization trick.

    Returns
    -------
    LocalReparameterizationMessenger
        Use as a context manager.
    """
    return LocalReparameterizationMessenger()


def flipout() -> FlipoutMessenger:
    """Handler: Linear layers use Flipout.

    Returns
    -------
    FlipoutMessenger
        Use as a context manager.
    """
    return FlipoutMessenger()


def active_estimator() -> str | None:
    """The kind of the innermost estimator handler of this thread, or ``None``."""
    return _ACTIVE.stack[-1].kind if _ACTIVE.stack else None


def gaussian_of(value: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """The (location, scale) that ``model.guide`` drew ``value`` from, if marked."""
    return getattr(value, "_torch_blue_pyro_gaussian", None)
