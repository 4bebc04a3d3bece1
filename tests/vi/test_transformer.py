"""Attention and transformers against torch.nn, in torch_blue mode and in Pyro mode."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pyro
import pytest
import torch
from pyro import poutine
from torch import Tensor, nn

from torch_blue_pyro import functional, vi

# torch.nn's own warnings on the reference modules (mixed bool/float masks are meant).
pytestmark = [
    pytest.mark.filterwarnings("ignore:Support for mismatched:UserWarning"),
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning"),
]

E, HEADS, N, L, L_MEMORY, FF = 8, 2, 3, 5, 6, 16
SAMPLES = 3


# ------------------------------------------------------------------ helpers
def frozen(module: vi.VIModule) -> vi.VIModule:
    """Every variational std exp(-30): each draw equals the means."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("_log_std"):
                parameter.fill_(-30.0)
    return module.eval()


def torch_state(module: nn.Module, draws: dict[str, Tensor] | None = None) -> dict:
    """The module's means (or one sample's drawn weights) under torch.nn's names."""
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("_log_std"):
            continue
        name = re.sub(r"(^|\.)_(\w+)_mean$", r"\1\2", key)
        state[name] = value if draws is None else draws.get(name, value)
    return state


def as_torch(ours: vi.VIModule, theirs: nn.Module) -> nn.Module:
    theirs.load_state_dict(torch_state(ours))
    return theirs.eval()


def pyro_forward(module: vi.VIModule, *args: Any, **kwargs: Any) -> Any:
    """Pyro mode, the weights drawn by the module's guide."""
    guide = poutine.trace(module.guide).get_trace(*args)
    return poutine.replay(module, trace=guide)(*args, **kwargs)


def assert_equals_torch(
    ours: vi.VIModule,
    theirs: nn.Module,
    args: tuple[Tensor, ...],
    kwargs: dict[str, Any] | None = None,
    pick: Callable[[Any], Any] = lambda output: output,
) -> None:
    """Every sample in torch_blue mode and the Pyro-mode output equal torch.nn's."""
    kwargs = kwargs or {}
    frozen(ours)
    expected = pick(as_torch(ours, theirs)(*args, **kwargs))
    sampled = pick(ours(*args, samples=SAMPLES, **kwargs))
    plain = pick(pyro_forward(ours, *args, **kwargs))
    assert type(plain) is Tensor
    assert sampled.shape == (SAMPLES, *expected.shape)
    for s in range(SAMPLES):
        torch.testing.assert_close(sampled[s].as_tensor(), expected)
    torch.testing.assert_close(plain, expected)


def sequence(batch_first: bool, length: int = L, width: int = E) -> Tensor:
    return (
        torch.randn(N, length, width) if batch_first else torch.randn(length, N, width)
    )


def padding(length: int) -> Tensor:
    mask = torch.zeros(N, length, dtype=torch.bool)
    mask[0, -2:] = True
    return mask


def causal(length: int = L) -> Tensor:
    return nn.Transformer.generate_square_subsequent_mask(length)


