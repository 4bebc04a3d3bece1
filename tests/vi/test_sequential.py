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


def test_plain_modules_see_one_sample_as_in_torch_blue(recorder) -> None:
    model = vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        vi.VILinear(4 * 4 * 4, 3),
    )
    x = torch.randn(5, 1, 8, 8)
    with recorder:
        out = model(x, samples=3)
    assert out.shape == (3, 5, 3)
    values = recorder.values
    for s in range(3):
        hidden = torch.relu(
            nn.functional.conv2d(
                x, values["0.weight"][s], values["0.bias"][s], padding=1
            )
        )
        flat = nn.functional.max_pool2d(hidden, 2).flatten(1)
        expected = flat @ values["4.weight"][s].T + values["4.bias"][s]
        torch.testing.assert_close(out[s].as_tensor(), expected)


def test_same_cnn_shapes_as_torch_blue() -> None:
    torch_blue_vi = pytest.importorskip("torch_blue.vi")

    def cnn(v):
        return v.VISequential(
            v.VIConv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), v.VILinear(4 * 6 * 6, 2)
        )

    x = torch.randn(5, 1, 8, 8)
    assert cnn(vi)(x, samples=3).shape == cnn(torch_blue_vi)(x, samples=3).shape
