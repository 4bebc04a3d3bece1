"""The forward context: one object per thread, installed and restored by calls and
handlers; estimators written as handlers of the layers' affine operation."""

import threading
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine as pyro_poutine
from torch import nn
from torch.nn import functional as F

from torch_blue_pyro import vi
from torch_blue_pyro.poutine import (
    EstimatorMessenger,
    ForwardContext,
    current_context,
    flipout,
    local_reparameterization,
)


class _Snapshot(vi.VIModule):
    """A layer that records the context it runs in (and can wait inside forward)."""

    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ForwardContext] = []
        self.entered = threading.Event()
        self.release: threading.Event | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(current_context())
        self.entered.set()
        if self.release is not None:
            assert self.release.wait(timeout=10)
        return x


def _model(snapshot: _Snapshot) -> vi.VISequential:
    return vi.VISequential(vi.VILinear(3, 2), snapshot)


def test_a_call_installs_the_context_and_restores_the_previous_one() -> None:
    snapshot = _Snapshot()
    model = _model(snapshot)
    before = current_context()
    model(torch.randn(4, 3), samples=5)
    assert current_context() is before
    seen = snapshot.seen[-1]
    assert seen.in_call and not seen.pyro_mode and seen.num_samples == 5
    assert seen.call is not None and seen.call.outermost is model
    assert seen.call.execution == "stacked"
    assert seen.sampler is not None and seen.estimator is None


def test_a_loop_runs_each_sample_in_a_context_without_the_sample_dim() -> None:
    snapshot = _Snapshot()
    model = _model(snapshot)
    model.sample_execution = "loop"
    model(torch.randn(4, 3), samples=3)
    assert len(snapshot.seen) == 3
    for seen in snapshot.seen:
        assert seen.num_samples is None and seen.in_call
        assert seen.call is not None and seen.call.execution == "loop"
        assert set(seen.draws) == {"0.weight", "0.bias"}
    assert current_context().call is None


def test_the_context_is_restored_when_the_forward_raises() -> None:
    model = vi.VISequential(vi.VILinear(3, 2), vi.VILinear(4, 1))  # widths clash
    before = current_context()
    with pytest.raises(ValueError, match="in_features=4"):
        model(torch.randn(4, 3), samples=2)
    assert current_context() is before
    with pytest.raises(ValueError), flipout():
        model(torch.randn(4, 3), samples=2)
    assert current_context() is before


def test_pyro_mode_says_so_in_the_context() -> None:
    snapshot = _Snapshot()
    model = _model(snapshot)
    pyro_poutine.trace(model).get_trace(torch.randn(4, 3))
    seen = snapshot.seen[-1]
    assert seen.in_call and seen.pyro_mode and seen.num_samples is None


def test_a_call_in_another_thread_does_not_change_this_threads_context() -> None:
    snapshot = _Snapshot()
    snapshot.release = threading.Event()
    model = _model(snapshot)
    thread = threading.Thread(target=lambda: model(torch.randn(4, 3), samples=3))
    thread.start()
    try:
        assert snapshot.entered.wait(timeout=10)
        assert not current_context().in_call
        assert current_context().num_samples is None
        # This thread can run its own model meanwhile, with its own sample count.
        other = vi.VILinear(3, 2)
        assert other(torch.randn(4, 3), samples=2).shape == (2, 4, 2)
    finally:
        snapshot.release.set()
        thread.join()
    assert snapshot.seen[0].num_samples == 3


def test_a_handler_entered_twice_restores_each_level() -> None:
    handler = flipout()
    with handler:
        assert current_context().estimator is handler
        with local_reparameterization() as inner:
            assert current_context().estimator is inner
        assert current_context().estimator is handler
    assert current_context().estimator is None


def test_guide_draws_carry_no_marks() -> None:
    model = vi.VISequential(vi.VILinear(3, 4), nn.ReLU(), vi.VILinear(4, 2))
    with flipout():
        guide_trace = pyro_poutine.trace(model.guide).get_trace()
        pyro_poutine.trace(pyro_poutine.replay(model, trace=guide_trace)).get_trace(
            torch.randn(5, 3)
        )
    for name, node in guide_trace.nodes.items():
        if node["type"] == "sample":
            assert vars(node["value"]) == {}, name


DOCS = Path(__file__).parents[2] / "docs" / "pyro.md"


