import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torch_blue_pyro import vi
from torch_blue_pyro.vi.base import current_num_samples
from torch_blue_pyro.vi.distributions import Categorical, MeanFieldNormal
from torch_blue_pyro.vi.utils import NoVariablesError, UnsupportedDistributionError


class SingleSampleLinear(vi.VIModule):
    """torch_blue's Level 4 custom module, written for one weight sample."""

    def __init__(self, in_features: int, out_features: int, **vikwargs) -> None:
        super().__init__(
            variable_shapes={
                "weight": (out_features, in_features),
                "bias": (out_features,),
            },
            **vikwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.weight.dim() == 2, "a single-sample module sees one weight"
        return F.linear(x, self.weight, self.bias)


def mlp() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 3))


def test_variable_shapes_create_named_variational_parameters() -> None:
    module = SingleSampleLinear(4, 3)
    assert module.random_variables == ("weight", "bias")
    assert module.variational_parameter_name("weight", "log_std") == "_weight_log_std"
    assert [n for n, _ in module.named_parameters()] == [
        "_weight_mean",
        "_weight_log_std",
        "_bias_mean",
        "_bias_log_std",
    ]
    mean, log_std = module.get_variational_parameters("weight")
    assert mean.shape == log_std.shape == (3, 4)
    assert torch.allclose(log_std, torch.full_like(log_std, math.log(0.5 + 1e-5)))


def test_insertion_order_and_none_shapes() -> None:
    class ThreeVariables(vi.VIModule):
        def __init__(self) -> None:
            super().__init__(variable_shapes={"b": (2,), "a": None, "c": (3, 2)})

    module = ThreeVariables()
    assert module.random_variables == ("b", "a", "c")
    assert module.a is None
    assert module.sample_variable("a") is None
    assert module.b.shape == (2,)
    with pytest.raises(NoVariablesError, match="a is None"):
        module.get_variational_parameters("a")


def test_reading_a_variable_outside_forward_draws_fresh_samples() -> None:
    layer = vi.VILinear(4, 3)
    first, second = layer.weight, layer.weight
    assert first.shape == (3, 4)
    assert not torch.equal(first, second)
    assert first.requires_grad


def test_reading_a_weight_outside_forward_does_not_leak_into_log_probs() -> None:
    layer = vi.VILinear(4, 3)
    with torch.no_grad():
        layer._weight_log_std.fill_(-30.0)
        layer._bias_log_std.fill_(-30.0)
    x = torch.randn(2, 4)
    torch.manual_seed(5)
    before = layer(x, samples=2).log_probs
    for _ in range(5):
        assert layer.weight.shape == (3, 4)
        layer.sample_variable("bias")
    torch.manual_seed(5)
    torch.testing.assert_close(layer(x, samples=2).log_probs, before)


def test_custom_single_sample_module_runs_per_sample(recorder) -> None:
    module = SingleSampleLinear(4, 3)
    x = torch.randn(6, 4)
    with recorder:
        out = module(x, samples=5)
    assert out.shape == (5, 6, 3) and out.log_probs.shape == (5, 2)
    weight, bias = recorder.values["weight"], recorder.values["bias"]
    for s in range(5):
        torch.testing.assert_close(out[s].as_tensor(), F.linear(x, weight[s], bias[s]))


def test_custom_module_has_the_same_log_probs_as_the_builtin_layer(recorder) -> None:
    custom, builtin = SingleSampleLinear(4, 3), vi.VILinear(4, 3)
    builtin.load_state_dict(custom.state_dict())
    x = torch.randn(6, 4)
    torch.manual_seed(1)
    out_custom = custom(x, samples=4)
    torch.manual_seed(1)
    out_builtin = builtin(x, samples=4)
    torch.testing.assert_close(out_custom.as_tensor(), out_builtin.as_tensor())
    torch.testing.assert_close(out_custom.log_probs, out_builtin.log_probs)


