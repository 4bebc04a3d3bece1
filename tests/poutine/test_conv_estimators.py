"""Local reparameterization and Flipout for VIConv1d/2d/3d, in both modes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import Tensor, nn

from torch_blue_pyro import functional, vi
from torch_blue_pyro.poutine import flipout, local_reparameterization
from torch_blue_pyro.vi.distributions import (
    Categorical,
    MeanFieldNormal,
    MeanFieldStudentT,
    UniformPrior,
)

VI_CONV = {1: vi.VIConv1d, 2: vi.VIConv2d, 3: vi.VIConv3d}
FUNCTIONAL_CONV = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}
SIZES = {1: 9, 2: 6, 3: 5}
ESTIMATORS: dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,
    "local_reparameterization": local_reparameterization,
    "flipout": flipout,
}
HANDLERS = {name: ESTIMATORS[name] for name in ("local_reparameterization", "flipout")}

# in_channels=4, out_channels=6; every argument of the convolution is covered.
CONFIGS: dict[str, dict[str, Any]] = {
    "k3": {"kernel_size": 3},
    "stride2-pad1-nobias": {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
    "same-dilation2-reflect": {
        "kernel_size": 2,
        "padding": "same",
        "dilation": 2,
        "padding_mode": "reflect",
    },
    "valid-groups2-circular": {
        "kernel_size": 3,
        "padding": "valid",
        "groups": 2,
        "padding_mode": "circular",
    },
    "pad2-stride2-groups2-replicate": {
        "kernel_size": 2,
        "stride": 2,
        "padding": 2,
        "groups": 2,
        "padding_mode": "replicate",
    },
}


def conv_layer(dims: int, config: str, **kwargs: Any) -> vi.VIModule:
    return VI_CONV[dims](4, 6, **CONFIGS[config], **kwargs)


def arguments(layer: Any) -> dict[str, Any]:
    return {
        "stride": layer.stride,
        "padding": layer.padding,
        "dilation": layer.dilation,
        "groups": layer.groups,
        "padding_mode": layer.padding_mode,
    }


def gaussian(layer: vi.VIModule, name: str) -> tuple[Tensor, Tensor] | None:
    if layer.variational_distribution[name] is None:
        return None
    mean, log_std = layer.get_variational_parameters(name)
    return mean.detach(), log_std.detach().exp()


def closed_form_moments(layer: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of every output element under the weight distribution."""
    weight_mean, weight_std = gaussian(layer, "weight")
    bias = gaussian(layer, "bias")
    bias_mean, bias_variance = (None, None) if bias is None else (bias[0], bias[1] ** 2)
    conv = FUNCTIONAL_CONV[layer._dims]
    mean = conv(x, weight_mean, bias_mean, **arguments(layer))
    variance = conv(x.square(), weight_std.square(), bias_variance, **arguments(layer))
    return mean, variance


def assert_moments(samples: Tensor, mean: Tensor, variance: Tensor) -> None:
    """Sample mean and variance within 5 standard errors (outputs are Gaussian)."""
    count = samples.shape[0]
    mean_error = (samples.mean(0) - mean).abs() / (variance / count).sqrt()
    variance_error = (samples.var(0) - variance).abs() / (
        variance * (2 / (count - 1)) ** 0.5
    )
    assert mean_error.max() < 5, mean_error.max()
    assert variance_error.max() < 5, variance_error.max()


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_outputs_have_the_moments_of_the_weight_distribution(
    dims: int, config: str, estimator: str
) -> None:
    layer = conv_layer(dims, config)
    x = torch.randn(2, 4, *(SIZES[dims],) * dims)
    with torch.no_grad(), ESTIMATORS[estimator]():
        out = layer(x, samples=4000).as_tensor()
    mean, variance = closed_form_moments(layer, x)
    assert out.shape == (4000, *mean.shape)
    assert_moments(out, mean, variance)


