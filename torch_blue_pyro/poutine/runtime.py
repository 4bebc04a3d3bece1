"""How this library's handlers sit among Pyro's: mode detection and local params.

A model built from this library runs in one of two modes. It is in *Pyro mode* when a
Pyro handler (``trace``, ``SVI``, ``Predictive``, ``MCMC``, ...) is active, and in
*torch_blue mode* otherwise. This library's own handlers (the estimators and recorders
in :mod:`torch_blue_pyro.poutine`) are *transparent*: they do not switch a model into
Pyro mode, so they work in both.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from pyro.distributions import constraints
from pyro.infer.predictive import _predictive_vectorize_plate_name
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _PYRO_PARAM_STORE, _PYRO_STACK, effectful
from torch import Tensor

#: Names of the plates that stack particles rather than data: those of
#: ``Trace_ELBO(vectorize_particles=True)`` and of ``Predictive(..., parallel=True)``.
PARTICLE_PLATES: frozenset[str] = frozenset(
    {"num_particles_vectorized", _predictive_vectorize_plate_name}
)


class TransparentMessenger(Messenger):
    """Base class of this library's handlers, which keep a model in its mode.

    A model called under a transparent messenger only keeps torch_blue's autosampling
    if no other (Pyro) handler is active.
    """


def in_pyro_inference() -> bool:
    """Whether a Pyro handler other than this library's transparent ones is active."""
    return any(not isinstance(frame, TransparentMessenger) for frame in _PYRO_STACK)


def _identity_param(name: str, value: Tensor, **kwargs: object) -> Tensor:
    return value


_param_effect = effectful(_identity_param, type="param")


def local_param(name: str, value: Tensor) -> Tensor:
    """Announce ``value`` as the Pyro parameter ``name`` without the global param store.

    Pyro's :func:`pyro.param` looks parameters up by name in one global store, so two
    models with the same site names would share (and clobber) parameters. A module's
    own ``nn.Parameter`` s are announced through this instead: handlers see an ordinary
    ``param`` message (so :class:`pyro.infer.SVI` and :mod:`pyro.optim` optimize the
    tensor), but the value is always the module's own tensor.

    Parameters
    ----------
    name: str
        The parameter's site name.
    value: Tensor
        The module's parameter.

    Returns
    -------
    Tensor
        ``value``, as returned by the handlers.
    """
    # pyro.optim and SVI reach the leaf tensor through ``value.unconstrained()``, and
    # pyro.optim names its per-parameter state (get_state/set_state) by the store's
    # tensor-to-name map: the name is registered there, the tensor never stored.
    value.unconstrained = weakref.ref(value)  # type: ignore[attr-defined]
    _PYRO_PARAM_STORE._param_to_name[value] = name
    return _param_effect(
        name, value, constraint=constraints.real, event_dim=None, name=name
    )


@contextmanager
def weight_scope() -> Iterator[int | None]:
    """Draw sample sites as global sites: outside every data plate, inside particles.

    A network's weights are shared by all data points, but a user may call the network
    inside ``pyro.plate("data", ...)``. Within this context the enclosing plates are
    hidden from sample sites, except the particle plates (:data:`PARTICLE_PLATES`),
    which still batch the draws. The stack is restored exactly on exit.

    Yields
    ------
    int or None
        The number of particles (the product of the particle plates' sizes), or
        ``None`` when no particle plate is active.
    """
    hidden = [
        (index, frame)
        for index, frame in enumerate(_PYRO_STACK)
        if isinstance(frame, PlateMessenger) and frame.name not in PARTICLE_PLATES
    ]
    particles = [
        frame.size
        for frame in _PYRO_STACK
        if isinstance(frame, PlateMessenger) and frame.name in PARTICLE_PLATES
    ]
    for index, _ in reversed(hidden):
        del _PYRO_STACK[index]
    try:
        yield math.prod(particles) if particles else None
    finally:
        for index, frame in hidden:
            _PYRO_STACK.insert(index, frame)


def check_replayed(site_names: Iterable[str]) -> None:
    """Raise if a replayed guide trace misses some of the given sample sites.

    Under SVI (and ``Predictive`` with a guide) the model replays the guide's trace;
    a weight site the guide does not sample would silently be drawn from its prior at
    every step and never learned.

    Parameters
    ----------
    site_names: Iterable[str]
        The model's weight sites.

    Raises
    ------
    ValueError
        Naming the sites missing from the replayed trace.
    """
    traces = [
        frame.trace
        for frame in _PYRO_STACK
        if isinstance(frame, ReplayMessenger) and frame.trace is not None
    ]
    if not traces:
        return
    missing = [name for name in site_names if not any(name in t for t in traces)]
    if missing:
        raise ValueError(
            f"the guide does not sample the weight site(s) {missing}: they would be "
            "drawn from the prior at every step and never learned; sample every "
            "weight site in the guide (net.guide does) or use an autoguide"
        )
