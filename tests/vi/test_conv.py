"""VIConv1d/2d/3d against torch's convolutions, in torch_blue mode and Pyro mode."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from torch import Tensor, nn
from torch.func import functional_call

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical

VI_CONV = {1: vi.VIConv1d, 2: vi.VIConv2d, 3: vi.VIConv3d}
TORCH_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}

# torch's arguments, covering every one of them (in_channels=4, out_channels=6).
CONFIGS: list[dict[str, Any]] = [
    {"kernel_size": 3},
    {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
    {"kernel_size": 2, "padding": "same", "dilation": 3, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": "valid", "groups": 2, "padding_mode": "circular"},
    {"kernel_size": 3, "padding": 2, "stride": 2, "padding_mode": "replicate"},
    {"kernel_size": 1, "groups": 2, "padding": 1, "padding_mode": "circular"},
]
CONFIG_IDS = [
    "k3",
    "stride2-pad1-nobias",
    "same-asymmetric-dilation3-reflect",
    "valid-groups2-circular",
    "pad2-stride2-replicate",
    "k1-groups2-circular",
]


def torch_conv(dims: int, **kwargs: Any) -> nn.Module:
    return TORCH_CONV[dims](4, 6, **kwargs)


def torch_output(
    reference: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None
) -> Tensor:
    """torch's ConvNd (padding modes included) with the given weight and bias."""
    parameters = {"weight": weight}
    if bias is not None:
        parameters["bias"] = bias
    return functional_call(reference, parameters, (x,))


def image(dims: int, *batch: int, channels: int = 4, size: int = 7) -> Tensor:
    return torch.randn(*batch, channels, *(size,) * dims)


@st.composite
def conv_arguments(draw: st.DrawFn) -> tuple[int, dict[str, Any], tuple[int, ...]]:
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 4]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding: Any = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.integers(0, 2),
            st.tuples(*(st.integers(0, 2) for _ in range(dims))),
        )
    )
    stride = 1 if padding == "same" else draw(st.integers(1, 2))
    kwargs = {
        "kernel_size": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": draw(
            st.sampled_from(["zeros", "reflect", "replicate", "circular"])
        ),
    }
    # Big enough for every kernel, and for reflect padding (< the input size).
    spatial = tuple(draw(st.integers(5, 7)) for _ in range(dims))
    batch = draw(st.sampled_from([(), (3,)]))
    return dims, kwargs, (*batch, 4, *spatial)


# torch's own warning: nn.Conv2d gives it for these arguments too.
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@settings(max_examples=60, deadline=None)
@given(arguments=conv_arguments(), samples=st.integers(1, 3))
def test_output_shape_is_torch_conv_shape_with_sample_dimension(
    arguments: tuple[int, dict[str, Any], tuple[int, ...]], samples: int
) -> None:
    dims, kwargs, input_shape = arguments
    x = torch.randn(input_shape)
    out = VI_CONV[dims](4, 8, **kwargs)(x, samples=samples)
    expected = TORCH_CONV[dims](4, 8, **kwargs)(x).shape
    assert out.shape == (samples, *expected)
    assert out.log_probs.shape == (samples, 2)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("batch", [(2,), ()], ids=["batched", "unbatched"])
def test_each_sample_is_torch_conv_with_its_recorded_weights(
    recorder, dims: int, kwargs: dict[str, Any], batch: tuple[int, ...]
) -> None:
    layer = VI_CONV[dims](4, 6, **kwargs)
    x = image(dims, *batch)
    with recorder:
        out = layer(x, samples=3)
    weight, bias = recorder.values["weight"], recorder.values.get("bias")
    assert weight.shape == (3, *layer._weight_mean.shape)
    reference = torch_conv(dims, **kwargs)
    for s in range(3):
        expected = torch_output(
            reference, x, weight[s], None if bias is None else bias[s]
        )
        torch.testing.assert_close(out[s].as_tensor(), expected)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kwargs", CONFIGS[:4], ids=CONFIG_IDS[:4])
def test_inputs_with_their_own_samples_are_convolved_per_sample(
    recorder, dims: int, kwargs: dict[str, Any]
) -> None:
    layer = VI_CONV[dims](4, 6, **kwargs)
    x = image(dims, 3, 2)
    with recorder:
        out = layer(x, sampled_input=True)
    weight, bias = recorder.values["weight"], recorder.values.get("bias")
    reference = torch_conv(dims, **kwargs)
    for s in range(3):
        expected = torch_output(
            reference, x[s], weight[s], None if bias is None else bias[s]
        )
        torch.testing.assert_close(out[s].as_tensor(), expected)


