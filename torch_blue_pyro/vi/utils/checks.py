"""Argument checks shared by the layers and losses, with errors naming the argument."""

from __future__ import annotations

import numbers

from torch import Tensor

from ...amp import autocast_compatible
from .errors import UnsupportedDistributionError


def positive_int(value: object, argument: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise.

    Parameters
    ----------
    value: object
        The value to check; ``bool`` s are rejected.
    argument: str
        The argument's name, for the error message.

    Returns
    -------
    int
        ``value`` as an int.

    Raises
    ------
    ValueError
        If ``value`` is not a positive integer, e.g. ``"samples must be a positive
        int, got 0"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def check_input_matches(
    layer: str, argument: str, input_: Tensor, parameter: Tensor
) -> None:
    """Check that an input has the dtype and device of the layer's parameters.

    Under ``torch.autocast`` an input in the autocast dtype (or ``float32``) is
    accepted too (see :func:`~torch_blue_pyro.amp.autocast_compatible`).

    Parameters
    ----------
    layer: str
        The layer's name, for the message.
    argument: str
        The input's name (``"input"``, ``"query"``, ...).
    input_: Tensor
        The input.
    parameter: Tensor
        One of the layer's parameters.

    Raises
    ------
    TypeError
        If the dtypes differ (and autocast does not reconcile them).
    ValueError
        If the devices differ.
    """
    if not autocast_compatible(input_, parameter):
        raise TypeError(
            f"{layer} expects {argument} of dtype {parameter.dtype} (the dtype of its "
            f"parameters), got {input_.dtype}"
        )
    if input_.device != parameter.device:
        raise ValueError(
            f"{layer} expects {argument} on device {parameter.device} (the device of "
            f"its parameters), got {input_.device}"
        )


def distribution_instance(value: object, argument: str) -> None:
    """Reject a distribution class passed where an instance is expected.

    Parameters
    ----------
    value: object
        The value given for ``argument``.
    argument: str
        The argument's name.

    Raises
    ------
    UnsupportedDistributionError
        If ``value`` is a class.
    """
    if isinstance(value, type):
        raise UnsupportedDistributionError(
            f"{argument} must be a distribution instance, got the class "
            f"{value.__name__}; pass {value.__name__}()"
        )
