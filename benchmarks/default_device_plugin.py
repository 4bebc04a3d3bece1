"""pytest plugin: run the tests with torch's default device set to a GPU.

The test suite builds its tensors and layers without a ``device`` argument, so
``torch.set_default_device`` moves all of them (inputs, parameters, buffers) to the
chosen device without touching the tests.  Used by ``benchmarks/gpu_check.sh``::

    TBP_TEST_DEVICE=cuda PYTHONPATH=benchmarks python -m pytest \
        -p default_device_plugin tests/vi

Tests that build CPU tensors on purpose (``device="cpu"`` or ``"meta"``, a
``torch.Generator()`` passed to a factory function, ``.numpy()`` on a result) fail
under it for reasons of their own: read the failures before blaming the library.
"""

from __future__ import annotations

import os

import pytest
import torch


def _device() -> str:
    return os.environ.get("TBP_TEST_DEVICE", "cuda")


def pytest_configure(config: pytest.Config) -> None:
    """Set the default device before the test modules are imported."""
    device = torch.device(_device())
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("TBP_TEST_DEVICE=cuda but CUDA is not available")
    torch.set_default_device(device)


def pytest_report_header(config: pytest.Config) -> str:
    """Name the default device in pytest's header."""
    return f"torch default device: {torch.get_default_device()} (default_device_plugin)"


@pytest.fixture(autouse=True)
def _default_device() -> None:
    """Set the device again per test: it is thread-local in torch."""
    torch.set_default_device(_device())
