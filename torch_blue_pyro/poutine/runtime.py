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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple

from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import effectful
from torch import Tensor

from .._pyro_compat import PREDICTIVE_PARTICLE_PLATE, PYRO_STACK, name_parameter
from .context import ForwardContext, current_context, swap_context

#: Names of the plates that stack particles rather than data: those of
#: ``Trace_ELBO(vectorize_particles=True)`` and of ``Predictive(..., parallel=True)``.
PARTICLE_PLATES: frozenset[str] = frozenset(
    {"num_particles_vectorized", PREDICTIVE_PARTICLE_PLATE}
)


class TransparentMessenger(Messenger):
    """Base class of this library's handlers, which keep a model in its mode.

    A model called under a transparent messenger only keeps torch_blue's autosampling
    if no other (Pyro) handler is active. A handler that the layers consult names
    its field of the :class:`~torch_blue_pyro.poutine.context.ForwardContext` in
    ``context_field``: while it is active (in the thread that entered it), the
    context holds it there.
    """

    context_field: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._replaced_contexts: list[ForwardContext] = []

    def __enter__(self) -> TransparentMessenger:
        super().__enter__()
        if self.context_field is not None:
            installed = current_context().replace(**{self.context_field: self})
            self._replaced_contexts.append(swap_context(installed))
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self.context_field is not None:
                swap_context(self._replaced_contexts.pop())


def in_pyro_inference() -> bool:
    """Whether a Pyro handler other than this library's transparent ones is active."""
    return any(not isinstance(frame, TransparentMessenger) for frame in PYRO_STACK)


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
    name_parameter(value, name)
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
        for index, frame in enumerate(PYRO_STACK)
        if isinstance(frame, PlateMessenger) and frame.name not in PARTICLE_PLATES
    ]
    particles = [
        frame.size
        for frame in PYRO_STACK
        if isinstance(frame, PlateMessenger) and frame.name in PARTICLE_PLATES
    ]
    for index, _ in reversed(hidden):
        del PYRO_STACK[index]
    try:
        yield math.prod(particles) if particles else None
    finally:
        for index, frame in hidden:
            PYRO_STACK.insert(index, frame)


class _Plate(NamedTuple):
    name: str
    dim: int
    size: int


def _active_plates() -> tuple[list[_Plate], list[_Plate]]:
    """The particle plates and the other plates on the stack, outermost first."""
    particle: list[_Plate] = []
    other: list[_Plate] = []
    for frame in PYRO_STACK:
        if isinstance(frame, PlateMessenger) and frame.dim is not None:
            plate = _Plate(frame.name, frame.dim, frame.subsample_size)
            (particle if frame.name in PARTICLE_PLATES else other).append(plate)
    return particle, other


def check_particles_align(inputs: Sequence[object], site_names: Sequence[str]) -> None:
    """Raise where vectorized particles would clash with the plates around a network.

    Pyro puts the particle plate at dim ``-(max_plate_nesting + 1)``, left of every
    plate of the model, and a network's output leads with the particle dimension
    (see :func:`weight_scope`). Two clashes are caught here, where Pyro would fail
    later with a shape mismatch at a site of the user's model:

    * ``max_plate_nesting`` too small: Pyro has put a plate without an explicit
      ``dim`` left of the particle plate;
    * an input with fewer batch dimensions than ``max_plate_nesting``: with ``b``
      batch dimensions, the output's particles land at dim ``-(b + 1)``. When no
      reading of the input's batch dimensions (judged by the plates' sizes) gives
      ``max_plate_nesting`` of them, and every reading lands the particles on one
      of the plates around the call, this raises.

    Parameters
    ----------
    inputs: Sequence[object]
        The network's positional inputs; the first tensor is checked.
    site_names: Sequence[str]
        The network's weight sites, for the message.

    Raises
    ------
    ValueError
        Naming the plates, their dims and sizes, and what to change.
    """
    particle, plates = _active_plates()
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    if not particle or not plates or not tensors:
        return
    particle_dim = min(plate.dim for plate in particle)
    nesting = -particle_dim - 1
    outside = [plate for plate in plates if plate.dim < particle_dim]
    if outside:
        raise ValueError(
            f"plate {outside[0].name!r} around the network with sites "
            f"{_some(site_names)} is at dim={outside[0].dim}, left of the vectorized "
            f"particle plate {particle[0].name!r} (dim={particle_dim}): "
            f"max_plate_nesting={nesting} is too small for the plates around the "
            f"network; set it to at least {len(plates)} (e.g. Trace_ELBO("
            f"max_plate_nesting={len(plates)}, vectorize_particles=True))"
        )
    shape = tuple(tensors[0].shape)
    # Numbers of leading batch dims of the input that agree with the plates' sizes.
    fitting = [
        batch_dims
        for batch_dims in range(min(len(shape), nesting) + 1)
        if all(
            -plate.dim > batch_dims or shape[batch_dims + plate.dim] in (1, plate.size)
            for plate in plates
        )
    ]
    by_dim = {plate.dim: plate for plate in plates}
    clashes = [by_dim.get(-(batch_dims + 1)) for batch_dims in fitting]
    if nesting in fitting or not fitting or None in clashes:
        return
    batch_dims, clash = fitting[-1], clashes[-1]
    assert clash is not None
    described = ", ".join(
        f"{plate.name!r} (dim={plate.dim}, size {plate.size})" for plate in plates
    )
    suggested = (1,) * (nesting - batch_dims) + shape
    raise ValueError(
        f"the network with sites {_some(site_names)} is called inside plate(s) "
        f"{described} under the vectorized particle plate {particle[0].name!r} "
        f"(dim={particle_dim}, from max_plate_nesting={nesting}). Its output leads "
        f"with the {particle[0].size} particles; the input's shape {shape} has "
        f"{batch_dims} batch dimension(s) for the plates, so the particles would "
        f"land at dim={-(batch_dims + 1)}, on plate {clash.name!r} (size "
        f"{clash.size}), instead of at dim={particle_dim}. Give the input "
        f"{nesting} batch dimension(s), one per plate dim (shape {suggested}), or "
        f"call the network outside plate {clash.name!r}"
    )


def _some(site_names: Sequence[str]) -> str:
    """The first two site names, for messages."""
    more = ", ..." if len(site_names) > 2 else ""
    return ", ".join(repr(name) for name in site_names[:2]) + more


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
        for frame in PYRO_STACK
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
