"""Property-based shape tests: any valid configuration gives torch.nn's shapes.

For random configurations of VILinear, VIConv1d/2d/3d and VIMultiheadAttention the
layer's output shapes are compared with those of the ``torch.nn`` module with the
same configuration, in torch_blue mode (with the leading sample dimension ``S``) and
in Pyro mode (the return value of ``pyro.poutine.trace(layer).get_trace(...)``).
In Pyro mode the layer's drawn weights are also loaded into the torch module and the
outputs compared. An invalid configuration or input gives an error that names the
argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pyro import poutine
from torch import Tensor, nn

from torch_blue_pyro import vi


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models: one thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    database=None,  # nothing written to .hypothesis/ in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
samples = st.integers(1, 3)


def traced(module: nn.Module, *args: Tensor, **kwargs: Any) -> tuple[Any, dict]:
    """Pyro mode: the return value and the drawn value of every sample site."""
    trace = poutine.trace(module).get_trace(*args, **kwargs)
    values = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    return trace.nodes["_RETURN"]["value"], values


# ------------------------------------------------------------------------ linear
@st.composite
def linear_configs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "in_features": draw(st.integers(1, 8)),
        "out_features": draw(st.integers(1, 8)),
        "bias": draw(st.booleans()),
        "batch": tuple(draw(st.lists(st.integers(1, 4), max_size=3))),
    }


@EXAMPLES
@given(config=linear_configs(), num_samples=samples)
def test_linear_matches_torch_shapes(config: dict[str, Any], num_samples: int) -> None:
    config = dict(config)  # the drawn example stays as drawn
    batch = config.pop("batch")
    layer = vi.VILinear(**config)
    reference = nn.Linear(**config)
    x = torch.randn(*batch, config["in_features"])
    expected = reference(x).shape

    assert layer(x, samples=num_samples).shape == (num_samples, *expected)

    output, weights = traced(layer, x)
    assert type(output) is Tensor and output.shape == expected
    with torch.no_grad():
        reference.weight.copy_(weights["weight"])
        if config["bias"]:
            reference.bias.copy_(weights["bias"])
    torch.testing.assert_close(output, reference(x))


@EXAMPLES
@given(config=linear_configs(), width=st.integers(1, 9), num_samples=samples)
def test_linear_rejects_a_wrong_input_width(
    config: dict[str, Any], width: int, num_samples: int
) -> None:
    assume(width != config["in_features"])
    config = dict(config)
    batch = config.pop("batch")
    layer = vi.VILinear(**config)
    x = torch.randn(*batch, width)
    message = (
        rf"VILinear\(in_features={config['in_features']}\) expects input of shape "
        rf"\(\*, {config['in_features']}\), got \({', '.join(map(str, x.shape))},?\)"
    )
    with pytest.raises(ValueError, match=message):
        layer(x, samples=num_samples)
    with pytest.raises(ValueError, match=message):
        poutine.trace(layer).get_trace(x)


# -------------------------------------------------------------------- convolution
_CONVOLUTIONS = {
    1: (vi.VIConv1d, nn.Conv1d),
    2: (vi.VIConv2d, nn.Conv2d),
    3: (vi.VIConv3d, nn.Conv3d),
}


@st.composite
def conv_configs(draw: st.DrawFn) -> dict[str, Any]:
    dims = draw(st.sampled_from([1, 2, 3]))
    small = 3 if dims == 3 else 4

    def per_dim(low: int, high: int) -> Any:
        values = draw(st.lists(st.integers(low, high), min_size=dims, max_size=dims))
        return values[0] if draw(st.booleans()) else tuple(values)

    groups = draw(st.integers(1, 3))
    stride = per_dim(1, 3)
    strided = stride != 1 and stride != (1,) * dims
    padding_choices = [per_dim(0, 2), "valid"] + ([] if strided else ["same"])
    return {
        "dims": dims,
        "in_channels": groups * draw(st.integers(1, 2)),
        "out_channels": groups * draw(st.integers(1, 2)),
        "kernel_size": per_dim(1, 3),
        "stride": stride,
        "padding": draw(st.sampled_from(padding_choices)),
        "dilation": per_dim(1, 2),
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": draw(
            st.sampled_from(["zeros", "reflect", "replicate", "circular"])
        ),
        "spatial": tuple(
            draw(st.lists(st.integers(1, small + 3), min_size=dims, max_size=dims))
        ),
        "batch": draw(st.sampled_from([(), (1,), (2,)])),
    }


@EXAMPLES
@given(config=conv_configs(), num_samples=samples)
def test_convolution_matches_torch_shapes(
    config: dict[str, Any], num_samples: int
) -> None:
    config = dict(config)  # the drawn example stays as drawn
    dims, spatial, batch = (
        config.pop("dims"),
        config.pop("spatial"),
        config.pop("batch"),
    )
    ours, theirs = _CONVOLUTIONS[dims]
    layer = ours(**config)
    reference = theirs(**config)
    x = torch.randn(*batch, config["in_channels"], *spatial)
    try:
        expected = reference(x).shape
    except RuntimeError as error:
        event("input too small for torch.nn")
        # The input is too small for the kernel or the padding: torch's error, in
        # both modes (the message names the sizes, as torch.nn's does).
        for run in (lambda: layer(x, samples=num_samples), lambda: traced(layer, x)):
            with pytest.raises(RuntimeError) as info:
                run()
            assert _first_line(info.value) == _first_line(error)
        return

    event(f"valid, padding_mode={config['padding_mode']}")
    assert layer(x, samples=num_samples).shape == (num_samples, *expected)

    output, weights = traced(layer, x)
    assert type(output) is Tensor and output.shape == expected
    with torch.no_grad():
        reference.weight.copy_(weights["weight"])
        if config["bias"]:
            reference.bias.copy_(weights["bias"])
    torch.testing.assert_close(output, reference(x), rtol=1e-4, atol=1e-5)


def _first_line(error: BaseException) -> str:
    """What the error says, without the sizes it quotes after "but got".

    The sizes can differ: for an unbatched input with a padding mode other than
    "zeros", the layer pads the input after adding the batch dimension, so
    ``F.pad`` quotes one dimension more than ``nn.Conv2d`` does.
    """
    return str(error).splitlines()[0].split(", but got")[0]


@EXAMPLES
@given(config=conv_configs(), channels=st.integers(1, 7), extra_dims=st.integers(0, 2))
def test_convolution_rejects_wrong_input_channels_or_rank(
    config: dict[str, Any], channels: int, extra_dims: int
) -> None:
    config = dict(config)
    dims, spatial = config.pop("dims"), config.pop("spatial")
    config.pop("batch")
    in_channels = config["in_channels"]
    assume(channels != in_channels or extra_dims == 2)
    layer = _CONVOLUTIONS[dims][0](**config)
    leading = (1,) * extra_dims  # 0, 1: (C, ...) or (N, C, ...); 2: one too many
    x = torch.randn(*leading, channels, *spatial)
    name = type(layer).__name__
    message = rf"{name}\(in_channels={in_channels}\) expects input of shape \(N, "
    with pytest.raises(ValueError, match=message):
        layer(x, samples=2)
    with pytest.raises(ValueError, match=message):
        traced(layer, x)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@EXAMPLES
@given(
    dims=st.sampled_from([1, 2, 3]),
    argument=st.sampled_from(
        ["groups", "kernel_size", "stride", "dilation", "padding", "padding_mode"]
    ),
    data=st.data(),
)
def test_convolution_rejects_invalid_configurations(
    dims: int, argument: str, data: st.DataObject
) -> None:
    config: dict[str, Any] = {"in_channels": 4, "out_channels": 4, "kernel_size": 3}
    bad = {
        "groups": st.sampled_from([3, 5, 0, -1]),
        "kernel_size": st.sampled_from([0, -2, (3,) * (dims + 1), 2.5]),
        "stride": st.sampled_from([0, (1,) * (dims + 1), -1]),
        "dilation": st.sampled_from([0, -1, (1,) * (dims + 1)]),
        "padding": st.sampled_from([-1, "full", (0,) * (dims + 1)]),
        "padding_mode": st.sampled_from(["mirror", "zero", ""]),
    }[argument]
    config[argument] = data.draw(bad)
    ours, theirs = _CONVOLUTIONS[dims]
    with pytest.raises(ValueError, match=rf"{argument}|in_channels must be divisible"):
        ours(**config)
    # torch.nn rejects it as well (with a message of its own, sometimes later).
    with pytest.raises((ValueError, RuntimeError, TypeError, AssertionError)):
        theirs(**config)(torch.randn(1, 4, *(8,) * dims))


# ---------------------------------------------------------------------- attention
@st.composite
def attention_configs(draw: st.DrawFn) -> dict[str, Any]:
    num_heads = draw(st.integers(1, 3))
    embed_dim = num_heads * draw(st.integers(1, 3))
    separate = draw(st.booleans())
    return {
        "embed_dim": embed_dim,
        "num_heads": num_heads,
        "bias": draw(st.booleans()),
        "add_bias_kv": draw(st.booleans()),
        "add_zero_attn": draw(st.booleans()),
        "kdim": draw(st.integers(1, 5)) if separate else None,
        "vdim": draw(st.integers(1, 5)) if separate else None,
        "batch_first": draw(st.booleans()),
    }


@EXAMPLES
@given(
    config=attention_configs(),
    batch=st.sampled_from([None, 1, 3]),
    target_len=st.integers(1, 4),
    source_len=st.integers(1, 4),
    need_weights=st.booleans(),
    average=st.booleans(),
    self_attention=st.booleans(),
    num_samples=samples,
)
def test_attention_matches_torch_shapes(
    config: dict[str, Any],
    batch: int | None,
    target_len: int,
    source_len: int,
    need_weights: bool,
    average: bool,
    self_attention: bool,
    num_samples: int,
) -> None:
    layer = vi.VIMultiheadAttention(**config)
    reference = nn.MultiheadAttention(**config)
    embed = config["embed_dim"]
    kdim, vdim = config["kdim"] or embed, config["vdim"] or embed

    def sequence(length: int, width: int) -> Tensor:
        if batch is None:
            return torch.randn(length, width)
        if config["batch_first"]:
            return torch.randn(batch, length, width)
        return torch.randn(length, batch, width)

    query = sequence(target_len, embed)
    if self_attention and kdim == vdim == embed:
        key = value = query  # the packed projection's one-matmul path
    else:
        key, value = sequence(source_len, kdim), sequence(source_len, vdim)
    options = {"need_weights": need_weights, "average_attn_weights": average}
    expected = [
        None if t is None else t.shape for t in reference(query, key, value, **options)
    ]

    output, weights = layer(query, key, value, samples=num_samples, **options)
    assert output.shape == (num_samples, *expected[0])
    if expected[1] is None:
        assert weights is None
    else:
        assert weights.shape == (num_samples, *expected[1])

    (output, weights), _ = traced(layer, query, key, value, **options)
    assert type(output) is Tensor and output.shape == expected[0]
    assert (weights is None) == (expected[1] is None)
    if weights is not None:
        assert weights.shape == expected[1]


@EXAMPLES
@given(
    config=attention_configs(),
    argument=st.sampled_from(["query", "key", "value"]),
    wrong=st.integers(1, 10),
)
def test_attention_rejects_a_wrong_feature_size(
    config: dict[str, Any], argument: str, wrong: int
) -> None:
    embed = config["embed_dim"]
    sizes = {
        "query": embed,
        "key": config["kdim"] or embed,
        "value": config["vdim"] or embed,
    }
    assume(wrong != sizes[argument])
    sizes[argument] = wrong
    layer = vi.VIMultiheadAttention(**config)
    inputs = [torch.randn(2, 3, sizes[name]) for name in ("query", "key", "value")]
    message = (
        rf"VIMultiheadAttention\(embed_dim={embed}\) expects {argument} of shape "
        rf".*, got \(2, 3, {wrong}\)"
    )
    with pytest.raises(ValueError, match=message):
        layer(*inputs, samples=2)
    with pytest.raises(ValueError, match=message):
        traced(layer, *inputs)


@EXAMPLES
@given(embed_dim=st.integers(1, 12), num_heads=st.integers(1, 12))
def test_attention_rejects_heads_that_do_not_divide_the_embedding(
    embed_dim: int, num_heads: int
) -> None:
    assume(embed_dim % num_heads)
    message = (
        f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
        f"num_heads={num_heads}"
    )
    with pytest.raises(AssertionError, match=message):
        vi.VIMultiheadAttention(embed_dim, num_heads)
    with pytest.raises(AssertionError):  # as torch.nn
        nn.MultiheadAttention(embed_dim, num_heads)
