"""VariationalOnlineNewton reaches the variational optimum, in both modes.

The closed form: Bayesian linear regression with known noise and a normal prior,
whose mean-field optimum has the exact posterior mean as means and
``1 / diag(posterior precision)`` as variances (with ``heat`` eta, the posterior of
the likelihood to the power ``1 / eta``). One input is zero in every example: its
weight's optimum is the prior.
"""

from __future__ import annotations

import copy as copy_module
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn

from tests.zoo import ZOO, ZooModel, dropout_off
from torch_blue_pyro import uncertainty, vi
from torch_blue_pyro.optim import (
    PyroVariationalOnlineNewton,
    VariationalOnlineNewton,
    gaussian_factors,
    point_parameters,
)

N, FEATURES, NOISE_STD, PRIOR_STD = 200, 6, 0.5, 1.0
STEPS = 900  # the documented budget of these settings (1 / precision_lr = 50 steps)
SETTINGS = {"lr": 0.1, "precision_lr": 0.02}
SAMPLES = 32


class Regression:
    """The data and the closed-form mean-field optimum."""

    def __init__(self, heat: float = 1.0) -> None:
        generator = torch.Generator().manual_seed(0)
        mixing = torch.eye(FEATURES) + torch.diag(
            torch.tensor([0.5, 0.5, 0, 0.3, 0]), 1
        )
        self.x = torch.randn(N, FEATURES, generator=generator) @ mixing
        self.x[:, -1] = 0.0  # the input no example uses
        weight = torch.randn(FEATURES, generator=generator)
        self.y = self.x @ weight + NOISE_STD * torch.randn(N, generator=generator)
        precision = (
            self.x.T @ self.x / (NOISE_STD**2 * heat)
            + torch.eye(FEATURES) / PRIOR_STD**2
        )
        self.mean = torch.linalg.solve(precision, self.x.T @ self.y) / (
            NOISE_STD**2 * heat
        )
        self.std = precision.diagonal().rsqrt()
        self.heat = heat


def _layer(initial_std: float) -> vi.VILinear:
    layer = vi.VILinear(
        FEATURES,
        1,
        bias=False,
        prior=vi.distributions.MeanFieldNormal(std=PRIOR_STD),
        variational_distribution=vi.distributions.MeanFieldNormal(std=initial_std),
        kaiming_initialization=False,
    )
    with torch.no_grad():
        layer._weight_mean.normal_(0.0, 0.1)
    return layer


def _train_torch_blue(task: Regression, initial_std: float, steps: int) -> vi.VILinear:
    """Any torch loop: the expected log-likelihood plus the sampled KL term."""
    layer = _layer(initial_std)
    optimizer = VariationalOnlineNewton(layer, heat=task.heat, **SETTINGS)
    for _ in range(steps):
        output = layer(task.x, samples=SAMPLES)
        squared_error = (task.y - output.as_tensor()[..., 0]) ** 2
        log_prior, log_variational = output.log_probs.mean(dim=0)
        loss = 0.5 * N * squared_error.mean() / NOISE_STD**2
        loss = loss + task.heat * (log_variational - log_prior)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return layer


def _train_pyro(task: Regression, initial_std: float, steps: int) -> vi.VILinear:
    """SVI with Trace_ELBO and the layer's own guide."""
    layer = _layer(initial_std)

    def model(x: Tensor, y: Tensor) -> None:
        with pyro.poutine.scale(scale=task.heat):
            mean = layer(x)[..., 0]
        with pyro.plate("data", N, dim=-1):
            pyro.sample("obs", dist.Normal(mean, NOISE_STD), obs=y)

    def guide(x: Tensor, y: Tensor) -> None:
        with pyro.poutine.scale(scale=task.heat):
            layer.guide()

    pyro.clear_param_store()
    elbo = Trace_ELBO(num_particles=SAMPLES, vectorize_particles=True)
    optim = PyroVariationalOnlineNewton(layer, heat=task.heat, **SETTINGS)
    svi = SVI(model, guide, optim, elbo)
    for _ in range(steps):
        svi.step(task.x, task.y)
    return layer


TRAIN = {"torch_blue": _train_torch_blue, "pyro": _train_pyro}


def _assert_at_optimum(layer: vi.VILinear, task: Regression) -> None:
    mean = layer._weight_mean.detach()[0]
    std = layer._weight_log_std.detach()[0].exp()
    # Means within a third of a posterior std (under 1 % of their values here).
    assert torch.all((mean - task.mean).abs() < 0.3 * task.std), (mean, task.mean)
    torch.testing.assert_close(std[:-1], task.std[:-1], rtol=0.06, atol=0.0)
    # The unused input's weight is at its prior, within 5 %.
    assert abs(float(std[-1]) / PRIOR_STD - 1) < 0.05, float(std[-1])
    assert abs(float(mean[-1])) < 0.3 * PRIOR_STD