# ------------------------------------------------------------ attention
MHA_CASES = {
    "plain": ({}, {}),
    "bool attn_mask": ({}, {"attn_mask": torch.eye(L, L_MEMORY, dtype=torch.bool)}),
    "3-D float attn_mask": ({}, {"attn_mask": torch.randn(N * HEADS, L, L_MEMORY)}),
    "padding": ({}, {"key_padding_mask": padding(L_MEMORY)}),
    "both masks": (
        {},
        {
            "attn_mask": torch.eye(L, L_MEMORY, dtype=torch.bool),
            "key_padding_mask": padding(L_MEMORY),
        },
    ),
    "kdim vdim": ({"kdim": 4, "vdim": 7}, {"key_padding_mask": padding(L_MEMORY)}),
    "bias_kv zero_attn": (
        {"add_bias_kv": True, "add_zero_attn": True},
        {"attn_mask": torch.randn(L, L_MEMORY), "key_padding_mask": padding(L_MEMORY)},
    ),
    "no bias": ({"bias": False}, {}),
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", list(MHA_CASES))
def test_attention_equals_torch(case: str, batch_first: bool) -> None:
    options, masks = MHA_CASES[case]
    ours = vi.VIMultiheadAttention(E, HEADS, batch_first=batch_first, **options)
    theirs = nn.MultiheadAttention(E, HEADS, batch_first=batch_first, **options)
    query = sequence(batch_first)
    key = sequence(batch_first, L_MEMORY, options.get("kdim", E))
    value = sequence(batch_first, L_MEMORY, options.get("vdim", E))
    for index in (0, 1):  # the output and the attention weights
        assert_equals_torch(
            ours, theirs, (query, key, value), masks, lambda out, i=index: out[i]
        )


@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_with_causal_hint_equals_torch(batch_first: bool) -> None:
    ours = vi.VIMultiheadAttention(E, HEADS, batch_first=batch_first)
    theirs = nn.MultiheadAttention(E, HEADS, batch_first=batch_first)
    x = sequence(batch_first)
    masks = {"attn_mask": causal(), "is_causal": True, "need_weights": False}
    assert_equals_torch(ours, theirs, (x, x, x), masks, lambda out: out[0])


@pytest.mark.parametrize(
    "masks",
    [
        {"key_padding_mask": torch.tensor([False, False, False, True, True])},
        {"attn_mask": torch.randn(HEADS, L, L)},
    ],
)
def test_unbatched_attention_equals_torch(masks: dict[str, Tensor]) -> None:
    ours, theirs = vi.VIMultiheadAttention(E, HEADS), nn.MultiheadAttention(E, HEADS)
    x = torch.randn(L, E)
    for index in (0, 1):
        assert_equals_torch(ours, theirs, (x, x, x), masks, lambda out, i=index: out[i])


def test_attention_weights_follow_torch_and_torch_blue() -> None:
    attention = vi.VIMultiheadAttention(E, HEADS)
    x = torch.randn(N, L, E)
    output, weights = attention(x, x, x, samples=SAMPLES)
    assert isinstance(weights, vi.VIReturn) and weights.shape == (SAMPLES, N, L, L)
    torch.testing.assert_close(weights.sum(-1), torch.ones(SAMPLES, N, L))
    torch.testing.assert_close(output.log_probs, weights.log_probs)
    _, per_head = attention(x, x, x, average_attn_weights=False, samples=SAMPLES)
    assert per_head.shape == (SAMPLES, N, HEADS, L, L)
    output, none = attention(x, x, x, need_weights=False, samples=SAMPLES)
    assert none is None and output.shape == (SAMPLES, N, L, E)
    output, weights = attention(x[0], x[0], x[0], samples=SAMPLES)
    assert output.shape == (SAMPLES, L, E) and weights.shape == (SAMPLES, L, L)


def test_each_attention_sample_uses_its_recorded_weights(recorder) -> None:
    ours = vi.VIMultiheadAttention(E, HEADS, add_bias_kv=True).eval()
    theirs = nn.MultiheadAttention(E, HEADS, batch_first=True, add_bias_kv=True)
    query, memory = torch.randn(N, L, E), torch.randn(N, L_MEMORY, E)
    masks = {"key_padding_mask": padding(L_MEMORY)}
    with recorder:
        output, weights = ours(query, memory, memory, samples=SAMPLES, **masks)
    assert recorder.values["in_proj_weight"].shape == (SAMPLES, 3 * E, E)
    for s in range(SAMPLES):
        draws = {name: value[s] for name, value in recorder.values.items()}
        theirs.load_state_dict(torch_state(ours, draws))
        expected_output, expected_weights = theirs(query, memory, memory, **masks)
        torch.testing.assert_close(output[s].as_tensor(), expected_output)
        torch.testing.assert_close(weights[s].as_tensor(), expected_weights)
    assert not torch.allclose(output[0], output[1])


@pytest.mark.parametrize("need_weights", [True, False])
def test_functional_attention_computes_each_weight_sample(need_weights: bool) -> None:
    """The math for stacked weights, on per-sample inputs, against torch's."""
    torch.manual_seed(1)
    x = torch.randn(SAMPLES, N, L, E)
    in_weight = torch.randn(SAMPLES, 3 * E, E) / E**0.5
    out_weight = torch.randn(SAMPLES, E, E) / E**0.5
    in_bias, out_bias = torch.randn(SAMPLES, 3 * E), torch.randn(SAMPLES, E)
    output, weights = functional.multi_head_attention(
        x,
        x,
        x,
        HEADS,
        in_weight,
        in_bias,
        out_weight,
        out_bias,
        is_causal=True,
        need_weights=need_weights,
        average_attn_weights=False,
    )
    for s in range(SAMPLES):
        expected, expected_weights = nn.functional.multi_head_attention_forward(
            *(x[s].transpose(0, 1),) * 3,
            E,
            HEADS,
            in_weight[s],
            in_bias[s],
            None,
            None,
            False,
            0.0,
            out_weight[s],
            out_bias[s],
            attn_mask=causal(),
            need_weights=need_weights,
            average_attn_weights=False,
        )
        torch.testing.assert_close(output[s], expected.transpose(0, 1))
        if need_weights:
            torch.testing.assert_close(weights[s], expected_weights)
    assert (weights is None) == (not need_weights)


# --------------------------------------------------------------- layers
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_layer_equals_torch(batch_first: bool, norm_first: bool) -> None:
    options = {"batch_first": batch_first, "norm_first": norm_first}
    for activation in ("relu", "gelu"):
        ours = vi.VITransformerEncoderLayer(E, HEADS, FF, activation, **options)
        theirs = nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, activation, **options)
        masks = {"src_mask": causal(), "src_key_padding_mask": padding(L)}
        assert_equals_torch(ours, theirs, (sequence(batch_first),), masks)