@pytest.mark.parametrize("estimator", HANDLERS)
@pytest.mark.parametrize(
    "layout", ["per-sample", "examples-first", "unbatched", "unbatched-shared"]
)
def test_per_sample_and_unbatched_inputs(estimator: str, layout: str) -> None:
    layer = conv_layer(2, "pad2-stride2-groups2-replicate")
    x = (
        torch.randn(4, 6, 6)
        if layout.startswith("unbatched")
        else torch.randn(2, 4, 6, 6)
    )
    with torch.no_grad(), HANDLERS[estimator]():
        if layout == "unbatched-shared":
            out = layer(x, samples=4000).as_tensor()
        else:
            # A per-sample (not stride-0) input, as a nested layer sees it; laid
            # out as (N, S, ...) in memory like the output of a convolution.
            stacked = x.expand(4000, *x.shape).clone()
            if layout == "examples-first":
                stacked = stacked.transpose(0, 1).contiguous().transpose(0, 1)
            out = layer(stacked, sampled_input=True).as_tensor()
    mean, variance = closed_form_moments(layer, x)
    assert out.shape == (4000, *mean.shape)
    assert_moments(out, mean, variance)


@pytest.mark.parametrize("estimator", HANDLERS)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_kernels_without_sample_dimension_have_the_moments(
    dims: int, estimator: str
) -> None:
    """The kernels as Pyro mode calls them: one weight, no sample dimension."""
    layer = conv_layer(dims, "pad2-stride2-groups2-replicate")
    x = torch.randn(2, 4, *(SIZES[dims],) * dims)
    weight_mean, weight_std = gaussian(layer, "weight")
    bias_mean, bias_std = gaussian(layer, "bias")
    draws = 3000
    if estimator == "local_reparameterization":
        # Every example is drawn independently: one call on many copies.
        copies = x.repeat(draws, *[1] * (dims + 1))
        out = functional.conv_local_reparameterization(
            copies, weight_mean, weight_std, bias_mean, bias_std, **arguments(layer)
        ).unflatten(0, (draws, len(x)))
    else:
        out = torch.stack(
            [
                functional.conv_flipout(
                    x,
                    weight_mean,
                    weight_std * torch.randn_like(weight_std),
                    bias_mean + bias_std * torch.randn_like(bias_std),
                    **arguments(layer),
                )
                for _ in range(draws)
            ]
        )
    mean, variance = closed_form_moments(layer, x)
    assert_moments(out, mean, variance)


def output_covariance(layer: Any, example: Tensor) -> Tensor:
    """Covariance of one example's flattened output: J diag(sigma^2) J^T."""
    weight_mean, weight_std = gaussian(layer, "weight")
    bias_mean, bias_std = gaussian(layer, "bias")
    conv = FUNCTIONAL_CONV[layer._dims]

    def output(weight: Tensor, bias: Tensor) -> Tensor:
        return conv(example, weight, bias, **arguments(layer)).flatten()

    weight_jacobian, bias_jacobian = torch.autograd.functional.jacobian(
        output, (weight_mean, bias_mean)
    )
    weight_jacobian = weight_jacobian.flatten(1) * weight_std.flatten()
    bias_jacobian = bias_jacobian * bias_std
    return weight_jacobian @ weight_jacobian.T + bias_jacobian @ bias_jacobian.T


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_joint_distribution_of_an_examples_positions(estimator: str) -> None:
    """Flipout keeps one weight draw per example; local reparameterization does not.

    The positions of an example share the weight, so their outputs are correlated.
    Flipout (signs per channel) reproduces the full covariance, as plain sampling
    does; local reparameterization draws each element independently.
    """
    layer = vi.VIConv2d(2, 4, 3, padding=1, groups=2, padding_mode="reflect")
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad(), ESTIMATORS[estimator]():
        out = layer(x, samples=20000).as_tensor()
    count = out.shape[0]
    for index in range(len(x)):
        samples = out[:, index].flatten(1)
        full = output_covariance(layer, x[index])
        variance = full.diag()
        standard_error = (
            (variance[:, None] * variance[None, :] + full.square()) / count
        ).sqrt()
        off_diagonal = ~torch.eye(len(full), dtype=torch.bool)
        assert (full / standard_error)[off_diagonal].abs().max() > 20, (
            "the positions must be visibly correlated for the test to tell"
        )
        expected = (
            full.diag().diag() if estimator == "local_reparameterization" else full
        )
        centered = samples - samples.mean(0)
        covariance = centered.T @ centered / (count - 1)
        error = (covariance - expected).abs() / standard_error
        assert error.max() < 5, error.max()


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("layout", ["batched", "unbatched"])
@pytest.mark.parametrize("config", CONFIGS)
def test_flipout_with_a_zero_perturbation_is_the_mean_convolution(
    config: str, layout: str, stacked: bool
) -> None:
    layer = conv_layer(2, config)
    weight_mean, _ = gaussian(layer, "weight")
    bias = None if layer.variational_distribution["bias"] is None else torch.randn(6)
    x = torch.randn(3, 4, 7, 7) if layout == "batched" else torch.randn(4, 7, 7)
    expected = functional.conv2d(x, weight_mean, bias, **arguments(layer))
    delta = torch.zeros_like(weight_mean)
    if not stacked:
        out = functional.conv_flipout(x, weight_mean, delta, bias, **arguments(layer))
        torch.testing.assert_close(out, expected)
        return
    samples = 5
    stacked_bias = None if bias is None else bias.expand(samples, 6)
    stacked_delta = delta.expand(samples, *delta.shape)
    for stacked_x in (x.expand(samples, *x.shape), x.expand(samples, *x.shape) + 0):
        out = functional.conv_flipout(
            stacked_x, weight_mean, stacked_delta, stacked_bias, **arguments(layer)
        )
        torch.testing.assert_close(out, expected.expand(samples, *expected.shape))