def test_stacked_convolutions_match_torch_per_sample(recorder) -> None:
    net = vi.VISequential(
        vi.VIConv2d(3, 5, 3, padding=1),
        nn.ReLU(),
        vi.VIConv2d(5, 4, 3, groups=1, padding="same", padding_mode="reflect"),
        nn.Tanh(),
        vi.VIConv2d(4, 2, 2, stride=2, groups=2),
    )
    x = torch.randn(6, 3, 8, 8)
    with recorder:
        out = net(x, samples=4)
    w = recorder.values
    for s in range(4):
        h = torch.relu(nn.functional.conv2d(x, w["0.weight"][s], w["0.bias"][s], 1, 1))
        padded = nn.functional.pad(h, [1, 1, 1, 1], mode="reflect")
        h = torch.tanh(nn.functional.conv2d(padded, w["2.weight"][s], w["2.bias"][s]))
        expected = nn.functional.conv2d(
            h, w["4.weight"][s], w["4.bias"][s], stride=2, groups=2
        )
        torch.testing.assert_close(out[s].as_tensor(), expected)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_zero_variance_gives_torch_conv_with_the_mean_weights(dims: int) -> None:
    kwargs = {"kernel_size": 3, "padding": 1, "groups": 2, "padding_mode": "reflect"}
    layer = VI_CONV[dims](4, 6, **kwargs)
    with torch.no_grad():
        layer._weight_log_std.fill_(-30.0)
        layer._bias_log_std.fill_(-30.0)
    x = image(dims, 5)
    out = layer(x, samples=3)
    expected = torch_output(
        torch_conv(dims, **kwargs), x, layer._weight_mean, layer._bias_mean
    )
    for s in range(3):
        torch.testing.assert_close(out[s].as_tensor(), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_log_probs_are_per_sample_sums_over_weight_and_bias(recorder, bias) -> None:
    layer = vi.VIConv2d(4, 6, 3, bias=bias)
    with recorder:
        out = layer(image(2, 2), samples=5)
    assert out.log_probs.shape == (5, 2)
    for s in range(5):
        expected = layer.get_log_probs(recorder.values["weight"][s], "weight")
        if bias:
            expected = expected + layer.get_log_probs(
                recorder.values["bias"][s], "bias"
            )
        torch.testing.assert_close(out.log_probs[s], expected)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("sampled_input", [False, True])
def test_gradients_reach_every_variational_parameter(
    dims: int, sampled_input: bool
) -> None:
    layer = VI_CONV[dims](4, 6, 3, padding="same", padding_mode="circular")
    if sampled_input:
        out = layer(image(dims, 3, 2, size=5), sampled_input=True)
    else:
        out = layer(image(dims, 2, size=5), samples=3)
    (out.sum() + out.log_probs.sum()).backward()
    names = [name for name, _ in layer.named_parameters()]
    assert names == ["_weight_mean", "_weight_log_std", "_bias_mean", "_bias_log_std"]
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("batch", [(2,), ()], ids=["batched", "unbatched"])
def test_pyro_trace_gives_plain_sites_and_torch_conv_output(
    dims: int, batch: tuple[int, ...]
) -> None:
    kwargs = {"kernel_size": 3, "padding": "same", "padding_mode": "replicate"}
    layer = VI_CONV[dims](4, 6, **kwargs)
    x = image(dims, *batch)
    trace = poutine.trace(layer).get_trace(x)
    sites = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    assert set(sites) == {"weight", "bias"}
    assert sites["weight"].shape == (6, 4, *(3,) * dims)
    assert sites["bias"].shape == (6,)
    output = trace.nodes["_RETURN"]["value"]
    assert type(output) is Tensor
    expected = torch_output(
        torch_conv(dims, **kwargs), x, sites["weight"], sites["bias"]
    )
    torch.testing.assert_close(output, expected)


def cnn() -> vi.VISequential:
    """conv-relu-conv-flatten-linear for 8x8 single-channel images, 10 classes."""
    return vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        vi.VIConv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        # Flatten the channels and pixels only: the sample dimension stays in front.
        nn.Flatten(start_dim=-3),
        vi.VILinear(8 * 4 * 4, 10),
    )


