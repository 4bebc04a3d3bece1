"""Shared fixtures: a fixed seed per test and a recorder of the drawn weights."""

from __future__ import annotations

from typing import Any

import pyro
import pytest
import torch
from torch import Tensor

from torch_blue_pyro.poutine import TransparentMessenger


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()


class WeightRecorder(TransparentMessenger):
    """Records every sample site's value; transparent, so autosampling stays on."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, Tensor] = {}

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        self.values[msg["name"]] = msg["value"]


@pytest.fixture
def recorder() -> WeightRecorder:
    return WeightRecorder()