def _documented_example() -> str:
    """The code block of docs/pyro.md's "Writing an estimator" section."""
    section = DOCS.read_text().split("### Writing an estimator", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _run_documented_example(net: nn.Module, x: torch.Tensor) -> dict:
    namespace = {"net": net, "x": x}
    exec(compile(_documented_example(), str(DOCS), "exec"), namespace)
    return namespace


def test_the_documented_estimator_runs_as_written() -> None:
    net = vi.VISequential(vi.VILinear(3, 4), nn.ReLU(), vi.VILinear(4, 2))
    x = torch.randn(5, 3)
    out = _run_documented_example(net, x)["out"]
    hidden = F.relu(F.linear(x, net[0]._weight_mean, net[0]._bias_mean))
    expected = F.linear(hidden, net[2]._weight_mean, net[2]._bias_mean)
    torch.testing.assert_close(out[0].as_tensor(), expected)


MeanWeights = _run_documented_example(vi.VILinear(1, 1), torch.zeros(1, 1))[
    "MeanWeights"
]


def test_a_new_estimator_is_one_messenger() -> None:
    layer = vi.VILinear(3, 2)
    x = torch.randn(4, 3)
    with MeanWeights():
        out = layer(x, samples=3)
    expected = F.linear(x, layer._weight_mean, layer._bias_mean)
    for sample in out.as_tensor():
        torch.testing.assert_close(sample, expected)
    # No weight was drawn, so nothing was scored.
    torch.testing.assert_close(out.log_probs, torch.zeros(3, 2))


def test_a_new_estimator_can_decline_an_operation() -> None:
    conv = vi.VIConv1d(2, 3, 3)
    x = torch.randn(4, 2, 8)
    torch.manual_seed(0)
    with MeanWeights():
        declined = conv(x, samples=2)
    torch.manual_seed(0)
    plain = conv(x, samples=2)
    torch.testing.assert_close(declined.as_tensor(), plain.as_tensor())
    torch.testing.assert_close(declined.log_probs, plain.log_probs)


def test_a_new_estimator_serves_pyro_mode_with_the_guides_gaussian() -> None:
    pyro.clear_param_store()
    layer = vi.VILinear(3, 2)
    x = torch.randn(4, 3)
    with MeanWeights():
        guide_trace = pyro_poutine.trace(layer.guide).get_trace()
        out = pyro_poutine.replay(layer, trace=guide_trace)(x)
    expected = F.linear(x, layer._weight_mean, layer._bias_mean)
    torch.testing.assert_close(out, expected)


class _Pair(vi.VIModule):
    """Adds a per-sample data input and a shared offset (declared by name)."""

    handles_sample_dim = True
    sampled_inputs = ("x",)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x + offset


def test_only_declared_inputs_get_the_sample_dimension() -> None:
    x, offset = torch.randn(4, 3), torch.randn(4, 3)
    out = _Pair()(x, offset, samples=2)
    assert out.shape == (2, 4, 3)
    torch.testing.assert_close(out[0].as_tensor(), x + offset)


def test_declared_inputs_get_it_as_keywords_too() -> None:
    mha = vi.VIMultiheadAttention(4, 2)
    x = torch.randn(3, 5, 4)
    torch.manual_seed(0)
    by_keyword, _ = mha(query=x, key=x, value=x, samples=2)
    torch.manual_seed(0)
    positional, _ = mha(x, x, x, samples=2)
    assert by_keyword.shape == (2, 3, 5, 4)
    torch.testing.assert_close(by_keyword.as_tensor(), positional.as_tensor())


def test_a_positional_mask_is_passed_through_as_given() -> None:
    mha = vi.VIMultiheadAttention(4, 2)
    x = torch.randn(3, 5, 4)
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    torch.manual_seed(0)
    positional, _ = mha(x, x, x, mask, samples=2)
    torch.manual_seed(0)
    by_keyword, _ = mha(x, x, x, attn_mask=mask, samples=2)
    torch.testing.assert_close(positional.as_tensor(), by_keyword.as_tensor())


def test_a_declared_input_that_forward_lacks_is_named() -> None:
    class Wrong(_Pair):
        sampled_inputs = ("inputs",)

    with pytest.raises(TypeError, match=r"Wrong.sampled_inputs names \['inputs'\]"):
        Wrong()(torch.randn(2, 3), torch.randn(2, 3), samples=2)


class _ScaledPlusOffset(vi.VIModule):
    """Written for one sample; only ``x`` carries the samples, ``offset`` is shared."""

    sampled_inputs = ("x",)

    def __init__(self) -> None:
        super().__init__({"weight": (1, 3)})

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return x * self.weight + offset


@pytest.mark.parametrize("execution", ["stacked", "loop"])
def test_code_for_one_sample_splits_only_declared_inputs(execution: str) -> None:
    module = _ScaledPlusOffset()
    module.sample_execution = execution
    with torch.no_grad():
        module._weight_log_std.fill_(-30.0)  # every draw is the mean
    x = torch.randn(4, 3)
    offset = torch.randn(3)  # as long as the 3 samples: shape alone cannot tell
    out = module(x, offset, samples=3)
    assert current_context().call is None
    expected = x * module._weight_mean + offset
    for sample in out.as_tensor():
        torch.testing.assert_close(sample, expected.detach())


@pytest.mark.parametrize("execution", ["stacked", "loop"])
def test_code_for_one_sample_splits_declared_keyword_inputs(execution: str) -> None:
    module = _ScaledPlusOffset()
    module.sample_execution = execution
    with torch.no_grad():
        module._weight_log_std.fill_(-30.0)
    x, offset = torch.randn(4, 3), torch.randn(3)
    out = module(x=x, offset=offset, samples=3)
    assert out.shape == (3, 4, 3)
    expected = (x * module._weight_mean + offset).detach()
    for sample in out.as_tensor():
        torch.testing.assert_close(sample, expected)


class _CallsWithAFreshTensor(vi.VIModule):
    """Passes a tensor without the sample dimension as the declared input."""

    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.inner = _ScaledPlusOffset()

    def forward(self, offset: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.ones(5, 3), offset)


def test_a_declared_input_without_the_samples_is_named() -> None:
    model = _CallsWithAFreshTensor()
    with pytest.raises(ValueError, match=r"declares input 0 as sampled .* \(5, 3\)"):
        model(torch.randn(3), samples=3)


def test_an_estimator_without_its_math_is_named() -> None:
    class Unfinished(EstimatorMessenger):
        kind = "unfinished"

    with (
        pytest.raises(NotImplementedError, match="Unfinished must implement"),
        Unfinished(),
    ):
        vi.VILinear(3, 2)(torch.randn(4, 3), samples=2)
