"""The forward context: everything a forward pass of a Bayesian network reads.

A forward pass needs to know more than its inputs: how many weight samples the
tensors carry, which outermost call it belongs to, where the log-probabilities of
the draws go, which gradient estimator is active, and which values stand in for the
sample sites' draws. All of it is one :class:`ForwardContext`, an immutable object
held per thread. Whoever changes it (the outermost call, the per-sample forward,
the handlers :class:`~torch_blue_pyro.poutine.VariationalMessenger`,
:func:`~torch_blue_pyro.poutine.flipout` and
:func:`~torch_blue_pyro.poutine.local_reparameterization`) installs a modified copy
with :func:`swap_context` and restores the previous one when done; layers and
helpers read it with :func:`current_context`. There is no other mutable state.

It is held per thread, not on Pyro's handler stack, which all threads share: a
handler entered in one thread changes nothing in another.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "Estimator",
    "ForwardContext",
    "LogProbRecorder",
    "SampleStatistics",
    "SampledCall",
    "current_context",
    "swap_context",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _no_entries() -> Mapping[str, Any]:
    """The read-only empty mapping (one for all contexts)."""
    return _EMPTY


class SampleStatistics(Protocol):
    """Per-sample running statistics of a call's normalization layers.

    ``torch_blue_pyro.vi.normalization.RunningStatistics`` is the one
    implementation; the context only carries it.
    """

    def region(self, subtree: nn.Module) -> Any:
        """The statistics of the normalization layers in ``subtree``, if any."""
        ...


class LogProbRecorder(Protocol):
    """Where the log-probabilities of a forward pass's draws go.

    :class:`~torch_blue_pyro.poutine.VariationalMessenger` is the implementation.
    """

    def record(self, log_prior: Tensor, log_variational: Tensor) -> None:
        """Add terms that a layer computed itself (a closed-form KL, say)."""
        ...


class Estimator(Protocol):
    """A gradient estimator handler, as the layers see it.

    :class:`~torch_blue_pyro.poutine.EstimatorMessenger` is the implementation.
    """

    kind: str

    def gaussian_of(self, name: str, value: Tensor) -> tuple[Tensor, Tensor] | None:
        """The ``(loc, scale)`` the guide drew ``value`` from at site ``name``."""
        ...

    def process(self, operation: Any, context: ForwardContext) -> Tensor | None:
        """The output of a layer's random affine operation, or ``None`` (default)."""
        ...


@dataclasses.dataclass(frozen=True)
class SampledCall:
    """The outermost call in progress that evaluates ``S`` stacked samples.

    Attributes
    ----------
    num_samples: int
        ``S``.
    outermost: nn.Module
        The module that was called; errors name modules by their path in it.
    statistics: SampleStatistics or None
        The per-sample running statistics of its normalization layers, if any are
        updated in this call.
    execution: str
        ``"stacked"`` (one pass on all samples) or ``"loop"`` (one pass per
        sample), as the outermost module's ``sample_execution`` resolved.
    """

    num_samples: int
    outermost: nn.Module
    statistics: SampleStatistics | None
    execution: str = "stacked"


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    """What a forward pass reads besides its inputs; replaced, never changed.

    Attributes
    ----------
    in_call: bool
        Whether a VIModule's call is in progress (the next call is a nested one).
    pyro_mode: bool
        Whether that call runs as a Pyro model (a Pyro handler was active).
    num_samples: int or None
        ``S`` while tensors carry the leading sample dimension (torch_blue's samples
        or Pyro's vectorized particles); ``None`` otherwise, also inside the
        per-sample forward of code written for one sample.
    call: SampledCall or None
        The outermost call evaluating stacked samples, while it runs (also inside
        its per-sample forwards): its module, execution path and normalization
        statistics.
    draws: Mapping[str, Tensor]
        Values that stand in for sample sites' draws, by site name: one sample's
        weights in a per-sample forward, the particles' weights reshaped to the
        sample dimension, one draw of a nested module called directly.
    gaussians: Mapping[str, tuple[Tensor, Tensor]]
        In Pyro mode under an estimator handler, the ``(loc, scale)`` of the
        Gaussian that the guide drew each site from, by site name (see
        :meth:`~torch_blue_pyro.poutine.EstimatorMessenger.gaussian_of`).
    sampler: LogProbRecorder or None
        The innermost handler drawing variational samples, which accumulates their
        log-probabilities.
    estimator: Estimator or None
        The innermost gradient estimator handler of this thread.
    """

    in_call: bool = False
    pyro_mode: bool = False
    num_samples: int | None = None
    call: SampledCall | None = None
    draws: Mapping[str, Tensor] = dataclasses.field(default_factory=_no_entries)
    gaussians: Mapping[str, tuple[Tensor, Tensor]] = dataclasses.field(
        default_factory=_no_entries
    )
    sampler: LogProbRecorder | None = None
    estimator: Estimator | None = None

    def replace(self, **changes: Any) -> ForwardContext:
        """A copy with ``changes`` applied (see :func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


class _Holder(threading.local):
    context: ForwardContext = ForwardContext()


_HOLDER = _Holder()


def current_context() -> ForwardContext:
    """The forward context of this thread (a default one outside every call)."""
    return _HOLDER.context


def _write(context: ForwardContext) -> ForwardContext:
    previous = _HOLDER.context
    _HOLDER.context = context
    return previous


# Dynamo defers writes to Python objects until a graph ends, so a thread-local's
# attribute written and read back within one traced frame would be read stale: under
# torch.compile the context is written outside the graphs (a graph break).
_write_outside_graphs = torch.compiler.disable(_write)


def swap_context(context: ForwardContext) -> ForwardContext:
    """Install ``context`` for this thread; return the one it replaces.

    Restore the returned context when done (in a ``finally``), so that contexts
    nest like the calls and handlers that install them.

    Parameters
    ----------
    context: ForwardContext
        The new context, usually ``current_context().replace(...)``.

    Returns
    -------
    ForwardContext
        The previous context.
    """
    if torch.compiler.is_compiling():
        return _write_outside_graphs(context)
    return _write(context)