@pytest.mark.parametrize("layout", ["shared", "per-sample", "plain"])
def test_local_reparameterization_with_zero_std_is_the_mean_convolution(
    layout: str,
) -> None:
    layer = conv_layer(3, "valid-groups2-circular")
    weight_mean, _ = gaussian(layer, "weight")
    bias_mean, _ = gaussian(layer, "bias")
    x = torch.randn(3, 4, 5, 5, 5)
    expected = functional.conv3d(x, weight_mean, bias_mean, **arguments(layer))
    zeros = torch.zeros_like(weight_mean), torch.zeros_like(bias_mean)
    if layout == "plain":
        stacked_x, num_samples = x, None
    else:
        stacked_x, num_samples = x.expand(4, *x.shape), 4
        expected = expected.expand(4, *expected.shape)
        if layout == "per-sample":
            stacked_x = stacked_x + 0
    out = functional.conv_local_reparameterization(
        stacked_x,
        weight_mean,
        zeros[0],
        bias_mean,
        zeros[1],
        num_samples=num_samples,
        **arguments(layer),
    )
    torch.testing.assert_close(out, expected)


def kl_to_standard_normal(layer: vi.VIModule) -> Tensor:
    return sum(
        torch.distributions.kl_divergence(
            torch.distributions.Normal(*gaussian(layer, name)),
            torch.distributions.Normal(0.0, 1.0),
        ).sum()
        for name in ("weight", "bias")
    )


def small_cnn(**kwargs: Any) -> vi.VISequential:
    return vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1, **kwargs),
        nn.ReLU(),
        vi.VIConv2d(4, 4, 3, stride=2, padding=1, groups=2, **kwargs),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(16 * 4, 3, **kwargs),
    )


def test_local_reparameterization_records_the_closed_form_kl() -> None:
    model = small_cnn()
    x = torch.randn(5, 1, 8, 8)
    with local_reparameterization():
        out = model(x, samples=3)
    kl = sum(kl_to_standard_normal(model[index]) for index in (0, 2, 5))
    torch.testing.assert_close(out.log_probs[:, 0], -kl.expand(3))
    torch.testing.assert_close(out.log_probs[:, 1], torch.zeros(3))
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=10, track=True)
    loss(out, torch.tensor([0, 1, 2, 0, 1]))
    assert loss.log["prior_matching"][0] == pytest.approx(kl.item(), rel=1e-5)
    analytical = vi.AnalyticalKullbackLeiblerLoss(model, Categorical(), 10)
    torch.testing.assert_close(analytical.prior_matching(), kl)


def test_flipout_keeps_the_log_probs_of_the_drawn_weights(recorder) -> None:
    layer = vi.VIConv2d(2, 3, 3, padding=1)
    with recorder, flipout():
        out = layer(torch.randn(4, 2, 5, 5), samples=3)
    expected = sum(
        (-0.5 * value.square()).flatten(1).sum(1)
        for value in (recorder.values["weight"], recorder.values["bias"])
    )
    torch.testing.assert_close(out.log_probs[:, 0], expected)


