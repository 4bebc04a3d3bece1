"""One result on every execution path, for a zoo of real architectures.

The stacked pass, the loop over samples and the per-sample vmap fallback (a custom
module written for one sample wrapped around the model) must give the same outputs,
log-probabilities, gradients and normalization running statistics for the same
seed, in train() and in eval(). They run in float64, so they agree to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pyro import poutine
from torch import Tensor, nn

from tests.conftest import WeightRecorder
from tests.zoo import ZOO, PerSample, ZooModel, dropout_off
from torch_blue_pyro import vi

SAMPLES = 3


def _run(
    model: vi.VIModule, inputs: tuple[Tensor, ...], seed: int = 1
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """Output, log-probs and gradients of one call, and the buffers after it."""
    torch.manual_seed(seed)
    output = model(*inputs, samples=SAMPLES)
    loss = output.square().sum() + output.log_probs.sum()
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    grads = [
        torch.zeros_like(p) if g is None else g
        for p, g in zip(parameters, grads, strict=True)
    ]
    return output, output.log_probs, grads, [b.clone() for b in model.buffers()]


def _on_path(model: nn.Module, path: str) -> vi.VIModule:
    if path == "vmap":
        wrapped = PerSample(model)
        wrapped.sample_execution = "stacked"
        return wrapped
    model.sample_execution = path
    return model  # type: ignore[return-value]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("path", ["loop", "vmap"])
@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_paths_agree_with_the_stacked_pass(
    entry: ZooModel, path: str, mode: str
) -> None:
    model = entry.build().double()
    inputs = tuple(x.double() for x in entry.inputs())
    getattr(model, mode)()
    dropout_off(model)
    results = [
        _run(_on_path(copy.deepcopy(model), each), inputs) for each in ("stacked", path)
    ]
    (output, log_probs, grads, buffers), (output2, log_probs2, grads2, buffers2) = (
        results
    )
    assert output.shape[0] == SAMPLES and log_probs.shape == (SAMPLES, 2)
    torch.testing.assert_close(output2, output, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(log_probs2, log_probs, rtol=1e-12, atol=1e-10)
    for grad, grad2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(grad2, grad, rtol=1e-9, atol=1e-9)
    for buffer, buffer2 in zip(buffers, buffers2, strict=True):
        torch.testing.assert_close(buffer2, buffer, rtol=1e-12, atol=1e-14)
    moved = [
        not torch.equal(after, before)
        for after, before in zip(buffers, model.buffers(), strict=True)
    ]
    assert any(moved) == (entry.has_running_stats and mode == "train")


@pytest.mark.parametrize("path", ["stacked", "loop"])
@pytest.mark.parametrize(
    "entry",
    [entry for entry in ZOO if entry.has_running_stats],
    ids=repr,
)
def test_running_statistics_take_the_mean_of_the_per_sample_updates(
    entry: ZooModel, path: str, recorder: WeightRecorder
) -> None:
    """Each sample normalizes with its own batch statistics; the running statistics
    move once, by the average of what each sample alone (a Pyro-mode call with
    that sample's weights) would have done."""
    model = entry.build().double().train()
    dropout_off(model)
    inputs = tuple(x.double() for x in entry.inputs())
    before = copy.deepcopy(model)
    model.sample_execution = path
    with recorder:
        output = model(*inputs, samples=SAMPLES)
    per_sample_buffers = []
    for index in range(SAMPLES):
        alone = copy.deepcopy(before)
        weights = {name: value[index] for name, value in recorder.values.items()}
        single = poutine.condition(alone, data=weights)(*inputs)
        torch.testing.assert_close(single, output[index].as_tensor())
        per_sample_buffers.append(list(alone.buffers()))
    for name, buffer, *singles in zip(
        dict(model.named_buffers()), model.buffers(), *per_sample_buffers, strict=True
    ):
        if buffer.is_floating_point():
            expected = torch.stack(singles).mean(dim=0)
        else:
            expected = singles[0]  # num_batches_tracked: one step each
        torch.testing.assert_close(buffer, expected, msg=name)


def test_a_second_call_updates_again_from_the_first() -> None:
    layer = nn.BatchNorm1d(3, momentum=None)
    model = vi.VISequential(vi.VILinear(2, 3), layer)
    for calls in (1, 2):
        model(torch.randn(8, 2), samples=4)
        assert int(layer.num_batches_tracked) == calls
    assert not torch.equal(layer.running_mean, torch.zeros(3))


def test_without_running_statistics_every_sample_uses_its_batch() -> None:
    torch.manual_seed(0)
    model = vi.VISequential(
        vi.VIConv2d(1, 3, 3), nn.BatchNorm2d(3, track_running_stats=False)
    ).double()
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        outputs = []
        for path in ("stacked", "loop"):
            model.sample_execution = path
            torch.manual_seed(2)
            outputs.append(model(x, samples=3))
        torch.testing.assert_close(outputs[0], outputs[1])
        means = outputs[0].mean(dim=(1, 3, 4))
        torch.testing.assert_close(means, torch.zeros_like(means))


@pytest.mark.parametrize("path", ["stacked", "loop"])
def test_sync_batch_norm_outside_distributed_training_is_a_batch_norm(
    path: str,
) -> None:
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    results = []
    for norm in (nn.BatchNorm2d(3), nn.SyncBatchNorm(3)):
        torch.manual_seed(0)
        model = vi.VISequential(vi.VIConv2d(1, 3, 3), norm).double()
        results.append(_run(_on_path(model, path), (x,)))
    for result, sync_result in zip(*results, strict=True):
        torch.testing.assert_close(sync_result, result)


@pytest.mark.parametrize("path", ["stacked", "loop"])
@pytest.mark.parametrize("dropout", [nn.Dropout(0.5), nn.Dropout2d(0.5)])
def test_dropout_draws_its_masks_independently_per_sample(
    path: str, dropout: nn.Module
) -> None:
    """Dropout masks are random on every path (their values differ between
    paths, their distribution does not): independent per sample, at rate p."""
    model = vi.VISequential(
        vi.VIConv2d(1, 8, 1, bias=False), nn.ReLU(), dropout, nn.Flatten()
    )
    model.sample_execution = path
    with torch.no_grad():
        model[0]._weight_log_std.fill_(-30.0)  # the same weights in every sample
        model[0]._weight_mean.fill_(1.0)
    output = model(torch.ones(16, 1, 4, 4), samples=6)
    dropped = output == 0
    assert 0.4 < float(dropped.double().mean()) < 0.6
    assert not torch.equal(dropped[0], dropped[1])


class _NormReadingItsVariance(nn.BatchNorm1d):
    """A norm layer that reads its running variance as a Python number."""

    def forward(self, input: Tensor) -> Tensor:
        scale = float(self.running_var.max())  # needs the value: not under vmap
        return super().forward(input) * scale


def test_a_layer_that_cannot_run_under_vmap_is_named_with_the_way_out() -> None:
    model = vi.VISequential(vi.VILinear(2, 3), _NormReadingItsVariance(3))
    model.sample_execution = "stacked"
    with pytest.raises(
        RuntimeError,
        match=r"_NormReadingItsVariance '1' cannot run once per weight sample under "
        r"torch\.vmap.*sample_execution = 'loop' on the outermost module "
        r"\(VISequential\)",
    ):
        model(torch.randn(5, 2), samples=2)
    model.sample_execution = "loop"
    assert model(torch.randn(5, 2), samples=2).shape == (2, 5, 3)


def test_the_failing_module_is_named_by_its_path_in_a_converted_model() -> None:
    class NormedLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 3)
            self.norm = _NormReadingItsVariance(3)

        def forward(self, x: Tensor) -> Tensor:
            return self.norm(self.linear(x))

    model = nn.Sequential(nn.Linear(2, 2), NormedLinear())
    vi.convert_to_vimodule(model)
    model.sample_execution = "stacked"
    with pytest.raises(RuntimeError, match=r"_NormReadingItsVariance '1\.norm'"):
        model(torch.randn(5, 2), samples=2)


def test_a_failed_call_leaves_the_running_statistics_as_they_were() -> None:
    norm = nn.BatchNorm1d(3)
    model = vi.VISequential(vi.VILinear(2, 3), norm, vi.VILinear(4, 1))
    with pytest.raises(ValueError, match="in_features=4"):
        model(torch.randn(5, 2), samples=2)
    assert torch.equal(norm.running_mean, torch.zeros(3))
    assert int(norm.num_batches_tracked) == 0


def test_an_uninitialized_lazy_norm_is_named() -> None:
    model = vi.VISequential(vi.VILinear(2, 3), nn.LazyBatchNorm1d())
    with pytest.raises(RuntimeError, match=r"LazyBatchNorm1d '1' is not initialized"):
        model(torch.randn(5, 2), samples=2)