def test_custom_module_nested_in_a_container_and_containing_layers() -> None:
    class Block(vi.VIModule):
        def __init__(self) -> None:
            super().__init__(variable_shapes={"scale": (8, 1)})
            self.inner = vi.VILinear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * self.scale.squeeze(-1)

    model = vi.VISequential(vi.VILinear(4, 8), Block(), nn.ReLU(), vi.VILinear(8, 2))
    out = model(torch.randn(5, 4), samples=3)
    assert out.shape == (3, 5, 2)
    sites = {
        "0.weight",
        "0.bias",
        "1.scale",
        "1.inner.weight",
        "1.inner.bias",
        "3.weight",
        "3.bias",
    }
    assert set(model._bind_submodules()) == sites
    out.log_probs.sum().backward()
    assert model[1]._scale_mean.grad is not None


def test_nested_modules_never_add_a_dimension() -> None:
    model = vi.VISequential(mlp(), vi.VISequential(vi.VILinear(3, 2)))
    assert model(torch.randn(5, 4), samples=6).shape == (6, 5, 2)


def test_default_samples_is_ten() -> None:
    assert mlp()(torch.randn(5, 4)).shape == (10, 5, 3)


def test_sampled_input_uses_the_given_sample_dimension() -> None:
    x = torch.randn(3, 5, 4)
    out = mlp()(x, samples=10, sampled_input=True)
    assert out.shape == (3, 5, 3) and out.log_probs.shape == (3, 2)


def test_every_output_carries_the_log_probs() -> None:
    class TwoHeads(vi.VIModule):
        handles_sample_dim = True

        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = vi.VILinear(4, 2), vi.VILinear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.a(x), self.b(x)

    first, second = TwoHeads()(torch.randn(5, 4), samples=4)
    assert first.shape == (4, 5, 2) and second.shape == (4, 5, 3)
    assert first.log_probs is second.log_probs
    assert first.log_probs.shape == (4, 2)


def test_log_probs_sum_over_all_layers(recorder) -> None:
    model = mlp()
    with recorder:
        out = model(torch.randn(5, 4), samples=3)
    prior = torch.distributions.Normal(0.0, 1.0)
    log_prior = sum(
        prior.log_prob(value).flatten(1).sum(1)
        + 0.5 * math.log(2 * math.pi) * value[0].numel()
        for value in recorder.values.values()
    )
    torch.testing.assert_close(out.log_probs[:, 0], log_prior, rtol=1e-5, atol=1e-3)


def test_model_without_random_variables_returns_zero_log_probs() -> None:
    model = vi.VISequential(nn.Linear(4, 2), nn.Tanh())
    out = model(torch.randn(5, 4), samples=3)
    assert out.shape == (3, 5, 2)
    model.return_log_probs = True
    out = model(torch.randn(5, 4), samples=3)
    torch.testing.assert_close(out.log_probs, torch.zeros(3, 2))


def test_return_log_probs_propagates_to_all_submodules() -> None:
    model = mlp()
    model.return_log_probs = False
    assert all(
        not m.return_log_probs for m in model.modules() if isinstance(m, vi.VIModule)
    )
    out = model(torch.randn(5, 4), samples=2)
    assert out.log_probs is None
    model.return_log_probs = True
    assert model(torch.randn(5, 4), samples=2).log_probs.shape == (2, 2)


def test_get_log_probs_matches_the_distributions() -> None:
    layer = vi.VILinear(4, 3)
    sample = layer.sample_variable("weight")
    mean, log_std = layer.get_variational_parameters("weight")
    expected_q = (-0.5 * ((sample - mean) / log_std.exp()) ** 2 - log_std).sum()
    expected_p = (-0.5 * sample**2).sum()
    torch.testing.assert_close(
        layer.get_log_probs(sample, "weight"), torch.stack([expected_p, expected_q])
    )


