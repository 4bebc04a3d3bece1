"""Local reparameterization and Flipout as effect handlers, in both modes."""

import contextlib
import threading

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from torch_blue_pyro import vi
from torch_blue_pyro.poutine import active_estimator, flipout, local_reparameterization
from torch_blue_pyro.vi.distributions import Categorical

HANDLERS = {"local_reparameterization": local_reparameterization, "flipout": flipout}


def closed_form_moments(layer: vi.VILinear, x: torch.Tensor) -> tuple:
    weight_mean, weight_log_std = layer.get_variational_parameters("weight")
    bias_mean, bias_log_std = layer.get_variational_parameters("bias")
    mean = x @ weight_mean.T + bias_mean
    variance = x.square() @ (2 * weight_log_std).exp().T + (2 * bias_log_std).exp()
    return mean, variance


@pytest.mark.parametrize("name", HANDLERS)
def test_outputs_have_the_moments_of_the_weight_distribution(name: str) -> None:
    layer = vi.VILinear(3, 2)
    x = torch.randn(4, 3)
    with torch.no_grad(), HANDLERS[name]():
        out = layer(x, samples=20000).as_tensor()
    mean, variance = closed_form_moments(layer, x)
    mean, variance = mean.detach(), variance.detach()
    # Within 5 standard errors; the outputs are Gaussian.
    count = out.shape[0]
    mean_error = (out.mean(0) - mean).abs() / (variance / count).sqrt()
    variance_error = (out.var(0) - variance).abs() / (
        variance * (2 / (count - 1)) ** 0.5
    )
    assert mean_error.max() < 5, mean_error.max()
    assert variance_error.max() < 5, variance_error.max()


def test_local_reparameterization_uses_the_closed_form_kl() -> None:
    model = vi.VISequential(vi.VILinear(3, 5), nn.ReLU(), vi.VILinear(5, 2))
    with local_reparameterization():
        out = model(torch.randn(4, 3), samples=3)
    kl = sum(
        torch.distributions.kl_divergence(
            torch.distributions.Normal(*_normal(module, name)),
            torch.distributions.Normal(0.0, 1.0),
        ).sum()
        for module in (model[0], model[2])
        for name in ("weight", "bias")
    )
    torch.testing.assert_close(out.log_probs[:, 0], -kl.expand(3))
    torch.testing.assert_close(out.log_probs[:, 1], torch.zeros(3))
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=10, track=True)
    loss(out, torch.tensor([0, 1, 0, 1]))
    assert loss.log["prior_matching"][0] == pytest.approx(kl.item(), rel=1e-5)


def _normal(module: vi.VILinear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    mean, log_std = module.get_variational_parameters(name)
    return mean, log_std.exp()


def test_flipout_keeps_the_log_probs_of_the_drawn_weights(recorder) -> None:
    layer = vi.VILinear(3, 2)
    x = torch.randn(4, 3)
    with recorder, flipout():
        out = layer(x, samples=3)
    weight, bias = recorder.values["weight"], recorder.values["bias"]
    expected = sum(
        (-0.5 * value.square()).flatten(1).sum(1) for value in (weight, bias)
    )
    torch.testing.assert_close(out.log_probs[:, 0], expected)


@pytest.mark.parametrize("name", HANDLERS)
def test_training_learns_under_each_estimator(name: str) -> None:
    x = torch.randn(128, 2)
    y = (x[:, 0] > 0).long()
    model = vi.VISequential(vi.VILinear(2, 16), nn.ReLU(), vi.VILinear(16, 2))
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=128)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    with HANDLERS[name]():
        for _ in range(150):
            optimizer.zero_grad()
            loss_fn(model(x, samples=4), y).backward()
            optimizer.step()
    model.return_log_probs = False
    with torch.no_grad():
        probs = torch.softmax(model(x, samples=20), -1).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.9


@pytest.mark.parametrize("name", HANDLERS)
def test_pyro_mode_uses_the_guides_gaussians(name: str) -> None:
    net = vi.VISequential(vi.VILinear(2, 16), nn.ReLU(), vi.VILinear(16, 2))
    x = torch.randn(128, 2)
    y = (x[:, 0] > 0).long()
    calls = []

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        logits = net(x)
        calls.append(active_estimator())
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    with HANDLERS[name]():
        losses = [svi.step(x, y) for _ in range(150)]
    assert set(calls) == {name}
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_pyro_mode_output_follows_the_guide_distribution() -> None:
    layer = vi.VILinear(3, 2)
    with torch.no_grad():
        layer._weight_log_std.fill_(-30.0)
        layer._bias_log_std.fill_(-30.0)
    x = torch.randn(4, 3)
    guide_trace = pyro.poutine.trace(layer.guide).get_trace()
    with local_reparameterization():
        guide_trace = pyro.poutine.trace(layer.guide).get_trace()
        out = pyro.poutine.replay(layer, trace=guide_trace)(x)
    expected = x @ layer._weight_mean.T + layer._bias_mean
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: vi.VILinear(3, 2), (4, 3)),
        (lambda: vi.VIConv2d(3, 2, 3, padding=1), (4, 3, 5, 5)),
    ],
    ids=["linear", "conv"],
)
def test_the_estimator_is_per_thread(build, shape) -> None:
    layer = build()
    entered, release = threading.Event(), threading.Event()

    def hold_handler() -> None:
        with local_reparameterization():
            entered.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=hold_handler)
    thread.start()
    entered.wait(timeout=10)
    try:
        assert active_estimator() is None
        out = layer(torch.randn(shape), samples=3)
        assert (out.log_probs[:, 1] != 0).all(), "this thread drew weights"
    finally:
        release.set()
        thread.join()


def test_local_reparameterization_reduces_gradient_variance() -> None:
    model = vi.VISequential(vi.VILinear(8, 32), nn.ReLU(), vi.VILinear(32, 2))
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=256)

    def gradient_variance(handler) -> float:
        gradients = []
        for _ in range(40):
            model.zero_grad()
            with handler():
                loss_fn(model(x, samples=1), y).backward()
            gradients.append(model[0]._weight_mean.grad.clone())
        return torch.stack(gradients).var(0).sum().item()

    plain = gradient_variance(contextlib.nullcontext)
    assert gradient_variance(local_reparameterization) < 0.5 * plain
