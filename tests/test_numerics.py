"""Numerics: no silent NaN in training, closed forms, gradients of the custom math.

* Training with extreme initial variational stds (1e-8, 1e3), tiny and huge
  ``dataset_size`` (1, 1e9), in float32 and float64, in both modes, stays finite at
  every step; a longer run converges.
* Log-probabilities and KL divergences equal their closed forms from
  ``torch.distributions`` in float64.
* ``torch.autograd.gradcheck`` on the library's own math: ``functional.linear`` and
  the convolutions with stacked (3-D/4-D+) weights, attention with stacked weights,
  the closed-form ``rsample_with_log_prob`` (noise fixed by a seed inside the checked
  function) and ``log_prob_per_sample``, and the analytic divergences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn
from torch.autograd import gradcheck
from torch.distributions import Normal, StudentT, kl_divergence

from torch_blue_pyro import functional, vi
from torch_blue_pyro.vi.distributions import (
    Categorical,
    MeanFieldNormal,
    MeanFieldStudentT,
)
from torch_blue_pyro.vi.utils import use_norm_constants

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models: one thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def norm_constants() -> Iterator[None]:
    use_norm_constants(True)
    try:
        yield
    finally:
        use_norm_constants(False)


def blobs(dtype: torch.dtype, n: int = 64) -> tuple[Tensor, Tensor]:
    """Two separable classes in 2-D, from a generator of their own."""
    generator = torch.Generator(torch.get_default_device()).manual_seed(3)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=generator, dtype=dtype) + 2.5 * (2 * y[:, None] - 1)
    return x, y


def mlp(std: float | None, dtype: torch.dtype, outputs: int) -> vi.VISequential:
    """A small MLP; with ``std`` every variational std starts at exactly ``std``."""
    options: dict = {"dtype": dtype}
    if std is not None:
        options.update(
            variational_distribution=MeanFieldNormal(std=std),
            kaiming_initialization=False,
        )
    return vi.VISequential(
        vi.VILinear(2, 16, **options), nn.Tanh(), vi.VILinear(16, outputs, **options)
    )


def assert_finite_step(net: nn.Module, loss: Tensor | float, step: int) -> None:
    value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
    assert math.isfinite(value), f"loss {value} at step {step}"
    for name, parameter in net.named_parameters():
        assert torch.isfinite(parameter).all(), f"{name} at step {step}"
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), f"{name}.grad at step {step}"


def snapshot(net: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def assert_all_moved(before: dict[str, Tensor], net: nn.Module) -> None:
    for name, parameter in net.named_parameters():
        assert not torch.equal(parameter.detach(), before[name]), name


# ------------------------------------------------------------ no silent NaN
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("dataset_size", [1, 10**9])
@pytest.mark.parametrize("std", [1e-8, 1e3])
@pytest.mark.parametrize("task", ["classification", "regression", "analytical"])
def test_torch_blue_training_stays_finite(
    task: str, std: float, dataset_size: int, dtype: torch.dtype
) -> None:
    x, y = blobs(dtype)
    if task == "regression":
        net = mlp(std, dtype, outputs=1)
        target = x[:, :1] * x[:, 1:]
        loss_fn: nn.Module = vi.KullbackLeiblerLoss(
            MeanFieldNormal(), dataset_size=dataset_size
        )
    else:
        net = mlp(std, dtype, outputs=2)
        target = y
        loss_fn = (
            vi.KullbackLeiblerLoss(Categorical(), dataset_size=dataset_size)
            if task == "classification"
            else vi.AnalyticalKullbackLeiblerLoss(
                net, Categorical(), dataset_size=dataset_size
            )
        )
    before = snapshot(net)
    log_std = net[0]._weight_log_std
    assert torch.allclose(log_std, torch.full_like(log_std, math.log(std)))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(25):
        loss = loss_fn(net(x, samples=4), target)
        optimizer.zero_grad()
        loss.backward()
        assert_finite_step(net, loss, step)
        optimizer.step()
    assert_finite_step(net, loss, step)
    if (task, std, dataset_size, dtype) != ("regression", 1e-8, 10**9, torch.float32):
        assert_all_moved(before, net)
    # else: finite, but Adam's squared gradient overflows; see the next test.


def test_float32_gradients_beyond_adams_range_stall_unless_the_loss_is_scaled() -> None:
    """A hazard, not a NaN: float32, ``dataset_size=1e9`` and near-deterministic
    regression outputs (predictive variance ~ eps = 1e-10) give gradients ~1e21.
    Adam's second moment ``grad**2`` then overflows to inf and its step is exactly
    0: the parameters freeze, silently. Scaling the loss by ``1 / dataset_size``
    (the same optimum; Adam is nearly scale-invariant) keeps it in range."""
    dataset_size = 10**9
    x, _ = blobs(torch.float32)
    target = x[:, :1] * x[:, 1:]
    loss_fn = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=dataset_size)

    net = mlp(1e-8, torch.float32, outputs=1)
    loss_fn(net(x, samples=4), target).backward()
    largest = max(float(p.grad.abs().max()) for p in net.parameters())
    assert largest**2 > torch.finfo(torch.float32).max  # grad**2 overflows

    net = mlp(1e-8, torch.float32, outputs=1)
    before = snapshot(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(25):
        loss = loss_fn(net(x, samples=4), target) / dataset_size
        optimizer.zero_grad()
        loss.backward()
        assert_finite_step(net, loss, step)
        optimizer.step()
    assert_all_moved(before, net)
    for state in optimizer.state.values():
        assert torch.isfinite(state["exp_avg_sq"]).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("dataset_size", [1, 10**9])
@pytest.mark.parametrize("std", [1e-8, 1e3])
def test_pyro_training_stays_finite(
    std: float, dataset_size: int, dtype: torch.dtype
) -> None:
    x, y = blobs(dtype)
    net = mlp(std, dtype, outputs=2)

    def model(x: Tensor, y: Tensor) -> None:
        logits = net(x)
        with pyro.plate("data", dataset_size, subsample=torch.arange(len(x))):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    before = snapshot(net)
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for step in range(25):
        loss = svi.step(x, y)
        assert_finite_step(net, loss, step)
    assert_all_moved(before, net)


def test_a_longer_torch_blue_run_converges_without_nan() -> None:
    x, y = blobs(torch.float32, n=128)
    net = mlp(None, torch.float32, outputs=2)
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=len(x), track=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(300):
        loss = loss_fn(net(x, samples=4), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item()), step
    assert_finite_step(net, loss, step)
    history = torch.tensor(loss_fn.log["data_fitting"])
    assert history[-20:].mean() < 0.2 * history[:20].mean()
    with torch.no_grad():
        probs = net(x, samples=20).softmax(-1).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.95


def test_a_longer_pyro_run_converges_without_nan() -> None:
    x, y = blobs(torch.float32, n=128)
    net = mlp(None, torch.float32, outputs=2)

    def model(x: Tensor, y: Tensor | None = None) -> None:
        logits = net(x)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(300)]
    assert all(math.isfinite(loss) for loss in losses)
    assert_finite_step(net, losses[-1], 300)
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    with torch.no_grad():
        probs = net(x, samples=20).softmax(-1).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.95


# ----------------------------------------------------------- closed forms (float64)
def normal_parameters(*shape: int) -> tuple[Tensor, Tensor]:
    return torch.randn(*shape, dtype=F64), 0.5 * torch.randn(*shape, dtype=F64)


def test_normal_log_prob_is_torch_normal(norm_constants: None) -> None:
    mean, log_std = normal_parameters(4, 3)
    sample = torch.randn(4, 3, dtype=F64)
    ours = MeanFieldNormal(eps=0.0).log_prob(sample, (mean, log_std))
    torch.testing.assert_close(ours, Normal(mean, log_std.exp()).log_prob(sample))


@pytest.mark.parametrize("constants", [True, False])
def test_rsample_log_prob_is_the_density_of_the_draws(constants: bool) -> None:
    mean, log_std = normal_parameters(5, 3)
    use_norm_constants(constants)
    try:
        samples, log_prob = MeanFieldNormal().rsample_with_log_prob(
            (mean, log_std), 7, True
        )
    finally:
        use_norm_constants(False)
    assert samples.shape == (7, 5, 3) and log_prob.shape == (7,)
    exact = Normal(mean, log_std.exp()).log_prob(samples).sum(dim=(1, 2))
    if not constants:
        exact = exact + 15 * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, exact)


def test_student_t_rsample_log_prob_is_the_density_of_the_draws(
    norm_constants: None,
) -> None:
    mean, log_scale = normal_parameters(5, 3)
    variational = MeanFieldStudentT(degrees_of_freedom=3.5)
    samples, log_prob = variational.rsample_with_log_prob((mean, log_scale), 6, True)
    exact = StudentT(3.5, mean, log_scale.exp()).log_prob(samples)
    torch.testing.assert_close(log_prob, exact.sum(dim=(1, 2)))
    torch.testing.assert_close(variational.log_prob(samples, (mean, log_scale)), exact)


@pytest.mark.parametrize("prior_mean, prior_std", [(0.0, 1.0), (0.3, 0.2)])
def test_prior_log_prob_per_sample_is_torch_normal(
    norm_constants: None, prior_mean: float, prior_std: float
) -> None:
    prior = MeanFieldNormal(prior_mean, prior_std)
    samples = torch.randn(6, 4, 3, dtype=F64)
    # The prior keeps its hyperparameters as float32 tensors (as torch_blue does), so
    # a float64 model's prior is N(0.30000001192..., ...): compare with those values.
    mean, std = float(prior.mean), math.exp(float(prior.log_std))
    assert mean == pytest.approx(prior_mean, rel=1e-7)
    scale = math.sqrt(std**2 + prior.eps)
    exact = Normal(mean, scale).log_prob(samples).sum(dim=(1, 2))
    torch.testing.assert_close(prior.log_prob_per_sample(samples), exact)


def test_normal_normal_divergence_is_torch_kl() -> None:
    q_mean, q_log_std = normal_parameters(30)
    p_mean, p_log_std = normal_parameters(30)
    ours = vi.NormalNormalDivergence()((p_mean, p_log_std), (q_mean, q_log_std))
    exact = kl_divergence(
        Normal(q_mean, q_log_std.exp()), Normal(p_mean, p_log_std.exp())
    ).sum()
    torch.testing.assert_close(ours, exact)


@pytest.mark.parametrize("constants", [True, False])
def test_uniform_normal_divergence_is_minus_the_entropy(constants: bool) -> None:
    q_mean, q_log_std = normal_parameters(30)
    use_norm_constants(constants)
    try:
        ours = vi.UniformNormalDivergence()((None,), (q_mean, q_log_std))
    finally:
        use_norm_constants(False)
    exact = -Normal(q_mean, q_log_std.exp()).entropy().sum()
    if not constants:
        exact = exact + 30 * 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(ours, exact)


def test_layer_log_probs_are_the_closed_forms_of_the_drawn_weights(
    recorder, norm_constants: None
) -> None:
    layer = vi.VILinear(5, 4, dtype=F64)
    with recorder:
        output = layer(torch.randn(3, 5, dtype=F64), samples=6)
    weight, bias = recorder.values["weight"], recorder.values["bias"]
    prior = Normal(torch.zeros((), dtype=F64), math.sqrt(1.0 + 1e-10))
    log_prior = prior.log_prob(weight).sum((1, 2)) + prior.log_prob(bias).sum(1)
    q_weight = Normal(layer._weight_mean, layer._weight_log_std.exp())
    q_bias = Normal(layer._bias_mean, layer._bias_log_std.exp())
    log_q = q_weight.log_prob(weight).sum((1, 2)) + q_bias.log_prob(bias).sum(1)
    torch.testing.assert_close(output.log_probs, torch.stack((log_prior, log_q), 1))


def test_monte_carlo_kl_of_the_loss_estimates_the_analytic_kl() -> None:
    layer = vi.VILinear(6, 5, dtype=F64)
    num_samples = 4000
    with torch.no_grad():
        log_probs = layer(torch.zeros(1, 6, dtype=F64), samples=num_samples).log_probs
        estimates = log_probs[:, 1] - log_probs[:, 0]
        exact = vi.AnalyticalKullbackLeiblerLoss(layer, Categorical()).prior_matching()
    error = (estimates.mean() - exact).abs()
    assert error < 4 * estimates.std() / math.sqrt(num_samples)


def test_categorical_log_prob_is_torch_categorical_of_the_mean_probabilities() -> None:
    logits = torch.randn(5, 7, 4, dtype=F64)
    labels = torch.randint(0, 4, (7,))
    ours = Categorical(eps=0.0).log_prob_from_samples(labels, logits)
    mean_probs = logits.softmax(-1).mean(0)
    exact = torch.distributions.Categorical(probs=mean_probs).log_prob(labels)
    torch.testing.assert_close(ours, exact)


def test_normal_predictive_log_prob_is_torch_normal_of_the_sample_moments(
    norm_constants: None,
) -> None:
    outputs = torch.randn(6, 7, 2, dtype=F64)
    target = torch.randn(7, 2, dtype=F64)
    ours = MeanFieldNormal(eps=0.0).log_prob_from_samples(target, outputs)
    exact = Normal(outputs.mean(0), outputs.std(0)).log_prob(target)
    torch.testing.assert_close(ours, exact)


# ------------------------------------------------------------------- gradcheck
def double(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=F64, requires_grad=True)


@pytest.mark.parametrize("shared_input", [True, False], ids=["expanded", "per-sample"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradcheck_linear_with_stacked_weights(
    shared_input: bool, with_bias: bool
) -> None:
    samples = 3
    x = double(2, 4, 5) if shared_input else double(samples, 2, 4, 5)
    weight, bias = double(samples, 6, 5), double(samples, 6)

    def f(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if shared_input:  # the stride-0 expansion the outermost module makes
            x = x.expand(samples, *x.shape)
        return functional.linear(x, weight, bias if with_bias else None)

    assert gradcheck(f, (x, weight, bias))


def test_gradcheck_linear_with_a_plain_weight() -> None:
    assert gradcheck(functional.linear, (double(4, 5), double(6, 5), double(6)))


CONVOLUTIONS: dict[int, Callable[..., Tensor]] = {
    1: functional.conv1d,
    2: functional.conv2d,
    3: functional.conv3d,
}


@pytest.mark.parametrize(
    "dims, groups, mode, shared_input",
    [
        (1, 1, "zeros", True),
        (1, 2, "reflect", False),
        (2, 1, "zeros", True),
        (2, 1, "circular", False),
        (2, 2, "replicate", True),
        (3, 1, "zeros", True),
        (3, 2, "zeros", False),
    ],
)
def test_gradcheck_convolution_with_stacked_weights(
    dims: int, groups: int, mode: str, shared_input: bool
) -> None:
    samples, channels, size = 2, 2, (4 if dims < 3 else 3)
    spatial = (size,) * dims
    x = (
        double(1, channels, *spatial)
        if shared_input
        else double(samples, 1, channels, *spatial)
    )
    weight = double(samples, 2, channels // groups, *(2,) * dims)
    bias = double(samples, 2)
    convolve = CONVOLUTIONS[dims]

    def f(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if shared_input:
            x = x.expand(samples, *x.shape)
        return convolve(
            x, weight, bias, stride=1, padding=1, groups=groups, padding_mode=mode
        )

    assert gradcheck(f, (x, weight, bias))


def test_gradcheck_attention_with_stacked_weights() -> None:
    samples, embed, heads = 2, 4, 2
    query = double(samples, 1, 3, embed)
    in_proj = double(samples, 3 * embed, embed)
    in_bias = double(samples, 3 * embed)
    out_proj, out_bias = double(samples, embed, embed), double(samples, embed)

    def f(*tensors: Tensor) -> Tensor:
        query, in_proj, in_bias, out_proj, out_bias = tensors
        output, weights = functional.multi_head_attention(
            query,
            query,
            query,
            heads,
            in_proj,
            in_bias,
            out_proj,
            out_bias,
            need_weights=True,
        )
        return output.sum() + weights.square().sum()

    assert gradcheck(f, (query, in_proj, in_bias, out_proj, out_bias))


@pytest.mark.parametrize(
    "variational", [MeanFieldNormal(), MeanFieldStudentT()], ids=["normal", "t"]
)
def test_gradcheck_rsample_with_log_prob_with_fixed_noise(variational) -> None:
    mean, log_std = double(3, 2), double(3, 2)

    def f(mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
        torch.manual_seed(11)  # the same noise at every evaluation
        samples, log_prob = variational.rsample_with_log_prob((mean, log_std), 4, True)
        return samples, log_prob

    first, second = f(mean, log_std), f(mean, log_std)
    assert torch.equal(first[0], second[0])  # the noise really is fixed
    assert gradcheck(f, (mean, log_std))


@pytest.mark.parametrize("prior", [MeanFieldNormal(), MeanFieldNormal(0.5, 0.3)])
def test_gradcheck_log_prob_per_sample(prior: MeanFieldNormal) -> None:
    assert gradcheck(prior.log_prob_per_sample, (double(4, 3, 2),))


def test_gradcheck_normal_normal_divergence() -> None:
    divergence = vi.NormalNormalDivergence()
    assert gradcheck(
        lambda *p: divergence(p[:2], p[2:]),
        (double(5), double(5), double(5), double(5)),
    )


def test_gradcheck_uniform_normal_divergence(norm_constants: None) -> None:
    divergence = vi.UniformNormalDivergence()
    assert gradcheck(lambda m, s: divergence((None,), (m, s)), (double(5), double(5)))


def test_gradcheck_predictive_log_probs() -> None:
    labels = torch.randint(0, 3, (4,))
    assert gradcheck(
        lambda logits: Categorical().log_prob_from_samples(labels, logits),
        (double(5, 4, 3),),
    )
    target = torch.randn(4, 2, dtype=F64)
    assert gradcheck(
        lambda outputs: MeanFieldNormal().log_prob_from_samples(target, outputs),
        (double(5, 4, 2),),
    )


def test_a_diverged_parameter_is_named_by_layer_and_variable() -> None:
    model = vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 2))
    with torch.no_grad():
        model[2]._weight_log_std[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"'2\._weight_log_std'.*'2\.weight'"):
        model(torch.randn(3, 4), samples=2)