def test_reset_variational_parameters_and_prior_initialization() -> None:
    layer = vi.VILinear(
        4, 3, prior=MeanFieldNormal(0.5, 2.0), prior_initialization=True
    )
    assert torch.all(layer._weight_mean == 0.5)
    assert torch.allclose(layer._weight_log_std, torch.full((3, 4), math.log(2.0)))
    with torch.no_grad():
        layer._weight_mean.zero_()
    layer.reset_variational_parameters()
    assert torch.all(layer._weight_mean == 0.5)


def test_rescale_prior_scales_with_the_fan_in() -> None:
    layer = vi.VILinear(12, 3, rescale_prior=True)
    prior = layer.prior["weight"]
    assert math.isclose(float(prior.std), 1 / 6 + 1e-5, rel_tol=1e-5)
    assert layer.prior["bias"] is not prior, "each variable owns its prior"


def test_kaiming_initialization_off_uses_the_defaults() -> None:
    layer = vi.VILinear(
        4,
        3,
        variational_distribution=MeanFieldNormal(std=0.1),
        kaiming_initialization=False,
    )
    assert torch.allclose(layer._weight_log_std, torch.full((3, 4), math.log(0.1)))


def test_distribution_lists_one_per_variable() -> None:
    layer = vi.VILinear(4, 3, prior=[MeanFieldNormal(0, 1), MeanFieldNormal(0, 3)])
    assert math.isclose(float(layer.prior["bias"].std), 3.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"prior must be one distribution or a list"):
        vi.VILinear(4, 3, prior=[MeanFieldNormal()])


def test_distribution_in_a_role_it_cannot_play() -> None:
    with pytest.raises(UnsupportedDistributionError, match=r"Categorical.*prior"):
        vi.VILinear(4, 3, prior=Categorical())
    with pytest.raises(
        UnsupportedDistributionError, match=r"Categorical.*variational distribution"
    ):
        vi.VILinear(4, 3, variational_distribution=Categorical())


def test_methods_that_need_variables_raise_on_containers() -> None:
    container = mlp()
    assert container.random_variables is None
    for call in (
        container.reset_variational_parameters,
        lambda: container.sample_variable("weight"),
        lambda: container.get_variational_parameters("weight"),
    ):
        with pytest.raises(NoVariablesError):
            call()


@pytest.mark.parametrize("samples", [0, -3, 2.5, "4", True])
def test_samples_must_be_a_positive_int(samples) -> None:
    with pytest.raises(ValueError, match="samples must be a positive int"):
        mlp()(torch.randn(5, 4), samples=samples)


def test_non_tensor_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="expects tensors as inputs, got list"):
        mlp()([[1.0, 2.0, 3.0, 4.0]])


@pytest.mark.parametrize(
    "shapes",
    [{"weight": (0, 3)}, {"weight": (2, -1)}, {"weight": "2x3"}, {"1w": (2,)}],
)
def test_bad_variable_shapes(shapes) -> None:
    with pytest.raises(ValueError, match="variable_shapes"):
        vi.VIModule(variable_shapes=shapes)


def test_state_dict_round_trip_and_deepcopy_predict_the_same() -> None:
    model = mlp()
    clone = mlp()
    clone.load_state_dict(model.state_dict())
    twin = copy.deepcopy(model)
    x = torch.randn(5, 4)
    outputs = []
    for net in (model, clone, twin):
        torch.manual_seed(7)
        outputs.append(net(x, samples=3))
    for other in outputs[1:]:
        torch.testing.assert_close(outputs[0].as_tensor(), other.as_tensor())
        torch.testing.assert_close(outputs[0].log_probs, other.log_probs)


def test_ordered_dict_names_the_sites() -> None:
    model = vi.VISequential(
        OrderedDict(hidden=vi.VILinear(4, 8), act=nn.ReLU(), out=vi.VILinear(8, 2))
    )
    assert set(model._bind_submodules()) == {
        "hidden.weight",
        "hidden.bias",
        "out.weight",
        "out.bias",
    }