def test_encoder_layer_with_a_callable_activation_and_no_bias() -> None:
    options = {"batch_first": True, "bias": False}
    ours = vi.VITransformerEncoderLayer(E, HEADS, FF, nn.GELU(), **options)
    theirs = nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, nn.GELU(), **options)
    assert isinstance(ours.activation, nn.GELU)
    assert_equals_torch(ours, theirs, (torch.randn(N, L, E),))


def test_each_encoder_layer_sample_uses_its_recorded_weights(recorder) -> None:
    ours = vi.VITransformerEncoderLayer(E, HEADS, FF, norm_first=True).eval()
    theirs = nn.TransformerEncoderLayer(
        E, HEADS, FF, 0.0, batch_first=True, norm_first=True
    ).eval()
    x = torch.randn(N, L, E)
    masks = {"src_mask": causal(), "src_key_padding_mask": padding(L)}
    with recorder:
        output = ours(x, samples=SAMPLES, **masks)
    assert set(recorder.values) == {
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
    }
    for s in range(SAMPLES):
        draws = {name: value[s] for name, value in recorder.values.items()}
        theirs.load_state_dict(torch_state(ours, draws))
        torch.testing.assert_close(output[s].as_tensor(), theirs(x, **masks))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_decoder_layer_equals_torch(batch_first: bool, norm_first: bool) -> None:
    ours = vi.VITransformerDecoderLayer(
        E, HEADS, FF, norm_first=norm_first, batch_first=batch_first
    )
    theirs = nn.TransformerDecoderLayer(
        E, HEADS, FF, 0.0, batch_first=batch_first, norm_first=norm_first
    )
    masks = {
        "tgt_mask": causal(),
        "tgt_is_causal": True,
        "memory_mask": torch.randn(L, L_MEMORY),
        "memory_key_padding_mask": padding(L_MEMORY),
    }
    args = (sequence(batch_first), sequence(batch_first, L_MEMORY))
    assert_equals_torch(ours, theirs, args, masks)


