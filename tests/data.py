"""Data shared by the test modules."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor


def shuffled_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits, pixels scaled to [0, 1], in a fixed random order.

    The order comes from a generator of its own (seed 0, on the default device), so
    the global RNG is left alone. Skips the test without scikit-learn.

    Returns
    -------
    tuple[Tensor, Tensor]
        ``(1797, 64)`` images and ``(1797,)`` labels.
    """
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(
        len(y), generator=torch.Generator(torch.get_default_device()).manual_seed(0)
    )
    return x[order], y[order]
