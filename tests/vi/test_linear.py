import pytest
import torch
from torch.nn import functional as F

from torch_blue_pyro import vi


def test_outermost_module_adds_sample_dimension() -> None:
    layer = vi.VILinear(4, 3)
    out = layer(torch.randn(7, 4), samples=5)
    assert isinstance(out, vi.VIReturn)
    assert out.shape == (5, 7, 3)
    assert out.log_probs.shape == (5, 2)


@pytest.mark.parametrize("batch_shape", [(), (6,), (2, 6)])
def test_any_leading_batch_shape(batch_shape: tuple[int, ...]) -> None:
    layer = vi.VILinear(4, 3)
    out = layer(torch.randn(*batch_shape, 4), samples=2)
    assert out.shape == (2, *batch_shape, 3)


def test_each_sample_is_the_affine_map_with_its_own_weights(recorder) -> None:
    layer = vi.VILinear(4, 3)
    x = torch.randn(6, 4)
    with recorder:
        out = layer(x, samples=3)
    weight, bias = recorder.values["weight"], recorder.values["bias"]
    assert weight.shape == (3, 3, 4) and bias.shape == (3, 3)
    for s in range(3):
        torch.testing.assert_close(out[s], F.linear(x, weight[s], bias[s]))
    assert not torch.allclose(out[0], out[1])


def test_zero_variance_gives_the_deterministic_layer() -> None:
    layer = vi.VILinear(4, 3)
    with torch.no_grad():
        layer._weight_log_std.fill_(-30.0)
        layer._bias_log_std.fill_(-30.0)
    x = torch.randn(6, 4)
    out = layer(x, samples=4)
    expected = F.linear(x, layer._weight_mean, layer._bias_mean)
    for s in range(4):
        torch.testing.assert_close(out[s].as_tensor(), expected)


def test_without_bias() -> None:
    layer = vi.VILinear(4, 3, bias=False)
    assert layer.random_variables == ("weight", "bias")
    assert layer.bias is None
    assert [n for n, _ in layer.named_parameters()] == [
        "_weight_mean",
        "_weight_log_std",
    ]
    assert layer(torch.randn(2, 4), samples=3).shape == (3, 2, 3)


def test_same_initialization_and_names_as_torch_blue() -> None:
    torch_blue_vi = pytest.importorskip("torch_blue.vi")
    torch.manual_seed(3)
    ours = vi.VILinear(5, 3)
    torch.manual_seed(3)
    theirs = torch_blue_vi.VILinear(5, 3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key], rtol=0, atol=0)


def test_gradients_reach_every_variational_parameter() -> None:
    layer = vi.VILinear(4, 3)
    out = layer(torch.randn(5, 4), samples=3)
    (out.sum() + out.log_probs.sum()).backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_wrong_input_width_is_a_clear_error() -> None:
    layer = vi.VILinear(4, 3)
    with pytest.raises(ValueError, match=r"in_features=4.*\(\*, 4\).*\(5, 7\)"):
        layer(torch.randn(5, 7))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_sizes_are_rejected(bad) -> None:
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        vi.VILinear(bad, 3)
    with pytest.raises(ValueError, match="out_features must be a positive int"):
        vi.VILinear(3, bad)


@pytest.mark.cpu_only
def test_dtype_and_device_arguments() -> None:
    layer = vi.VILinear(4, 3, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    out = layer(torch.randn(2, 4, dtype=torch.float64), samples=2)
    assert out.dtype == torch.float64 and out.log_probs.dtype == torch.float64