# ------------------------------------------------------------- stacks
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_encoder_equals_torch(batch_first: bool, norm_first: bool) -> None:
    options = {"batch_first": batch_first, "norm_first": norm_first}
    ours = vi.VITransformerEncoder(
        vi.VITransformerEncoderLayer(E, HEADS, FF, **options), 2, nn.LayerNorm(E)
    )
    theirs = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, **options),
        2,
        nn.LayerNorm(E),
        enable_nested_tensor=False,
    )
    x = sequence(batch_first)
    assert_equals_torch(ours, theirs, (x,), {"mask": causal()})  # detected causal
    masks = {"mask": causal() == float("-inf"), "src_key_padding_mask": padding(L)}
    assert_equals_torch(ours, theirs, (x,), masks)


def test_decoder_equals_torch() -> None:
    ours = vi.VITransformerDecoder(vi.VITransformerDecoderLayer(E, HEADS, FF), 2)
    theirs = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(E, HEADS, FF, 0.0, batch_first=True), 2
    )
    masks = {"tgt_mask": causal(), "tgt_key_padding_mask": padding(L)}
    args = (torch.randn(N, L, E), torch.randn(N, L_MEMORY, E))
    assert_equals_torch(ours, theirs, args, masks)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_equals_torch(batch_first: bool, norm_first: bool) -> None:
    options = {"batch_first": batch_first, "norm_first": norm_first}
    ours = vi.VITransformer(E, HEADS, 2, 1, FF, "gelu", **options)
    theirs = nn.Transformer(E, HEADS, 2, 1, FF, 0.0, "gelu", **options)
    masks = {
        "tgt_mask": causal(),
        "src_key_padding_mask": padding(L_MEMORY),
        "memory_key_padding_mask": padding(L_MEMORY),
    }
    args = (sequence(batch_first, L_MEMORY), sequence(batch_first))
    assert_equals_torch(ours, theirs, args, masks)


def test_unbatched_transformer_equals_torch() -> None:
    ours = vi.VITransformer(E, HEADS, dim_feedforward=FF)
    theirs = nn.Transformer(E, HEADS, 1, 1, FF, 0.0)
    args = (torch.randn(L_MEMORY, E), torch.randn(L, E))
    assert_equals_torch(ours, theirs, args, {"tgt_mask": causal()})


# ----------------------------------------------------------------- masks
def test_positional_masks_of_the_outermost_module_hold_for_all_samples() -> None:
    encoder = frozen(vi.VITransformerEncoder(vi.VITransformerEncoderLayer(E, 2), 2))
    x = torch.randn(N, L, E)
    by_keyword = encoder(x, mask=causal(), src_key_padding_mask=padding(L), samples=6)
    positional = encoder(x, causal(), padding(L), samples=6)
    torch.testing.assert_close(positional, by_keyword)
    # S == N * num_heads: an expanded mask is one mask, a full one is torch's 3-D
    per_head = torch.randn(N * 2, L, L)
    theirs = as_torch(
        encoder,
        nn.TransformerEncoder(
            nn.TransformerEncoderLayer(E, 2, 512, 0.0, batch_first=True),
            2,
            enable_nested_tensor=False,
        ),
    )
    torch.testing.assert_close(encoder(x, per_head, samples=6)[0], theirs(x, per_head))


def test_sampled_input_may_carry_one_mask_per_sample() -> None:
    layer = frozen(vi.VITransformerEncoderLayer(E, HEADS, FF))
    theirs = as_torch(
        layer, nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    )
    x = torch.randn(SAMPLES, N, L, E)
    masks = torch.stack([causal(), torch.zeros(L, L), causal().T])
    paddings = torch.rand(SAMPLES, N, L) < 0.3
    paddings[..., 0] = False
    output = layer(x, masks, paddings, sampled_input=True)
    for s in range(SAMPLES):
        expected = theirs(x[s], src_mask=masks[s], src_key_padding_mask=paddings[s])
        torch.testing.assert_close(output[s].as_tensor(), expected)