def test_cnn_runs_in_torch_blue_mode_and_in_pyro_mode() -> None:
    net = cnn()
    x = torch.randn(5, 1, 8, 8)
    out = net(x, samples=3)
    assert out.shape == (3, 5, 10) and out.log_probs.shape == (3, 2)
    trace = poutine.trace(net).get_trace(x)
    shapes = {
        name: tuple(site["value"].shape)
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    assert shapes == {
        "0.weight": (4, 1, 3, 3),
        "0.bias": (4,),
        "2.weight": (8, 4, 3, 3),
        "2.bias": (8,),
        "5.weight": (10, 128),
        "5.bias": (10,),
    }
    assert trace.nodes["_RETURN"]["value"].shape == (5, 10)


def test_cnn_training_reduces_the_loss() -> None:
    net = cnn()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("log_std"):
                parameter.fill_(-5.0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=32, heat=0.01)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = loss_fn(net(x, samples=4), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_custom_single_sample_module_runs_the_conv_per_sample(recorder) -> None:
    class PoolHead(vi.VIModule):
        """Written for one sample: pools with nn.functional on a 4-D batch."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = vi.VIConv2d(2, 3, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return nn.functional.max_pool2d(self.conv(x), 2).flatten(1)

    model = PoolHead()
    x = torch.randn(4, 2, 6, 6)
    with recorder:
        out = model(x, samples=3)
    assert out.shape == (3, 4, 27)
    for s in range(3):
        h = nn.functional.conv2d(
            x, recorder.values["conv.weight"][s], recorder.values["conv.bias"][s], 1, 1
        )
        expected = nn.functional.max_pool2d(h, 2).flatten(1)
        torch.testing.assert_close(out[s].as_tensor(), expected)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=CONFIG_IDS)
def test_same_initialization_attributes_and_names_as_torch_blue(
    dims: int, kwargs: dict[str, Any]
) -> None:
    torch_blue_vi = pytest.importorskip("torch_blue.vi")
    torch.manual_seed(3)
    ours = VI_CONV[dims](4, 6, **kwargs)
    torch.manual_seed(3)
    theirs = getattr(torch_blue_vi, f"VIConv{dims}d")(4, 6, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key], rtol=0, atol=0)
    for attribute in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "transposed",
        "output_padding",
        "groups",
        "padding_mode",
        "_reversed_padding_repeated_twice",
        "random_variables",
    ):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute


def test_repr_is_torchs() -> None:
    kwargs = {"padding": "same", "dilation": 2, "groups": 2, "bias": False}
    kwargs["padding_mode"] = "reflect"
    ours = repr(vi.VIConv2d(4, 6, 3, **kwargs))
    assert ours == repr(nn.Conv2d(4, 6, 3, **kwargs)).replace("Conv2d", "VIConv2d", 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"in_channels": 0}, "in_channels must be a positive int, got 0"),
        ({"out_channels": -2}, "out_channels must be a positive int, got -2"),
        ({"in_channels": 2.0}, "in_channels must be a positive int, got 2.0"),
        ({"groups": 0}, "groups must be a positive int, got 0"),
        ({"groups": 3}, "in_channels must be divisible by groups, got in_channels=4"),
        (
            {"out_channels": 6, "groups": 4},
            "out_channels must be divisible by groups, got out_channels=6",
        ),
        (
            {"kernel_size": (3, 0)},
            r"kernel_size must be a positive int or a tuple of 2 positive ints, "
            r"got \(3, 0\)",
        ),
        ({"kernel_size": (3, 3, 3)}, "kernel_size must be .* got \\(3, 3, 3\\)"),
        ({"stride": 0}, "stride must be a positive int"),
        ({"dilation": (1, True)}, "dilation must be a positive int"),
        ({"padding": -1}, "padding must be a non-negative int .* got -1"),
        ({"padding": "full"}, "padding must be 'same', 'valid', .* got 'full'"),
        (
            {"padding": "same", "stride": 2},
            r"padding='same' is not supported for strided convolutions, got "
            r"stride=\(2, 2\)",
        ),
        (
            {"padding_mode": "mirror"},
            "padding_mode must be one of 'zeros', 'reflect', 'replicate', "
            "'circular', got 'mirror'",
        ),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(
    kwargs: dict[str, Any], message: str
) -> None:
    arguments = {"in_channels": 4, "out_channels": 8, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        vi.VIConv2d(**arguments)


def test_torch_rejects_the_same_arguments_with_value_errors() -> None:
    for kwargs in (
        {"groups": 3},
        {"padding": "full"},
        {"padding": "same", "stride": 2},
        {"padding_mode": "mirror"},
    ):
        with pytest.raises(ValueError):
            nn.Conv2d(4, 8, 3, **kwargs)


@pytest.mark.parametrize(
    ("shape", "shown"),
    [((5, 3, 8, 8), r"\(5, 3, 8, 8\)"), ((8, 8), r"\(8, 8\)")],
)
def test_wrong_input_is_a_clear_error_showing_the_users_shape(
    shape: tuple[int, ...], shown: str
) -> None:
    layer = vi.VIConv2d(4, 6, 3)
    message = r"VIConv2d\(in_channels=4\) expects input of shape \(N, 4, H, W\) or "
    message += r"\(4, H, W\), got " + shown
    with pytest.raises(ValueError, match=message):
        layer(torch.randn(shape), samples=2)
    with pytest.raises(ValueError, match=message):
        poutine.trace(layer).get_trace(torch.randn(shape))


def test_non_tensor_input_is_a_type_error() -> None:
    net = vi.VISequential(vi.VIConv1d(4, 6, 3))
    with pytest.raises(TypeError, match="VIConv1d expects a tensor input, got list"):
        net[0].forward([1.0, 2.0])


def test_without_bias_the_bias_is_none() -> None:
    layer = vi.VIConv3d(4, 6, 2, bias=False)
    assert layer.random_variables == ("weight", "bias")
    assert layer.bias is None
    assert [n for n, _ in layer.named_parameters()] == [
        "_weight_mean",
        "_weight_log_std",
    ]


@pytest.mark.cpu_only
def test_dtype_and_device_arguments() -> None:
    layer = vi.VIConv1d(4, 6, 3, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    out = layer(image(1, 2).double(), samples=2)
    assert out.dtype == torch.float64 and out.log_probs.dtype == torch.float64