def test_vikwargs_types_a_custom_modules_keywords() -> None:
    from typing import Unpack, get_type_hints

    class Scale(vi.VIModule):
        def __init__(self, width: int, **vikwargs: Unpack[vi.VIkwargs]) -> None:
            super().__init__(variable_shapes={"scale": (width, 1)}, **vikwargs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale.squeeze(-1)

    module = Scale(3, return_log_probs=False, dtype=torch.float64)
    assert module.return_log_probs is False
    assert module._scale_mean.dtype == torch.float64
    assert set(get_type_hints(vi.VIkwargs)) == {
        "variational_distribution",
        "prior",
        "rescale_prior",
        "kaiming_initialization",
        "prior_initialization",
        "return_log_probs",
        "device",
        "dtype",
    }


class _RecordsSampleDim(vi.VIModule):
    """Passes its input through and records what current_num_samples() said."""

    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(current_num_samples())
        return x


def _cnn(recorder: vi.VIModule) -> vi.VISequential:
    return vi.VISequential(
        vi.VIConv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        recorder,
        torch.nn.Flatten(),
        vi.VILinear(3 * 4 * 4, 2),
    )


@pytest.mark.parametrize("execution", ["stacked", "loop"])
def test_sample_executions_give_the_same_outputs_log_probs_and_gradients(
    execution: str,
) -> None:
    torch.manual_seed(0)
    net = _cnn(_RecordsSampleDim())
    x = torch.randn(5, 1, 4, 4)
    results = {}
    for mode in ("auto", execution):
        net.sample_execution = mode
        torch.manual_seed(1)
        out = net(x, samples=3)
        loss = (out**2).sum() + out.log_probs.sum()
        grads = torch.autograd.grad(loss, list(net.parameters()))
        results[mode] = (out, out.log_probs, grads)
    (out, log_probs, grads), (out2, log_probs2, grads2) = results.values()
    assert out.shape == (3, 5, 2) and log_probs.shape == (3, 2)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(log_probs, log_probs2)
    for g, g2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(g, g2)


def test_auto_execution_loops_for_convolutions_on_cpu_only() -> None:
    recorder = _RecordsSampleDim()
    cnn = _cnn(recorder)
    cnn(torch.randn(2, 1, 4, 4), samples=3)
    assert recorder.seen == [None, None, None], "auto: one pass per sample"
    cnn.sample_execution = "stacked"
    recorder.seen.clear()
    cnn(torch.randn(2, 1, 4, 4), samples=3)
    assert recorder.seen == [3]
    mlp_recorder = _RecordsSampleDim()
    mlp = vi.VISequential(vi.VILinear(4, 3), mlp_recorder, vi.VILinear(3, 2))
    mlp(torch.randn(2, 4), samples=3)
    assert mlp_recorder.seen == [3], "auto: stacked without convolutions"
    mlp.sample_execution = "loop"
    mlp_recorder.seen.clear()
    out = mlp(torch.randn(2, 4), samples=3)
    assert mlp_recorder.seen == [None] * 3 and out.shape == (3, 2, 2)


def test_looped_samples_stack_tuple_outputs() -> None:
    class TwoHeads(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = vi.VILinear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.body(x)
            return hidden, hidden.sum(-1)

    net = TwoHeads()
    net.sample_execution = "loop"
    first, second = net(torch.randn(2, 4), samples=5)
    assert first.shape == (5, 2, 3) and second.shape == (5, 2)
    torch.testing.assert_close(second, first.sum(-1))
    assert first.log_probs.shape == (5, 2)


def test_unknown_sample_execution_is_named() -> None:
    net = vi.VILinear(2, 2)
    net.sample_execution = "parallel"
    with pytest.raises(ValueError, match=r"sample_execution must be one of"):
        net(torch.randn(3, 2), samples=2)
