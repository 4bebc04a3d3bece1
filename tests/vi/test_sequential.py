import pytest
import torch
from torch import nn

from torch_blue_pyro import vi


def test_mixes_bayesian_and_plain_modules() -> None:
    model = vi.VISequential(
        vi.VILinear(4, 8), nn.ReLU(), nn.Linear(8, 8), vi.VILinear(8, 2)
    )
    assert model(torch.randn(3, 4), samples=5).shape == (5, 3, 2)
    assert model[2].weight.shape == (8, 8)
    assert len(model) == 4


def test_return_log_probs_must_agree() -> None:
    with pytest.raises(ValueError, match="return_log_probs must be equal"):
        vi.VISequential(vi.VILinear(2, 2), vi.VILinear(2, 2, return_log_probs=False))


def test_non_modules_are_rejected() -> None:
    with pytest.raises(TypeError, match="VISequential takes modules, got int"):
        vi.VISequential(vi.VILinear(2, 2), 3)


def test_residual_connection_adds_the_input(recorder) -> None:
    block = vi.VIResidualConnection(vi.VILinear(4, 4), nn.Tanh())
    x = torch.randn(3, 4)
    with recorder:
        out = block(x, samples=2)
    weight, bias = recorder.values["0.weight"], recorder.values["0.bias"]
    for s in range(2):
        expected = torch.tanh(x @ weight[s].T + bias[s]) + x
        torch.testing.assert_close(out[s].as_tensor(), expected)


def test_residual_connection_shape_mismatch() -> None:
    block = vi.VIResidualConnection(vi.VILinear(4, 3))
    with pytest.raises(RuntimeError, match=r"Output shape .* must match input shape"):
        block(torch.randn(2, 4), samples=2)
