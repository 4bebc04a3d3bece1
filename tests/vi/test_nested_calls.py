"""A nested VIModule called directly behaves as torch_blue's: one sample, recorded.

torch_blue gives sampling responsibility to the outermost module when it is built;
its descendants called directly run their plain forward on one weight sample and
record the draws' log-probabilities, which ``gather_log_probs`` returns.
"""

from __future__ import annotations

import pytest
import torch
from pyro import poutine
from torch import nn

from torch_blue_pyro import vi

torch_blue = pytest.importorskip("torch_blue")
tb_vi = pytest.importorskip("torch_blue.vi")


def _pair() -> tuple[vi.VISequential, object]:
    """The same MLP here and in torch_blue, with the same variational parameters."""
    ours = vi.VISequential(vi.VILinear(4, 5), nn.ReLU(), vi.VILinear(5, 3))
    theirs = tb_vi.VISequential(tb_vi.VILinear(4, 5), nn.ReLU(), tb_vi.VILinear(5, 3))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_a_nested_module_called_directly_runs_one_sample_as_torch_blue() -> None:
    ours, theirs = _pair()
    x = torch.randn(6, 4)
    torch.manual_seed(3)
    output = ours[0](x)
    torch.manual_seed(3)
    expected = theirs[0](x)
    assert type(output) is torch.Tensor and output.shape == (6, 5)
    torch.testing.assert_close(output, expected)
    log_probs = ours.gather_log_probs()
    torch.testing.assert_close(
        log_probs, theirs.gather_log_probs(), rtol=1e-4, atol=1e-3
    )
    assert log_probs.shape == (2,)
    assert torch.equal(ours.gather_log_probs(), torch.zeros(2)), "gathered: reset"


def test_gathered_log_probs_average_calls_and_sum_variables() -> None:
    ours, theirs = _pair()
    x = torch.randn(6, 4)
    for model in (ours, theirs):
        torch.manual_seed(5)
        model[0](x)
        model[0](x)
        model[2](torch.randn(6, 5))
    torch.testing.assert_close(
        ours.gather_log_probs(), theirs.gather_log_probs(), rtol=1e-4, atol=1e-3
    )


def test_each_direct_call_draws_anew_and_reset_forgets() -> None:
    model = vi.VISequential(vi.VILinear(4, 5))
    x = torch.randn(2, 4)
    assert not torch.equal(model[0](x), model[0](x))
    model.reset_log_probs()
    assert torch.equal(model.gather_log_probs(), torch.zeros(2))


def test_a_standalone_module_keeps_autosampling_until_it_gets_a_parent() -> None:
    layer = vi.VILinear(4, 5)
    x = torch.randn(3, 4)
    assert layer(x, samples=2).shape == (2, 3, 5)
    holder = nn.Sequential(layer)  # a plain container does not take responsibility
    assert layer(x, samples=2).shape == (2, 3, 5)

    class Net(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.body = holder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    net = Net()  # VIModules below a VIModule, through plain containers too
    assert net(x, samples=2).shape == (2, 3, 5)
    assert layer(x).shape == (3, 5)
    with pytest.raises(TypeError, match=r"samples is for the outermost module"):
        layer(x, samples=2)


def test_converted_submodules_are_nested() -> None:
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    vi.convert_to_vimodule(net)
    x = torch.randn(3, 4)
    assert net(x, samples=2).shape == (2, 3, 2)
    assert net[0](x).shape == (3, 5)


def test_without_log_probs_nothing_is_recorded() -> None:
    model = vi.VISequential(vi.VILinear(4, 5))
    model.return_log_probs = False
    model[0](torch.randn(2, 4))
    assert torch.equal(model.gather_log_probs(), torch.zeros(2))


def test_pyro_mode_is_unchanged_for_nested_modules() -> None:
    model = vi.VISequential(vi.VILinear(4, 5), nn.ReLU(), vi.VILinear(5, 3))
    trace = poutine.trace(model[2]).get_trace(torch.randn(6, 5))
    sites = [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    assert sites == ["2.weight", "2.bias"]
    assert torch.equal(model.gather_log_probs(), torch.zeros(2))
