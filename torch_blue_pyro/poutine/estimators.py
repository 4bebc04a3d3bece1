r"""Gradient estimators as effect handlers: local reparameterization and Flipout.

Inside ``with local_reparameterization():`` or ``with flipout():`` the Linear and
convolution layers (``VILinear``, ``VIConv1d/2d/3d``) compute their outputs with
that estimator instead of plain weight sampling, in both modes. Write
:math:`\star` for the layer's operation (the matrix product :math:`x W^\top` or
the convolution, with its stride, padding, dilation and groups).

* **torch_blue mode** (``model(x, samples=S)``): the layer uses its own Gaussian
  variational parameters. Local reparameterization (Kingma et al., 2015) samples
  each output element from its marginal
  :math:`\mathcal N(x \star \mu + \mu_b,\ x^2 \star \sigma^2 + \sigma_b^2)`
  directly, so no weight is drawn; the KL term of the output's ``log_probs`` is
  then the closed-form :math:`\mathrm{KL}(q\,\|\,p)` (the log prior column holds
  :math:`-\mathrm{KL}`, the log variational column 0), which requires a
  ``MeanFieldNormal`` prior. For a Linear layer the expected loss is unchanged;
  for a convolution the estimator also drops the correlation between the
  positions of an example, which share the weight, and is an approximation (see
  :func:`~torch_blue_pyro.functional.conv_local_reparameterization`).
  Flipout (Wen et al., 2018) draws one weight perturbation
  :math:`\Delta_s = w_s - \mu` per sample and decorrelates the examples of a batch
  with random signs, :math:`z = x \star \mu + ((x \circ r) \star \Delta_s) \circ c
  + b_s`: per feature for a Linear layer, per channel (shared by the positions)
  for a convolution, so that every example sees one weight distributed as the
  drawn one. Its log-probs are those of the drawn weights.
* **Pyro mode** (SVI with ``model.guide``): the guide's draws carry their Gaussian's
  location and scale; the layers use them as above. The ELBO still scores the drawn
  weights, which keeps it unbiased. The handler marks the draws of any guide that
  samples a weight site from ``Normal(loc, scale).to_event(...)`` the same way,
  ``AutoNormal``'s included (its site is a ``Delta`` at the identity transform of
  that draw); other guides' draws (``AutoDiagonalNormal``, low-rank, flows) are not
  marked, and the layers fall back to the plain estimator.

A layer also falls back to plain sampling where its variational distribution is
not a ``MeanFieldNormal`` and under local reparameterization in torch_blue mode
where its prior is not one. Pyro's vectorized particles are served as torch_blue's
sample dimension. The layers' side is
:func:`torch_blue_pyro.vi.estimated.estimated_forward`.

The handlers are :class:`~torch_blue_pyro.poutine.TransparentMessenger` s: they
keep a model in its mode. Which estimator is active is kept per thread.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, ClassVar

import torch
from pyro.distributions import Delta
from torch import Tensor
from torch.distributions import Independent, Normal

from .._pyro_compat import PYRO_STACK
from ..sites import NormalWeightPosterior
from .runtime import TransparentMessenger

#: ``infer`` key with which ``model.guide`` marks its Gaussian draws.
GAUSSIAN_DRAW = "torch_blue_pyro_gaussian"
_MemoryKey = tuple[int, torch.Size]
# The attribute of a drawn tensor that holds its Gaussian's (location, scale).
_GAUSSIAN_MARK = "_torch_blue_pyro_gaussian"


class _ActiveEstimators(threading.local):
    def __init__(self) -> None:
        self.stack: list[EstimatorMessenger] = []


_ACTIVE = _ActiveEstimators()


class EstimatorMessenger(TransparentMessenger):
    """Base class of the estimator handlers; ``kind`` names the estimator."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        # Marked draws by (data pointer, shape): a weak reference and their Gaussian.
        self._drawn: dict[
            _MemoryKey, tuple[weakref.ref[Tensor], tuple[Tensor, Tensor]]
        ] = {}

    def __enter__(self) -> EstimatorMessenger:
        _ACTIVE.stack.append(self)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _ACTIVE.stack.remove(self)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        # Seen last (no Pyro handler outside this one), a latent site still without
        # a value is about to be drawn from its own distribution (an autoguide's,
        # say); where that is a Gaussian over the whole site, its draw gets marked.
        if (
            msg["value"] is not None
            or msg["is_observed"]
            or msg["done"]
            or GAUSSIAN_DRAW in msg["infer"]
            or not self._processes_last()
        ):
            return
        gaussian = _gaussian_of_distribution(msg["fn"])
        if gaussian is not None:
            msg["infer"] = {**msg["infer"], GAUSSIAN_DRAW: gaussian}

    def _processes_last(self) -> bool:
        """Whether no handler outside this one could still give a site its value."""
        outer = PYRO_STACK[: PYRO_STACK.index(self)]
        return all(isinstance(frame, TransparentMessenger) for frame in outer)

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        value = msg["value"]
        if not isinstance(value, Tensor):
            return
        key = (value.data_ptr(), value.shape)
        gaussian = msg["infer"].get(GAUSSIAN_DRAW)
        if gaussian is None and isinstance(msg["fn"], Delta):
            # An autoguide's site is a Delta at a transform of its Gaussian draw (the
            # identity for a real-valued weight): the same memory, a new tensor.
            gaussian = self._gaussian_of_memory(key)
        if gaussian is not None:
            setattr(value, _GAUSSIAN_MARK, gaussian)
            self._remember(key, value, gaussian)

    def _remember(
        self, key: _MemoryKey, value: Tensor, gaussian: tuple[Tensor, Tensor]
    ) -> None:
        """Keep the Gaussian of a marked draw findable by its memory while alive."""
        if len(self._drawn) > 1024:
            self._drawn = {k: v for k, v in self._drawn.items() if v[0]() is not None}
        self._drawn[key] = (weakref.ref(value), gaussian)

    def _gaussian_of_memory(self, key: _MemoryKey) -> tuple[Tensor, Tensor] | None:
        """The Gaussian of a live marked draw with this memory and shape, if any."""
        found = self._drawn.get(key)
        if found is None or found[0]() is None:
            return None
        return found[1]


