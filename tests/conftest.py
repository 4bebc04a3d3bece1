"""Shared fixtures: a fixed seed per test, a recorder of the drawn weights, and the
test device.

``python -m pytest --device cuda`` runs the tests with torch's default device set to
the GPU: the tests build their tensors and layers without a device argument, so the
default device moves all of them. Tests that build CPU data on purpose (comparisons
with numpy or scikit-learn, an explicit ``device="cpu"``) are marked ``cpu_only``
and skipped there; a test that names the CPU in an expected error message fails on
another device for that reason alone.
"""

from __future__ import annotations

from typing import Any

import pyro
import pytest
import torch
from torch import Tensor

from torch_blue_pyro.poutine import TransparentMessenger


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch default device of the tests, e.g. cuda (default: cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cpu_only: builds CPU data on purpose; skipped with --device"
    )
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda, but CUDA is not available")
    if device.type != "cpu":  # before the test modules build data at import
        torch.set_default_device(device)


def pytest_report_header(config: pytest.Config) -> str:
    return f"torch default device of the tests: {config.getoption('--device')}"


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    device = config.getoption("--device")
    if torch.device(device).type == "cpu":
        return
    skip = pytest.mark.skip(reason=f"cpu_only: builds CPU data (--device {device})")
    for item in items:
        if "cpu_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _device(request: pytest.FixtureRequest) -> None:
    """Set the default device per test: torch keeps it per thread.

    Not for the CPU: a default device, even the CPU, routes every torch call through
    a Python-level mode.
    """
    device = torch.device(request.config.getoption("--device"))
    if device.type != "cpu":
        torch.set_default_device(device)


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