@pytest.mark.parametrize(
    ("estimator", "prior", "variational"),
    [
        ("local_reparameterization", UniformPrior(), MeanFieldNormal()),
        ("local_reparameterization", MeanFieldNormal(), MeanFieldStudentT()),
        ("flipout", MeanFieldNormal(), MeanFieldStudentT()),
    ],
    ids=["lrt-uniform-prior", "lrt-student-t", "flipout-student-t"],
)
def test_falls_back_to_drawing_weights_where_the_estimator_cannot_apply(
    estimator: str, prior: Any, variational: Any, recorder
) -> None:
    layer = vi.VIConv2d(
        2, 3, 3, padding=1, prior=prior, variational_distribution=variational
    )
    x = torch.randn(4, 2, 5, 5)
    with recorder, HANDLERS[estimator]():
        out = layer(x, samples=3)
    expected = functional.conv2d(
        x.expand(3, *x.shape),
        recorder.values["weight"],
        recorder.values["bias"],
        padding=1,
    )
    torch.testing.assert_close(out.as_tensor(), expected)
    assert out.log_probs.shape == (3, 2)
    assert (out.log_probs[:, 1] != 0).all(), "the weights' own log-probs"


class PerSample(vi.VIModule):
    """A module written for one sample: torch_blue runs it under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = vi.VIConv2d(2, 3, 3, padding=1)
        self.linear = vi.VILinear(3 * 25, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(torch.relu(self.conv(x)).flatten(-3))


@pytest.mark.parametrize("estimator", HANDLERS)
def test_inside_a_per_sample_forward_the_drawn_weights_are_scored(
    estimator: str, recorder
) -> None:
    """The enclosing module draws the weights first; no closed-form KL on top."""
    model = PerSample()
    with recorder, HANDLERS[estimator]():
        out = model(torch.randn(4, 2, 5, 5), samples=3)
    assert out.shape == (3, 4, 2)
    expected = sum(
        (-0.5 * value.square()).flatten(1).sum(1) for value in recorder.values.values()
    )
    assert len(recorder.values) == 4
    torch.testing.assert_close(out.log_probs[:, 0], expected)


def digits() -> tuple[Tensor, ...]:
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels)
    return x[:1000], y[:1000], x[1000:1400], y[1000:1400]


def digits_cnn() -> vi.VISequential:
    return vi.VISequential(
        vi.VIConv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        vi.VIConv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(256, 10),
    )


def accuracy_of(net: vi.VISequential, x: Tensor, y: Tensor) -> float:
    net.return_log_probs = False
    with torch.no_grad():
        probs = torch.softmax(net(x, samples=10), -1).mean(0)
    return (probs.argmax(-1) == y).float().mean().item()


@pytest.mark.parametrize("estimator", HANDLERS)
def test_a_cnn_learns_digits_in_torch_blue_mode(estimator: str) -> None:
    x_train, y_train, x_test, y_test = digits()
    net = digits_cnn()
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=len(y_train))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    with HANDLERS[estimator]():
        for _ in range(3):
            for start in range(0, len(y_train), 100):
                batch = slice(start, start + 100)
                optimizer.zero_grad()
                loss = loss_fn(net(x_train[batch], samples=2), y_train[batch])
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        accuracy = accuracy_of(net, x_test, y_test)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert accuracy > 0.75, accuracy


@pytest.mark.parametrize("estimator", HANDLERS)
def test_a_cnn_learns_digits_in_pyro_mode(estimator: str) -> None:
    x_train, y_train, x_test, y_test = digits()
    net = digits_cnn()
    size = len(y_train)

    def model(x: Tensor, y: Tensor | None = None) -> None:
        logits = net(x)
        with pyro.plate("data", size, subsample_size=len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    with HANDLERS[estimator]():
        losses = [
            svi.step(x_train[start : start + 100], y_train[start : start + 100])
            for _ in range(3)
            for start in range(0, size, 100)
        ]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert accuracy_of(net, x_test, y_test) > 0.75


@pytest.mark.parametrize("estimator", HANDLERS)
def test_pyro_mode_uses_the_guides_gaussians(estimator: str) -> None:
    layer = vi.VIConv2d(2, 3, 3, stride=2, padding="valid", padding_mode="circular")
    with torch.no_grad():
        layer._weight_log_std.fill_(-30.0)
        layer._bias_log_std.fill_(-30.0)
    x = torch.randn(4, 2, 7, 7)
    with HANDLERS[estimator]():
        guide_trace = pyro.poutine.trace(layer.guide).get_trace()
        out = pyro.poutine.replay(layer, trace=guide_trace)(x)
    expected = functional.conv2d(
        x, layer._weight_mean, layer._bias_mean, **arguments(layer)
    )
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("estimator", HANDLERS)
def test_autoguide_draws_use_the_estimator(
    estimator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AutoNormal draws each site from Normal(loc, scale).to_event(...): the handler
    # marks those draws too, and the ELBO keeps its expectation.
    net = small_cnn()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    guide = AutoNormal(net_model := _classifier(net))
    elbo = Trace_ELBO()
    with torch.no_grad():
        plain = torch.tensor([elbo.loss(net_model, guide, x, y) for _ in range(300)])
    calls = _spy_kernels(estimator, monkeypatch)
    with HANDLERS[estimator](), torch.no_grad():
        estimated = torch.tensor(
            [elbo.loss(net_model, guide, x, y) for _ in range(300)]
        )
    assert sorted(set(calls)) == sorted(KERNELS[estimator]), calls
    standard_error = (plain.var() / 300 + estimated.var() / 300).sqrt().item()
    assert abs(plain.mean().item() - estimated.mean().item()) < 5 * standard_error


def _classifier(net: vi.VIModule) -> Callable[..., None]:
    def model(x: Tensor, y: Tensor | None = None) -> None:
        with pyro.plate("data", len(x)):
            logits = pyro.deterministic("logits", net(x))
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    return model


def _spy_kernels(estimator: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the names of the estimator's kernels as the layers call them."""
    calls: list[str] = []
    for name in KERNELS[estimator]:
        kernel = getattr(functional, name)

        def spy(*args: Any, _kernel: Callable = kernel, _name: str = name, **kw: Any):
            calls.append(_name)
            return _kernel(*args, **kw)

        monkeypatch.setattr(functional, name, spy)
    return calls


