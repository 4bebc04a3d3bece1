"""Mixed precision: torch.autocast for every zoo model, on both paths, in both modes.

On the test device (``--device``; bfloat16 and float16 on the CPU).

The stated tolerance against the same step in float32 (bfloat16 keeps 8 bits of
mantissa): the loss within 1 % (it is accumulated in float32), the outputs within
0.1 and the gradients at a cosine similarity of at least 0.99 (0.6 and 0.7 for the
ResNet, whose batch norms over 1x1 maps amplify rounding as much in the
deterministic network: see tests/zoo.py).
"""

from __future__ import annotations

import copy
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import Tensor, nn

from tests.conftest import WeightRecorder
from tests.zoo import ZOO, ZooModel, dropout_off
from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical

SAMPLES = 3


def _device() -> str:
    """The device type of the tests (``--device``: torch's default device)."""
    return torch.get_default_device().type


def _step(
    model: vi.VIModule, inputs: tuple[Tensor, ...], labels: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Output, loss and flat gradient of one torch_blue-mode step."""
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=100)
    torch.manual_seed(1)
    with torch.autocast(_device(), dtype=dtype, enabled=dtype != torch.float32):
        output = model(*inputs, samples=SAMPLES)
        loss = loss_fn(output, labels)
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return output, loss, torch.cat(grads)


@pytest.mark.parametrize("path", ["stacked", "loop"])
@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_a_bfloat16_training_step_matches_float32(entry: ZooModel, path: str) -> None:
    model = entry.build().train()
    dropout_off(model)
    model.sample_execution = path
    inputs = entry.inputs()
    labels = torch.randint(0, entry.classes, (inputs[0].shape[0],))
    output, loss, grads = _step(copy.deepcopy(model), inputs, labels, torch.float32)
    output16, loss16, grads16 = _step(model, inputs, labels, torch.bfloat16)
    assert loss16.dtype == torch.float32 and output16.log_probs.dtype == torch.float32
    assert output16.dtype in (torch.bfloat16, torch.float32)
    torch.testing.assert_close(loss16, loss, rtol=0.01, atol=0.0)
    atol = entry.autocast_atol
    torch.testing.assert_close(output16.float(), output, rtol=0.0, atol=atol)
    assert torch.isfinite(grads16).all()
    cosine = float(nn.functional.cosine_similarity(grads16, grads, dim=0))
    assert cosine > entry.autocast_cosine


@pytest.mark.parametrize("path", ["stacked", "loop"])
@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_prediction_under_autocast(entry: ZooModel, path: str) -> None:
    model = entry.build().eval()
    model.sample_execution = path
    model.return_log_probs = False
    inputs = entry.inputs()
    torch.manual_seed(1)
    with torch.no_grad():
        expected = model(*inputs, samples=SAMPLES)
    torch.manual_seed(1)
    with torch.no_grad(), torch.autocast(_device(), dtype=torch.bfloat16):
        output = model(*inputs, samples=SAMPLES)
    atol = entry.autocast_atol
    torch.testing.assert_close(output.float(), expected, rtol=0.0, atol=atol)


def _output_dtypes(name: str) -> tuple[torch.dtype, torch.dtype]:
    """The output dtypes under autocast with sample_execution "auto" and "stacked"."""
    entry = next(entry for entry in ZOO if entry.name == name)
    model = entry.build()
    dtypes = []
    for execution in ("auto", "stacked"):
        model.sample_execution = execution
        with torch.autocast(_device(), dtype=torch.bfloat16):
            dtypes.append(model(*entry.inputs(), samples=2).dtype)
    return dtypes[0], dtypes[1]


def test_auto_execution_loops_under_autocast_for_code_written_for_one_sample() -> None:
    """On the stacked pass such code runs under vmap, which it does in float32."""
    assert _output_dtypes("converted_norm_net") == (torch.bfloat16, torch.float32)
    assert _output_dtypes("batchnorm_cnn") == (torch.bfloat16, torch.bfloat16)


def _pyro_model(net: vi.VIModule):
    def model(inputs: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        logits = net(*inputs)
        with pyro.plate("data", labels.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits.float()), obs=labels)
        return logits

    return model


@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_svi_with_the_guide_under_autocast(entry: ZooModel, vectorize: bool) -> None:
    net = entry.build().train()
    dropout_off(net)
    inputs = entry.inputs()
    labels = torch.randint(0, entry.classes, (inputs[0].shape[0],))
    losses = []
    for dtype in (torch.float32, torch.bfloat16):
        copied = copy.deepcopy(net)
        elbo = Trace_ELBO(num_particles=2, vectorize_particles=vectorize)
        optimizer = pyro.optim.Adam({"lr": 1e-3})
        svi = SVI(_pyro_model(copied), copied.guide, optimizer, elbo)
        pyro.set_rng_seed(3)
        with torch.autocast(_device(), dtype=dtype, enabled=dtype != torch.float32):
            losses.append(svi.step(inputs, labels))
        grads = [p.grad for p in copied.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert losses[1] == pytest.approx(losses[0], rel=0.01)
    with torch.no_grad(), torch.autocast(_device(), dtype=torch.bfloat16):
        predictive = Predictive(_pyro_model(net), guide=net.guide, num_samples=2)
        samples = predictive(inputs, labels)
    assert samples["obs"].shape == (2, labels.shape[0])


def _train_with_grad_scaler(half: bool) -> tuple[float, float]:
    """Initial and final loss of 100 steps on a separable problem."""
    torch.manual_seed(0)
    model = vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(4 * 6 * 6, 2),
    )
    x = torch.randn(64, 1, 6, 6)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    scaler = torch.amp.GradScaler(_device(), enabled=half)
    losses = []
    for _ in range(100):
        with torch.autocast(_device(), dtype=torch.float16, enabled=half):
            loss = loss_fn(model(x, samples=4), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def test_float16_training_with_a_grad_scaler_learns_as_float32_does() -> None:
    first, last = _train_with_grad_scaler(half=True)
    first32, last32 = _train_with_grad_scaler(half=False)
    assert first == pytest.approx(first32, rel=0.01)
    assert last < 0.25 * first and last < 1.25 * last32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_whole_model_dtypes_keep_working(entry: ZooModel, dtype: torch.dtype) -> None:
    model = entry.build().to(dtype)
    inputs = tuple(x.to(dtype) for x in entry.inputs())
    labels = torch.randint(0, entry.classes, (inputs[0].shape[0],))
    output = model(*inputs, samples=SAMPLES)
    accumulated = torch.promote_types(dtype, torch.float32)
    assert output.dtype == dtype and output.log_probs.dtype == accumulated
    for loss_fn in (
        vi.KullbackLeiblerLoss(Categorical(), dataset_size=100),
        vi.AnalyticalKullbackLeiblerLoss(model, Categorical(), dataset_size=100),
    ):
        loss = loss_fn(output, labels)
        assert loss.dtype == accumulated and torch.isfinite(loss)
    loss.backward()


def test_log_probs_of_a_bfloat16_model_are_accumulated_in_float32(
    recorder: WeightRecorder,
) -> None:
    """Summed in bfloat16, 60k squares would keep about three digits."""
    layer = vi.VILinear(300, 200).to(torch.bfloat16)
    x = torch.randn(2, 300, dtype=torch.bfloat16)
    with recorder:
        log_probs = layer(x, samples=2).log_probs
    assert log_probs.dtype == torch.float32
    squares = sum(
        value.double().square().flatten(1).sum(dim=1)
        for value in recorder.values.values()
    )
    variance = 1.0 + layer.prior["weight"].eps  # the N(0, 1) prior
    count = 300 * 200 + 200
    expected = -0.5 * squares / variance - 0.5 * count * math.log(variance)
    torch.testing.assert_close(log_probs[:, 0].double(), expected, rtol=1e-4, atol=0.0)


def test_the_input_dtype_check_accepts_autocast_and_rejects_a_mismatch() -> None:
    conv = vi.VIConv2d(1, 2, 3)
    half = torch.randn(2, 1, 5, 5, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"expects input of dtype torch\.float32"):
        conv(half, samples=2)
    with torch.autocast(_device(), dtype=torch.bfloat16):
        assert conv(half, samples=2).shape == (2, 2, 2, 3, 3)
        with pytest.raises(TypeError, match=r"got torch\.float64"):
            conv(half.double(), samples=2)
        with pytest.raises(TypeError, match=r"got torch\.float16"):
            conv(half.half(), samples=2)


@pytest.mark.cpu_only  # CUDA's autocast names other dtypes
def test_an_unsupported_autocast_dtype_gets_torchs_warning() -> None:
    model = vi.VILinear(3, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast(_device(), dtype=torch.float64):
            output = model(torch.randn(4, 3), samples=2)
    assert output.dtype == torch.float32
    assert any("target dtype is not supported" in str(w.message) for w in caught)
