"""Mixed precision: how the library's own computations behave under ``torch.autocast``.

Under :class:`torch.autocast` the matrix products and convolutions of the layers run
in the autocast dtype (``float16`` or ``bfloat16``), as those of ``torch.nn`` do. What
the library adds on top follows three rules:

* the weight draws and their log-densities run in the parameters' dtype, and every
  sum that becomes a log-probability, a KL term or a loss is accumulated in at least
  ``float32`` (:func:`accumulation_dtype`), also for a model whose parameters are
  ``bfloat16``;
* the library's custom autograd functions run their backward pass under the
  autocast state of their forward pass, on whatever device their inputs are on
  (:func:`autocast_forward` / :func:`autocast_backward`: ``torch.amp.custom_fwd``
  and ``custom_bwd`` need the device type when the function is defined);
* a layer accepts an input in the autocast dtype (the output of an autocast matrix
  product) where it would otherwise require its parameters' dtype
  (:func:`autocast_compatible`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "accumulation_dtype",
    "autocast_backward",
    "autocast_compatible",
    "autocast_dtype",
    "autocast_forward",
    "full_precision",
    "without_autocast",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_FULL_PRECISION = (torch.float32, torch.float64)
_T = TypeVar("_T")


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matrix products in on ``device_type``, if it is on.

    Parameters
    ----------
    device_type: str
        ``"cpu"``, ``"cuda"``, ... (a device type autocast does not know, such as
        ``"meta"``, counts as off).

    Returns
    -------
    torch.dtype or None
        ``None`` when autocast is off for the device.
    """
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except RuntimeError:  # a device type without autocast
        return None


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which sums of values of ``dtype`` are accumulated.

    ``float32`` for half-precision floats (``float16``, ``bfloat16``), else
    ``dtype`` itself (``float64`` stays ``float64``).

    Parameters
    ----------
    dtype: torch.dtype
        A floating-point dtype.

    Returns
    -------
    torch.dtype
        ``torch.promote_types(dtype, torch.float32)``.
    """
    if dtype in _FULL_PRECISION:  # the common case, without a dispatcher call
        return dtype
    return torch.promote_types(dtype, torch.float32)


def full_precision(value: _T) -> _T:
    """A floating-point tensor in its accumulation dtype; anything else as it is.

    Parameters
    ----------
    value: Any
        A tensor (a ``bfloat16`` one becomes ``float32``) or any other value.

    Returns
    -------
    Any
        ``value.to(accumulation_dtype(value.dtype))`` for a floating-point tensor
        (the same tensor when its dtype is kept), else ``value``.
    """
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(accumulation_dtype(value.dtype))  # type: ignore[return-value]
    return value


def autocast_compatible(input_: Tensor, parameter: Tensor) -> bool:
    """Whether a layer with ``parameter`` may take ``input_`` as it is.

    True when both have the same dtype, or when autocast is on for the input's
    device with dtype ``A`` and both dtypes are ``float32`` or ``A`` (autocast casts
    them for the layer's products).

    Parameters
    ----------
    input_: Tensor
        The layer's input.
    parameter: Tensor
        One of the layer's parameters.

    Returns
    -------
    bool
        Whether the dtypes go together.
    """
    if input_.dtype == parameter.dtype:
        return True
    lower = autocast_dtype(input_.device.type)
    if lower is None:
        return False
    allowed = (torch.float32, lower)
    return input_.dtype in allowed and parameter.dtype in allowed


@contextmanager
def without_autocast(device_type: str) -> Iterator[None]:
    """Switch autocast off for ``device_type`` (if it is on) inside the block.

    Parameters
    ----------
    device_type: str
        The device type of the tensors computed inside.

    Yields
    ------
    None
    """
    if autocast_dtype(device_type) is None:
        yield
        return
    with torch.autocast(device_type, enabled=False):
        yield


def autocast_forward(forward: _F) -> _F:
    """Decorate a custom ``autograd.Function`` 's ``forward`` to record autocast.

    The state (on or off, and the dtype) is read for the device of the first tensor
    argument and kept on ``ctx`` for :func:`autocast_backward`.

    Parameters
    ----------
    forward: Callable
        ``forward(ctx, *args)``.

    Returns
    -------
    Callable
        The same function, recording the state.
    """

    @functools.wraps(forward)
    def recording(ctx: Any, *args: Any) -> Any:
        first = args[0] if isinstance(args[0], Tensor) else None
        if first is None:
            first = next(a for a in args if isinstance(a, Tensor))
        device_type = first.device.type
        ctx.autocast = (device_type, autocast_dtype(device_type))
        return forward(ctx, *args)

    return recording  # type: ignore[return-value]


def autocast_backward(backward: _F) -> _F:
    """Decorate the matching ``backward`` to run under the forward's autocast state.

    Parameters
    ----------
    backward: Callable
        ``backward(ctx, *grads)`` of a function whose forward is decorated with
        :func:`autocast_forward`.

    Returns
    -------
    Callable
        The same function, under autocast exactly when the forward was.
    """

    @functools.wraps(backward)
    def replaying(ctx: Any, *grads: Any) -> Any:
        device_type, dtype = ctx.autocast
        if dtype is None:
            with without_autocast(device_type):
                return backward(ctx, *grads)
        with torch.autocast(device_type, dtype=dtype):
            return backward(ctx, *grads)

    return replaying  # type: ignore[return-value]