def _gaussian_of_distribution(fn: object) -> tuple[Tensor, Tensor] | None:
    """``(loc, scale)`` of the site's event shape if ``fn`` is a normal over the site.

    ``Normal(loc, scale).to_event(...)`` (as autoguides such as ``AutoNormal`` draw)
    and :class:`~torch_blue_pyro.sites.NormalWeightPosterior` qualify, also expanded
    to batch dimensions (Pyro's particle plates) as long as all batch entries share
    one location and scale.
    """
    if isinstance(fn, NormalWeightPosterior):
        return fn.loc, fn.scale
    if not isinstance(fn, Independent) or not isinstance(fn.base_dist, Normal):
        return None
    event_shape = fn.event_shape
    if len(fn.base_dist.batch_shape) != len(fn.batch_shape) + len(event_shape):
        return None
    shared = []
    for parameter in (fn.base_dist.loc, fn.base_dist.scale):
        parameter = parameter.expand(fn.batch_shape + event_shape)
        leading = parameter.dim() - len(event_shape)
        if any(parameter.stride(dim) != 0 for dim in range(leading)):
            return None
        shared.append(parameter[(0,) * leading])
    return shared[0], shared[1]


class LocalReparameterizationMessenger(EstimatorMessenger):
    """Sample pre-activations from their Gaussian instead of weights."""

    kind = "local_reparameterization"


class FlipoutMessenger(EstimatorMessenger):
    """Share one weight perturbation per sample, decorrelated by random signs."""

    kind = "flipout"


def local_reparameterization() -> LocalReparameterizationMessenger:
    r"""Handler: Linear and convolution layers use the local reparameterization trick.

    Each output element is drawn from
    :math:`\mathcal N(x \star \mu + \mu_b,\ x^2 \star \sigma^2 + \sigma_b^2)` (see
    :func:`~torch_blue_pyro.functional.linear_local_reparameterization` and
    :func:`~torch_blue_pyro.functional.conv_local_reparameterization`), and in
    torch_blue mode the KL term is the closed form.

    Returns
    -------
    LocalReparameterizationMessenger
        Use as a context manager.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> model = vi.VISequential(vi.VIConv1d(2, 4, 3), torch.nn.ReLU())
    >>> with local_reparameterization():
    ...     out = model(torch.randn(8, 2, 10), samples=5)
    >>> out.shape
    torch.Size([5, 8, 4, 8])
    """
    return LocalReparameterizationMessenger()


def flipout() -> FlipoutMessenger:
    r"""Handler: Linear and convolution layers use Flipout.

    One perturbation :math:`\Delta` of the weight mean is drawn per sample and
    flipped by random signs per example (per input and output channel of a
    convolution, shared by the positions); see
    :func:`~torch_blue_pyro.functional.linear_flipout` and
    :func:`~torch_blue_pyro.functional.conv_flipout`.

    Returns
    -------
    FlipoutMessenger
        Use as a context manager.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> layer = vi.VIConv2d(3, 8, 3, padding="same")
    >>> with flipout():
    ...     out = layer(torch.randn(16, 3, 12, 12), samples=4)
    >>> out.shape, out.log_probs.shape
    (torch.Size([4, 16, 8, 12, 12]), torch.Size([4, 2]))
    """
    return FlipoutMessenger()


def active_estimator() -> str | None:
    """The kind of the innermost estimator handler of this thread, or ``None``."""
    return _ACTIVE.stack[-1].kind if _ACTIVE.stack else None


def gaussian_of(value: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """The (location, scale) that ``model.guide`` drew ``value`` from, if marked."""
    return getattr(value, _GAUSSIAN_MARK, None)


def carry_gaussian(source: Tensor, target: Tensor) -> Tensor:
    """``target`` (a reshaped view of the draw ``source``) marked as ``source`` is.

    Parameters
    ----------
    source: Tensor
        A value that ``model.guide`` drew, possibly marked with its Gaussian.
    target: Tensor
        A tensor derived from it (the layers see the particles' draws reshaped).

    Returns
    -------
    Tensor
        ``target``.
    """
    gaussian = gaussian_of(source)
    if gaussian is not None:
        setattr(target, _GAUSSIAN_MARK, gaussian)
    return target