KERNELS = {
    "local_reparameterization": (
        "conv_local_reparameterization",
        "linear_local_reparameterization",
    ),
    "flipout": ("conv_flipout", "linear_flipout"),
}


@pytest.mark.parametrize("estimator", HANDLERS)
def test_vectorized_particles_use_the_estimator(
    estimator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The K particles' draws are the sample dimension of the estimators' kernels,
    # and the vectorized ELBO agrees with the sequential one in distribution.
    net = small_cnn()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    calls = _spy_kernels(estimator, monkeypatch)
    model = _classifier(net)

    with HANDLERS[estimator]():
        predictive = pyro.infer.Predictive(
            model, guide=net.guide, num_samples=5, parallel=True
        )
        assert predictive(x)["logits"].shape == (5, 6, 3)
        vectorized = Trace_ELBO(num_particles=200, vectorize_particles=True)
        sequential = Trace_ELBO(num_particles=1)
        with torch.no_grad():
            batched = vectorized.loss(model, net.guide, x, y)
            assert sorted(set(calls)) == sorted(KERNELS[estimator]), calls
            single = torch.tensor(
                [sequential.loss(model, net.guide, x, y) for _ in range(200)]
            )
    standard_error = single.std().item() / 200**0.5
    assert abs(batched - single.mean().item()) < 5 * standard_error * 2**0.5


@pytest.mark.parametrize("estimator", HANDLERS)
def test_conditioned_weights_are_not_taken_for_prior_draws(estimator: str) -> None:
    # The handler inside the model, a condition handler outside: the layer must use
    # the given weights, not the Gaussian of the prior the site was not drawn from.
    layer = vi.VILinear(3, 2, prior=dist.Normal(0.0, 1.0))
    x = torch.randn(4, 3)
    weight, bias = torch.randn(2, 3), torch.randn(2)

    def model(x: Tensor) -> Tensor:
        with HANDLERS[estimator]():
            return layer(x)

    conditioned = pyro.poutine.condition(model, data={"weight": weight, "bias": bias})
    torch.testing.assert_close(conditioned(x), x @ weight.T + bias)