@pytest.mark.parametrize("mode", ["torch_blue", "pyro"])
@pytest.mark.parametrize("initial_std", [0.01, 1.0])
def test_linear_regression_reaches_the_mean_field_optimum(
    mode: str, initial_std: float
) -> None:
    task = Regression()
    # From std 0.01 the precision falls 80-fold in 1 / precision_lr * ln(1e4) steps.
    _assert_at_optimum(TRAIN[mode](task, initial_std, STEPS), task)


@pytest.mark.parametrize("mode", ["torch_blue", "pyro"])
def test_a_tempered_loss_reaches_the_tempered_optimum(mode: str) -> None:
    task = Regression(heat=0.5)
    _assert_at_optimum(TRAIN[mode](task, 0.1, STEPS), task)


@pytest.mark.parametrize("mode", ["torch_blue", "pyro"])
def test_three_times_the_steps_end_at_the_same_posterior(mode: str) -> None:
    task = Regression()
    short = TRAIN[mode](task, 0.01, STEPS)
    long = TRAIN[mode](task, 0.01, 3 * STEPS)
    torch.testing.assert_close(
        long._weight_log_std.exp(), short._weight_log_std.exp(), rtol=0.08, atol=0.0
    )
    difference = (long._weight_mean - short._weight_mean).abs()[0].detach()
    assert torch.all(difference < 0.4 * task.std)


def test_adam_ends_where_its_schedule_puts_the_std() -> None:
    """What the optimizer is for: Adam's stds depend on the number of steps."""
    task = Regression()
    layer = _layer(0.01)
    adam = torch.optim.Adam(layer.parameters(), lr=3e-3)
    stds = []
    for steps in (300, 600):
        for _ in range(steps - (300 if stds else 0)):
            output = layer(task.x, samples=4)
            error = (task.y - output.as_tensor()[..., 0]) ** 2
            log_prior, log_variational = output.log_probs.mean(dim=0)
            loss = 0.5 * N * error.mean() / NOISE_STD**2 + log_variational - log_prior
            adam.zero_grad()
            loss.backward()
            adam.step()
        stds.append(float(layer._weight_log_std.detach()[0, -1].exp()))
    # The unused weight's std grows with the steps, far below its prior's 1.0.
    assert stds[0] < stds[1] < 0.2


