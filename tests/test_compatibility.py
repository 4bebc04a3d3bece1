"""Every public name of torch_blue 1.1's API exists here, under the same path."""

import importlib

import pytest

torch_blue = pytest.importorskip("torch_blue")

MODULES = ["vi", "vi.distributions", "vi.utils"]


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_of_torch_blue_exists(module: str) -> None:
    theirs = importlib.import_module(f"torch_blue.{module}")
    ours = importlib.import_module(f"torch_blue_pyro.{module}")
    missing = [name for name in theirs.__all__ if not hasattr(ours, name)]
    assert not missing, f"torch_blue_pyro.{module} lacks {missing}"


@pytest.mark.parametrize(
    "path",
    [
        "vi.base",
        "vi.linear",
        "vi.sequential",
        "vi.kl_loss",
        "vi.conv",
        "vi.transformer",
        "vi.analytical_kl_loss",
        "vi.distributions.base",
        "vi.distributions.normal",
        "vi.distributions.categorical",
        "vi.distributions.quiet",
        "vi.distributions.non_bayesian",
        "vi.distributions.student_t",
        "vi.utils.convert",
        "vi.utils.common_types",
        "vi.utils.errors",
        "vi.utils.vi_return",
        "vi.utils.post_init_metaclass",
    ],
)
def test_torch_blue_module_paths_import(path: str) -> None:
    importlib.import_module(f"torch_blue.{path}")
    importlib.import_module(f"torch_blue_pyro.{path}")
