import pytest
import torch
from torch.nn import functional as F

from torch_blue_pyro import functional


@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sampled_linear_matches_a_loop_over_samples(
    shared_input: bool, with_bias: bool
) -> None:
    weight = torch.randn(4, 3, 5)
    bias = torch.randn(4, 3) if with_bias else None
    if shared_input:
        x = torch.randn(2, 6, 5).expand(4, 2, 6, 5)
    else:
        x = torch.randn(4, 2, 6, 5)
    out = functional.linear(x, weight, bias)
    assert out.shape == (4, 2, 6, 3)
    for s in range(4):
        expected = F.linear(x[s], weight[s], None if bias is None else bias[s])
        torch.testing.assert_close(out[s], expected)


@pytest.mark.parametrize(("in_features", "out_features"), [(7, 3), (3, 7)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sampled_linear_gradients_match_a_loop_over_samples(
    in_features: int, out_features: int, with_bias: bool
) -> None:
    # Both layouts of the weight gradient (narrow and wide outputs), in float64.
    options = {"dtype": torch.float64, "requires_grad": True}
    x = torch.randn(4, 2, 6, in_features, **options)
    weight = torch.randn(4, out_features, in_features, **options)
    bias = torch.randn(4, out_features, **options) if with_bias else None
    leaves = [t for t in (x, weight, bias) if t is not None]
    upstream = torch.randn(4, 2, 6, out_features, dtype=torch.float64)
    got = torch.autograd.grad(
        (functional.linear(x, weight, bias) * upstream).sum(), leaves
    )
    looped = torch.stack(
        [F.linear(x[s], weight[s], None if bias is None else bias[s]) for s in range(4)]
    )
    expected = torch.autograd.grad((looped * upstream).sum(), leaves)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert torch.autograd.gradcheck(functional.linear, tuple(leaves))


def test_plain_weight_is_torch_linear() -> None:
    x, weight, bias = torch.randn(2, 5), torch.randn(3, 5), torch.randn(3)
    torch.testing.assert_close(
        functional.linear(x, weight, bias), F.linear(x, weight, bias)
    )


CONVOLUTIONS = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}


def torch_conv_with_padding_mode(dims, x, weight, bias, padding, groups, mode):
    """What torch.nn.ConvNd computes, from F.pad and F.convNd."""
    conv = getattr(F, f"conv{dims}d")
    if mode == "zeros":
        return conv(x, weight, bias, padding=padding, groups=groups)
    widths = [padding] * (2 * dims)
    return conv(F.pad(x, widths, mode=mode), weight, bias, groups=groups)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("shared_input", [True, False], ids=["shared", "per-sample"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_sampled_conv_matches_a_loop_over_samples(
    dims: int, shared_input: bool, groups: int, with_bias: bool, mode: str
) -> None:
    weight = torch.randn(3, 6, 4 // groups, *(3,) * dims)
    bias = torch.randn(3, 6) if with_bias else None
    if shared_input:
        x = torch.randn(2, 4, *(5,) * dims).expand(3, 2, 4, *(5,) * dims)
    else:
        x = torch.randn(3, 2, 4, *(5,) * dims)
    out = CONVOLUTIONS[dims](x, weight, bias, 1, 1, 1, groups, mode)
    assert out.shape == (3, 2, 6, *(5,) * dims)
    for s in range(3):
        expected = torch_conv_with_padding_mode(
            dims, x[s], weight[s], None if bias is None else bias[s], 1, groups, mode
        )
        torch.testing.assert_close(out[s], expected)


@pytest.mark.parametrize("shared_input", [True, False], ids=["shared", "per-sample"])
def test_sampled_conv_of_unbatched_input(shared_input: bool) -> None:
    weight, bias = torch.randn(3, 5, 2, 3, 3), torch.randn(3, 5)
    x = torch.randn(2, 6, 6)
    x = x.expand(3, 2, 6, 6) if shared_input else torch.randn(3, 2, 6, 6)
    out = functional.conv2d(x, weight, bias, stride=2, padding="valid")
    assert out.shape == (3, 5, 2, 2)
    for s in range(3):
        expected = F.conv2d(x[s], weight[s], bias[s], stride=2)
        torch.testing.assert_close(out[s], expected)


# torch's own warning: nn.Conv2d gives it for these arguments too.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_sampled_conv_with_same_padding_and_dilation() -> None:
    weight = torch.randn(4, 3, 2, 2, 4)
    x = torch.randn(5, 2, 7, 9).expand(4, 5, 2, 7, 9)
    out = functional.conv2d(x, weight, padding="same", dilation=(2, 1))
    for s in range(4):
        expected = F.conv2d(x[s], weight[s], padding="same", dilation=(2, 1))
        torch.testing.assert_close(out[s], expected)


def test_sampled_conv_output_folds_into_the_next_conv_without_a_copy() -> None:
    x = torch.randn(2, 3, 6, 6).expand(4, 2, 3, 6, 6)
    out = functional.conv2d(x, torch.randn(4, 5, 3, 3, 3), padding=1)
    folded = out.transpose(0, 1).flatten(1, 2)
    assert folded.data_ptr() == out.data_ptr() and folded.is_contiguous()


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_plain_weight_is_torch_conv(dims: int, mode: str) -> None:
    reference = getattr(torch.nn, f"Conv{dims}d")(4, 6, 3, padding=1, padding_mode=mode)
    for x in (torch.randn(2, 4, *(5,) * dims), torch.randn(4, *(5,) * dims)):
        out = CONVOLUTIONS[dims](
            x, reference.weight, reference.bias, 1, 1, padding_mode=mode
        )
        torch.testing.assert_close(out, reference(x))


def test_sampled_conv_rejects_mismatched_samples_or_channels() -> None:
    weight = torch.randn(3, 6, 4, 3, 3)
    with pytest.raises(
        ValueError, match=r"expects input of shape \(S=3, \[N,\] C_in=4"
    ):
        functional.conv2d(torch.randn(2, 5, 4, 8, 8), weight)
    with pytest.raises(ValueError, match=r"C_in=4, <2 spatial dims>\), got \(3, 5, 2"):
        functional.conv2d(torch.randn(3, 5, 2, 8, 8), weight)
    with pytest.raises(
        ValueError, match=r"weight of 4 dimensions, or 5 with a leading"
    ):
        functional.conv2d(torch.randn(3, 5, 4, 8, 8), torch.randn(6, 4))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    ("kernel_size", "padding", "dilation"),
    [((3, 1), (0, 2), 1), ((2, 3), "same", (3, 1)), ((1, 2, 3), (2, 0, 1), 1)],
)
def test_sampled_conv_pads_each_dimension_as_torch_does(
    mode: str, kernel_size: tuple[int, ...], padding, dilation
) -> None:
    dims = len(kernel_size)
    reference = getattr(torch.nn, f"Conv{dims}d")(
        2, 3, kernel_size, padding=padding, dilation=dilation, padding_mode=mode
    )
    weight = torch.randn(4, *reference.weight.shape)
    x = torch.randn(2, 2, *range(5, 5 + dims))
    out = CONVOLUTIONS[dims](
        x.expand(4, *x.shape), weight, None, 1, padding, dilation, 1, mode
    )
    for s in range(4):
        expected = torch.func.functional_call(
            reference, {"weight": weight[s], "bias": torch.zeros(3)}, (x,)
        )
        torch.testing.assert_close(out[s], expected)
