"""Type hints shared by the torch_blue API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch

from ..distributions import Prior, VariationalDistribution


class VIkwargs(TypedDict, total=False):
    """The keyword arguments every layer with random variables accepts.

    For type hints of custom modules: ``def __init__(self, ..., **vikwargs:
    Unpack[VIkwargs])``. See :class:`~torch_blue_pyro.vi.VIModule` for their meaning.
    """

    variational_distribution: (
        VariationalDistribution | Sequence[VariationalDistribution]
    )
    prior: Prior | Sequence[Prior]
    rescale_prior: bool
    kaiming_initialization: bool
    prior_initialization: bool
    return_log_probs: bool
    device: torch.device | str | None
    dtype: torch.dtype | None
