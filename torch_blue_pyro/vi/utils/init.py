"""Initializers of variational parameters, as torch_blue's ``vi.utils.init``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fixed_"]


def fixed_(tensor: Tensor, other: Tensor) -> Tensor:
    """Fill ``tensor`` in place with the values of ``other``, without autograd.

    Like the initializers of :mod:`torch.nn.init`; used, for instance, to start a
    variational mean at a trained weight.

    Parameters
    ----------
    tensor: Tensor
        The tensor to initialize (a parameter, say).
    other: Tensor
        The values, of the same shape.

    Returns
    -------
    Tensor
        ``tensor``.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if tensor.shape != other.shape:
        raise ValueError(
            f"fixed_ needs values of the tensor's shape {tuple(tensor.shape)}, got "
            f"{tuple(other.shape)}"
        )
    with torch.no_grad():
        return tensor.copy_(other)
