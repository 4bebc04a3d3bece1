"""Argument checks shared by the layers and losses, with errors naming the argument."""

from __future__ import annotations

from torch import Tensor

from ..._checks import positive_int
from ...amp import autocast_compatible
from .errors import UnsupportedDistributionError

__all__ = ["check_input_matches", "distribution_instance", "positive_int"]


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