def test_causal_hint_without_mask_raises_like_torch() -> None:
    x = torch.randn(N, L, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        nn.MultiheadAttention(E, HEADS)(x, x, x, is_causal=True)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        vi.VIMultiheadAttention(E, HEADS)(x, x, x, is_causal=True)
    layer = vi.VITransformerEncoderLayer(E, HEADS, FF)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        vi.VITransformerEncoder(layer, 1)(x, is_causal=True)


def test_masks_of_the_wrong_shape_are_clear_errors() -> None:
    attention = vi.VIMultiheadAttention(E, HEADS)
    x = torch.randn(N, L, E)
    with pytest.raises(ValueError, match=r"attn_mask must have shape.*\(5, 5\)"):
        attention(x, x, x, attn_mask=torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape.*\(3, 5\)"):
        attention(x, x, x, key_padding_mask=torch.zeros(3, 4, dtype=torch.bool))


# -------------------------------------------------------------- training
def test_log_probs_and_gradients_reach_every_variational_parameter() -> None:
    model = vi.VITransformer(E, HEADS, 2, 1, FF, batch_first=True)
    output = model(torch.randn(N, L_MEMORY, E), torch.randn(N, L, E), samples=2)
    assert output.shape == (2, N, L, E) and output.log_probs.shape == (2, 2)
    (output.pow(2).mean() + output.log_probs.sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_dropout_acts_only_in_training_mode() -> None:
    layer = frozen(vi.VITransformerEncoderLayer(E, HEADS, FF, dropout=0.5))
    assert layer.self_attn.dropout == 0.5 and layer.dropout1.p == 0.5
    x = torch.randn(N, L, E)
    evaluated = layer(x, samples=2)
    torch.testing.assert_close(evaluated[0], evaluated[1])
    trained = layer.train()(x, samples=2)
    assert not torch.allclose(trained[0], trained[1])


# ------------------------------------------------------------- Pyro mode
def test_pyro_mode_sites_are_named_by_module_path() -> None:
    encoder = vi.VITransformerEncoder(vi.VITransformerEncoderLayer(E, HEADS, FF), 2)
    trace = poutine.trace(encoder).get_trace(torch.randn(N, L, E))
    sites = {
        name: tuple(site["value"].shape)
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    assert sites["layers.0.self_attn.out_proj.weight"] == (E, E)
    assert sites["layers.1.self_attn.in_proj_weight"] == (3 * E, E)
    assert sites["layers.1.linear2.bias"] == (E,)
    assert len(sites) == 16
    output = trace.nodes["_RETURN"]["value"]
    assert type(output) is Tensor and output.shape == (N, L, E)
    params = [n for n, site in trace.nodes.items() if site["type"] == "param"]
    assert "layers.0.norm1.weight" in params

    model = vi.VITransformer(E, HEADS, dim_feedforward=FF)
    trace = poutine.trace(model).get_trace(torch.randn(L, N, E), torch.randn(L, N, E))
    assert "decoder.layers.0.multihead_attn.out_proj.weight" in trace.nodes


def test_svi_trains_the_modules_own_parameters() -> None:
    encoder = vi.VITransformerEncoder(vi.VITransformerEncoderLayer(E, HEADS, FF), 1)
    x, y = torch.randn(N, L, E), torch.randn(N, L, E)

    def model(x: Tensor, y: Tensor) -> None:
        mean = encoder(x)
        with pyro.plate("data", N):
            pyro.sample("y", pyro.distributions.Normal(mean, 1.0).to_event(2), obs=y)

    svi = pyro.infer.SVI(
        model, encoder.guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO()
    )
    before = encoder.layers[0].linear1._weight_mean.detach().clone()
    assert torch.isfinite(torch.tensor(svi.step(x, y)))
    assert not torch.equal(encoder.layers[0].linear1._weight_mean, before)
    assert len(pyro.get_param_store()) == 0


def test_custom_single_sample_module_runs_the_layers_per_sample() -> None:
    class Custom(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = vi.VITransformerEncoderLayer(E, HEADS, FF)

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x, src_mask=causal())

    custom = frozen(Custom())
    theirs = as_torch(
        custom.layer, nn.TransformerEncoderLayer(E, HEADS, FF, 0.0, batch_first=True)
    )
    x = torch.randn(N, L, E)
    output = custom(x, samples=2)
    for s in range(2):
        torch.testing.assert_close(output[s].as_tensor(), theirs(x, src_mask=causal()))


# ------------------------------------------------------------ bad input
def test_heads_must_divide_the_embedding_like_torch() -> None:
    with pytest.raises(AssertionError, match="divisible"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(AssertionError, match=r"embed_dim=10 and num_heads=3"):
        vi.VIMultiheadAttention(10, 3)
    with pytest.raises(AssertionError, match="divisible"):
        vi.VITransformerEncoderLayer(10, 3)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        vi.VIMultiheadAttention(8, 0)


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (
            lambda: vi.VIMultiheadAttention(E, HEADS),
            (torch.randn(N, L, 7),) * 3,
            r"embed_dim=8\) expects query of shape \(N, L, 8\) or \(L, 8\), got "
            r"\(3, 5, 7\)",
        ),
        (
            lambda: vi.VIMultiheadAttention(E, HEADS, kdim=4),
            (torch.randn(N, L, E), torch.randn(N, L, 5), torch.randn(N, L, E)),
            r"expects key of shape \(N, L, 4\)",
        ),
        (
            lambda: vi.VITransformerEncoderLayer(E, HEADS, FF, norm_first=True),
            (torch.randn(N, L, 7),),
            r"d_model=8\) expects src with 8 features.*\(3, 5, 7\)",
        ),
        (
            lambda: vi.VITransformerEncoder(vi.VITransformerEncoderLayer(E, HEADS), 1),
            (torch.randn(N, L, 7),),
            r"expects src with 8 features",
        ),
        (
            lambda: vi.VITransformerDecoderLayer(E, HEADS, FF),
            (torch.randn(N, L, E), torch.randn(N, L, 9)),
            r"expects memory with 8 features",
        ),
        (
            lambda: vi.VITransformer(E, HEADS, dim_feedforward=FF),
            (torch.randn(L, N, E), torch.randn(L, N, 6)),
            r"expects tgt with 8 features",
        ),
        (
            lambda: vi.VITransformer(E, HEADS, dim_feedforward=FF),
            (torch.randn(L, N, E), torch.randn(L, N + 1, E)),
            r"src and tgt of one batch size",
        ),
    ],
)
def test_inputs_of_the_wrong_size_are_clear_value_errors(
    module: Callable[[], vi.VIModule], args: tuple[Tensor, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        module()(*args, samples=2)
    with pytest.raises(ValueError, match=message):
        poutine.trace(module()).get_trace(*args)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="activation must be 'relu', 'gelu'"):
        vi.VITransformerEncoderLayer(E, HEADS, activation="tanh")
    with pytest.raises(ValueError, match="dim_feedforward must be a positive int"):
        vi.VITransformerEncoderLayer(E, HEADS, 0)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        vi.VITransformerEncoder(vi.VITransformerEncoderLayer(E, HEADS), 0)
    with pytest.raises(TypeError, match="one variational_distribution for all"):
        vi.VITransformerEncoderLayer(
            E, HEADS, variational_distribution=[vi.distributions.MeanFieldNormal()]
        )


def test_attention_takes_one_distribution_per_torch_blue_variable() -> None:
    normal = vi.distributions.MeanFieldNormal
    priors = [normal(0.0, float(i + 1)) for i in range(9)]
    attention = vi.VIMultiheadAttention(E, HEADS, prior=priors, rescale_prior=False)
    assert attention.prior["in_proj_bias"].std == pytest.approx(6.0)
    assert attention.out_proj.prior["weight"].std == pytest.approx(5.0)
    assert attention.out_proj.prior["bias"].std == pytest.approx(7.0)


# ----------------------------------------------------- torch_blue compatibility
CLASSES = [
    "VIMultiheadAttention",
    "VITransformerEncoderLayer",
    "VITransformerDecoderLayer",
    "VITransformerEncoder",
    "VITransformerDecoder",
    "VITransformer",
]


@pytest.mark.parametrize("name", CLASSES)
def test_same_signatures_as_torch_blue(name: str) -> None:
    torch_blue_vi = pytest.importorskip("torch_blue.vi")

    def parameters(function: Callable, ours: bool) -> list[tuple[str, Any]]:
        listed = inspect.signature(function).parameters.values()
        return [
            (p.name, p.default if isinstance(p.default, (bool, int, float)) else None)
            for p in listed
            if not (ours and p.kind is inspect.Parameter.KEYWORD_ONLY)
        ]

    ours, theirs = getattr(vi, name), getattr(torch_blue_vi, name)
    assert parameters(ours.__init__, True) == parameters(theirs.__init__, False)
    assert parameters(ours.forward, True) == parameters(theirs.forward, False)


@pytest.mark.parametrize(
    "build",
    [
        lambda v: v.VIMultiheadAttention(E, HEADS),
        lambda v: v.VIMultiheadAttention(E, HEADS, kdim=4, vdim=5, add_bias_kv=True),
        lambda v: v.VITransformerDecoderLayer(E, HEADS, FF, bias=False),
        lambda v: v.VITransformer(E, HEADS, 2, 1, FF),
    ],
)
def test_same_names_and_initialization_as_torch_blue(build: Callable) -> None:
    torch_blue_vi = pytest.importorskip("torch_blue.vi")
    torch.manual_seed(3)
    ours = build(vi)
    torch.manual_seed(3)
    theirs = build(torch_blue_vi)
    assert ours.random_variables == theirs.random_variables
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key], rtol=0, atol=0)


def test_loads_torch_blue_0_9_checkpoints() -> None:
    source = vi.VITransformerDecoderLayer(E, HEADS, FF)
    old_names = {  # torch_blue 0.9's names of the output projection and feed-forward
        r"(self_attn|multihead_attn)\.out_proj\._(weight|bias)_": r"\1._out_proj_\2_",
        r"^linear1\.": "_ff_block.0.",
        r"^linear2\.": "_ff_block.2.",
    }
    checkpoint = {}
    for key, value in source.state_dict().items():
        for pattern, replacement in old_names.items():
            key = re.sub(pattern, replacement, key)
        checkpoint[key] = value
    assert "self_attn._out_proj_weight_mean" in checkpoint
    assert "_ff_block.2._bias_log_std" in checkpoint
    target = vi.VITransformerDecoderLayer(E, HEADS, FF)
    target.load_state_dict(checkpoint)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_optional_boolean_arguments_mean_what_they_mean_in_torch() -> None:
    """torch's layers take Optional[bool] hints; None counts as False there."""
    attention = vi.VIMultiheadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    results = []
    for need_weights, is_causal in ((None, None), (False, False)):
        torch.manual_seed(0)
        results.append(
            attention(x, x, x, need_weights=need_weights, is_causal=is_causal)
        )
    (out, weights), (expected, _) = results
    assert weights is None
    torch.testing.assert_close(out, expected)

    encoder_layer = vi.VITransformerEncoderLayer(8, 2, 16, dropout=0.0)
    decoder_layer = vi.VITransformerDecoderLayer(8, 2, 16, dropout=0.0)
    memory = torch.randn(2, 5, 8)
    for layer, inputs, hints in (
        (encoder_layer, (x,), {"is_causal": None}),
        (decoder_layer, (x, memory), {"tgt_is_causal": None, "memory_is_causal": None}),
    ):
        torch.manual_seed(0)
        given = layer(*inputs, **hints)
        torch.manual_seed(0)
        torch.testing.assert_close(given, layer(*inputs))


def test_a_decoder_layer_serves_as_the_custom_decoder() -> None:
    """VITransformer passes tgt_is_causal=None to its decoder, as nn.Transformer."""
    transformer = vi.VITransformer(
        d_model=8,
        nhead=2,
        num_encoder_layers=1,
        dim_feedforward=16,
        batch_first=True,
        custom_decoder=vi.VITransformerDecoderLayer(8, 2, 16),
    )
    output = transformer(torch.randn(3, 5, 8), torch.randn(3, 4, 8), samples=2)
    assert output.shape == (2, 3, 4, 8)