@pytest.mark.parametrize("initial_std", [0.01, 1.0])
def test_a_weight_no_example_uses_ends_at_the_prior_under_kullback_leibler_loss(
    initial_std: float,
) -> None:
    """Classification with torch_blue's own loss; pixel 0 is blank in every image."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(300, 4, generator=generator)
    x[:, 0] = 0.0
    y = (x[:, 1] + x[:, 2] + 0.5 * torch.randn(300, generator=generator) > 0).long()
    prior = vi.distributions.MeanFieldNormal(std=0.5)
    model = vi.VILinear(
        4,
        2,
        prior=prior,
        variational_distribution=vi.distributions.MeanFieldNormal(std=initial_std),
    )
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=300)
    optimizer = VariationalOnlineNewton(model, precision_lr=0.02)
    for _ in range(600):
        loss = loss_fn(model(x, samples=8), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    std = model._weight_log_std.detach().exp()
    torch.testing.assert_close(std[:, 0], torch.full((2,), 0.5), rtol=0.05, atol=0.0)
    # The inputs the labels depend on: set by the data, well below the prior.
    assert torch.all(std[:, 1:3] < 0.7 * 0.5)
    probabilities = uncertainty.predictive_probabilities(model(x, samples=16))
    assert (probabilities.argmax(-1) == y).float().mean() > 0.8


# ------------------------------------------------------------- every layer kind
@pytest.mark.parametrize("entry", ZOO, ids=repr)
def test_every_zoo_model_is_covered_and_trains(entry: ZooModel) -> None:
    model = entry.build()
    dropout_off(model)
    factors = gaussian_factors(model)
    covered = {id(p) for factor in factors for p in (factor.mean, factor.log_std)}
    everything = {id(p) for p in model.parameters() if p.requires_grad}
    assert covered | {id(p) for p in point_parameters(model)} == everything
    assert covered.isdisjoint(id(p) for p in point_parameters(model))
    optimizer = VariationalOnlineNewton(model)
    inputs = entry.inputs()
    targets = torch.randint(0, entry.classes, (inputs[0].shape[0],))
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=64)
    before = [p.detach().clone() for p in optimizer.param_groups[0]["params"]]
    loss = loss_fn(model(*inputs, samples=2), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = optimizer.param_groups[0]["params"]
    moved = [not torch.equal(b, a) for b, a in zip(before, after, strict=True)]
    assert all(moved)
    assert all(torch.isfinite(p).all() for p in after)


def test_hierarchical_priors_hyper_variables_are_factors_too() -> None:
    layer = vi.VILinear(3, 2, prior=vi.distributions.Horseshoe())
    names = [factor.name for factor in gaussian_factors(layer)]
    assert names[0] == "weight" and "bias" in names
    assert "weight_tau" in names  # named as the hyper-variable's sample site
    assert point_parameters(layer) == []


def test_non_gaussian_variational_parameters_are_point_parameters() -> None:
    layer = vi.VILinear(
        3, 2, variational_distribution=vi.distributions.MeanFieldStudentT()
    )
    assert gaussian_factors(layer) == []
    assert len(point_parameters(layer)) == len(list(layer.parameters()))


def test_the_state_dict_restores_the_next_step_exactly() -> None:
    task = Regression()
    layer = _layer(0.1)
    optimizer = VariationalOnlineNewton(layer)

    def step(model: vi.VILinear, optim: VariationalOnlineNewton) -> None:
        torch.manual_seed(3)
        output = model(task.x, samples=4)
        log_prior, log_variational = output.log_probs.mean(dim=0)
        loss = ((task.y - output.as_tensor()[..., 0]) ** 2).sum() + log_variational
        optim.zero_grad()
        (loss - log_prior).backward()
        optim.step()

    for _ in range(3):
        step(layer, optimizer)
    copy = _layer(0.1)
    copy.load_state_dict(layer.state_dict())
    restored = VariationalOnlineNewton(copy)
    restored.load_state_dict(copy_module.deepcopy(optimizer.state_dict()))
    step(layer, optimizer)
    step(copy, restored)
    torch.testing.assert_close(copy.state_dict(), layer.state_dict())


def test_a_learning_rate_scheduler_changes_the_means_step() -> None:
    layer = _layer(0.1)
    optimizer = VariationalOnlineNewton(layer, lr=0.2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_unused_factors_do_not_move() -> None:
    model = nn.ModuleList([vi.VILinear(2, 2), vi.VILinear(2, 2)])
    optimizer = VariationalOnlineNewton(model)
    before = model[1]._weight_mean.detach().clone()
    model[0](torch.randn(3, 2), samples=2).sum().backward()  # model[1] unused
    optimizer.step()
    assert torch.equal(model[1]._weight_mean, before)


def test_pyro_others_trains_a_learned_noise() -> None:
    task = Regression()
    layer = _layer(0.1)

    def model(x: Tensor, y: Tensor) -> None:
        scale = pyro.param(
            "noise", torch.tensor(2.0), constraint=dist.constraints.positive
        )
        mean = layer(x)[..., 0]
        with pyro.plate("data", N):
            pyro.sample("obs", dist.Normal(mean, scale), obs=y)

    pyro.clear_param_store()
    optim = PyroVariationalOnlineNewton(layer, others=pyro.optim.Adam({"lr": 0.05}))
    svi = SVI(model, lambda x, y: layer.guide(), optim, Trace_ELBO())
    for _ in range(300):
        svi.step(task.x, task.y)
    assert abs(float(pyro.param("noise")) - NOISE_STD) < 0.15
    state = optim.get_state()
    assert set(state) == {"factors", "others"}
    optim.set_state(state)


# ----------------------------------------------------------------- validation
# The errors of bad input are cases of tests/test_bad_input.py (docs/reliability.md).
def test_without_validation_a_non_finite_gradient_is_not_read() -> None:
    model = vi.VISequential(vi.VILinear(2, 2), vi.VILinear(2, 1))
    optimizer = VariationalOnlineNewton(model)
    model(torch.randn(3, 2), samples=2).sum().backward()
    model[1]._weight_log_std.grad[0, 0] = math.nan
    with pyro.validation_enabled(False):
        optimizer.step()  # no host-device synchronisation, as Pyro's own checks
    assert torch.isnan(model[1]._weight_log_std[0, 0])


# ------------------------------------------------------- the documented settings
UNCERTAINTY_PAGE = Path(__file__).parents[1] / "docs" / "uncertainty.md"


def _recommended_blocks() -> list[str]:
    """The code blocks of the uncertainty page's "Recommended settings"."""
    section = UNCERTAINTY_PAGE.read_text().split("## Recommended settings", 1)[1]
    section = section.split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_the_recommended_settings_run_as_written() -> None:
    blocks = _recommended_blocks()
    assert len(blocks) == 2  # classification, regression
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(UNCERTAINTY_PAGE), "exec"), namespace)
    classifier = namespace["model"]
    assert isinstance(namespace["optimizer"], VariationalOnlineNewton)
    assert float(classifier[0].prior["weight"].std) == pytest.approx(
        8 / math.sqrt(3 * 64), rel=1e-3
    )
    exec(compile(blocks[1], str(UNCERTAINTY_PAGE), "exec"), namespace)
    regressor, loss_fn = namespace["model"], namespace["loss_fn"]
    optimizer = namespace["optimizer"]
    assert optimizer.param_groups[0]["heat"] == loss_fn.heat == 0.3
    x, y = torch.randn(32, 13), torch.randn(32, 1)
    loss = loss_fn(regressor(x, samples=4), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_tied_parameters_are_one_factor() -> None:
    model = nn.ModuleDict({"first": vi.VILinear(3, 3), "second": vi.VILinear(3, 3)})
    model["second"]._weight_mean = model["first"]._weight_mean
    model["second"]._weight_log_std = model["first"]._weight_log_std
    names = [factor.name for factor in gaussian_factors(model)]
    assert names == ["first.weight", "first.bias", "second.bias"]
    VariationalOnlineNewton(model)  # no parameter in two places
