import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import (
    MeanFieldNormal,
    NonBayesian,
    PredictiveDistribution,
    Prior,
    UniformPrior,
    VariationalDistribution,
)
from torch_blue_pyro.vi.utils import UnsupportedDistributionError, use_norm_constants

torch_blue_vi = pytest.importorskip("torch_blue.vi")


def mixed_layer(n_in: int = 4, n_out: int = 3) -> vi.VILinear:
    """Normal weight, point-estimate bias with a flat prior."""
    return vi.VILinear(
        n_in,
        n_out,
        variational_distribution=[MeanFieldNormal(), NonBayesian()],
        prior=[MeanFieldNormal(), UniformPrior()],
    )


def test_roles() -> None:
    assert isinstance(NonBayesian(), (Prior, VariationalDistribution))
    assert isinstance(NonBayesian(), PredictiveDistribution)
    assert isinstance(NonBayesian(), UniformPrior)  # torch_blue 1.1's hierarchy
    uniform = UniformPrior()
    assert uniform.is_prior and not uniform.is_variational_distribution
    assert not uniform.is_predictive_distribution
    with pytest.raises(UnsupportedDistributionError, match="UniformPrior cannot"):
        vi.VILinear(4, 3, variational_distribution=UniformPrior())
    with pytest.raises(UnsupportedDistributionError, match="UniformPrior cannot"):
        vi.KullbackLeiblerLoss(UniformPrior())


def test_variational_samples_are_the_mean_with_zero_log_prob(recorder) -> None:
    layer = vi.VILinear(4, 3, variational_distribution=NonBayesian())
    with recorder:
        output = layer(torch.randn(5, 4), samples=3)
    for name in ("weight", "bias"):
        value, mean = recorder.values[name], getattr(layer, f"_{name}_mean")
        torch.testing.assert_close(value, mean.expand(3, *mean.shape))
    torch.testing.assert_close(output.log_probs[:, 1], torch.zeros(3))
    # The normal prior scores the point estimate: a weight decay.
    prior = MeanFieldNormal()
    expected = sum(
        prior.prior_log_prob(getattr(layer, f"_{name}_mean")).sum()
        for name in ("weight", "bias")
    )
    torch.testing.assert_close(output.log_probs[:, 0], expected.expand(3))


def test_mixing_point_estimates_and_bayesian_variables_with_log_probs(
    recorder,
) -> None:
    """torch_blue (0.9 and 1.1) fails to stack the log-probs of such a layer."""
    layer = mixed_layer()
    x, target = torch.randn(8, 4), torch.randn(8, 3)
    with recorder:
        output = layer(x, samples=4)
    weight = recorder.values["weight"]
    prior = MeanFieldNormal().prior_log_prob(weight).flatten(1).sum(1)
    variational = (
        MeanFieldNormal()
        .variational_log_prob(weight, (layer._weight_mean, layer._weight_log_std))
        .flatten(1)
        .sum(1)
    )
    torch.testing.assert_close(output.log_probs, torch.stack((prior, variational), 1))
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=50)(output, target)
    loss.backward()
    assert layer._bias_mean.grad is not None and layer._bias_mean.grad.ne(0).any()

    theirs = torch_blue_vi.VILinear(
        4,
        3,
        variational_distribution=[
            torch_blue_vi.distributions.MeanFieldNormal(),
            torch_blue_vi.distributions.NonBayesian(),
        ],
        prior=[
            torch_blue_vi.distributions.MeanFieldNormal(),
            torch_blue_vi.distributions.UniformPrior(),
        ],
    )
    with pytest.raises(RuntimeError, match="stack expects each tensor"):
        theirs(x, samples=4)


class SingleSampleLinear(vi.VIModule):
    """torch_blue's Level-4 style, run per sample under vmap."""

    def __init__(self, n_in: int, n_out: int, **kwargs) -> None:
        super().__init__({"weight": (n_out, n_in), "bias": (n_out,)}, **kwargs)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def test_point_estimate_layer_in_a_bayesian_model_and_per_sample_modules() -> None:
    model = vi.VISequential(
        vi.VILinear(4, 8, variational_distribution=NonBayesian(), prior=UniformPrior()),
        nn.ReLU(),
        SingleSampleLinear(
            8,
            3,
            variational_distribution=[MeanFieldNormal(), NonBayesian()],
            prior=[MeanFieldNormal(), NonBayesian()],
        ),
    )
    output = model(torch.randn(6, 4), samples=5)
    assert output.shape == (5, 6, 3) and output.log_probs.shape == (5, 2)
    assert output.log_probs[:, 1].ne(0).all()
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=20)
    loss(output, torch.randn(6, 3)).backward()
    assert model[0]._weight_mean.grad is not None


@pytest.mark.parametrize("loss_type", ["MSE", "L2", "MAE", "L1"])
def test_predictive_role_matches_torch_blue(loss_type: str) -> None:
    samples, target = torch.randn(5, 6, 3), torch.randn(6, 3)
    ours = NonBayesian(loss_type).log_prob_from_samples(target, samples)
    theirs = torch_blue_vi.distributions.NonBayesian(loss_type).log_prob_from_samples(
        target, samples
    )
    torch.testing.assert_close(ours, theirs)
    loss = F.mse_loss if loss_type in ("MSE", "L2") else F.l1_loss
    torch.testing.assert_close(ours, -loss(samples.mean(0), target))


def test_all_point_estimates_give_a_plain_loss() -> None:
    model = vi.VILinear(
        4, 3, variational_distribution=NonBayesian(), prior=NonBayesian()
    )
    x, target = torch.randn(8, 4), torch.randn(8, 3)
    output = model(x, samples=2)
    torch.testing.assert_close(output.log_probs, torch.zeros(2, 2))
    loss = vi.KullbackLeiblerLoss(NonBayesian("MSE"), dataset_size=100)
    prediction = F.linear(x, model._weight_mean, model._bias_mean)
    torch.testing.assert_close(
        loss(output, target), 100 * F.mse_loss(prediction, target)
    )
    theirs = torch_blue_vi.KullbackLeiblerLoss(
        torch_blue_vi.distributions.NonBayesian("MSE"), dataset_size=100
    )
    torch.testing.assert_close(loss(output, target), theirs(output, target))


def test_norm_constants_do_not_apply() -> None:
    sample = torch.randn(3, 4)
    try:
        use_norm_constants(True)
        assert UniformPrior().prior_log_prob(sample).eq(0).all()
        _, log_q = NonBayesian().rsample_with_log_prob((sample,), 2, True)
        layer = mixed_layer()
        output = layer(torch.randn(2, 4), samples=2)
    finally:
        use_norm_constants(False)
    assert log_q is not None and log_q.eq(0).all()
    assert torch.isfinite(output.log_probs).all()


def test_missing_or_unknown_loss_type() -> None:
    with pytest.raises(ValueError, match=r"loss_type must be one of .*got 'mse2'"):
        NonBayesian("mse2")
    loss = vi.KullbackLeiblerLoss(NonBayesian(), dataset_size=4)
    output = vi.VIReturn(torch.randn(2, 4, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"NonBayesian\(\) has no loss_type"):
        loss(output, torch.randn(4, 3))


def test_uniform_prior_initialization_warns_and_keeps_parameters() -> None:
    with pytest.warns(
        UserWarning, match="does not implement reset_parameters_to_prior"
    ):
        vi.VILinear(4, 3, prior=UniformPrior(), prior_initialization=True)


# ------------------------------------------------------------------ Pyro


def test_pyro_forms() -> None:
    prior = UniformPrior().pyro_distribution(torch.Size([3, 4]), torch.zeros(()))
    assert prior.event_shape == (3, 4) and prior.batch_shape == ()
    torch.testing.assert_close(prior.log_prob(torch.randn(3, 4)), torch.tensor(0.0))
    with pytest.raises(NotImplementedError):
        prior.sample()
    mean = torch.randn(3, 4, requires_grad=True)
    guide = NonBayesian().pyro_distribution((mean,))
    assert isinstance(guide, dist.Delta) and guide.event_shape == (3, 4)
    value = guide.rsample()
    torch.testing.assert_close(value, mean)
    assert value.requires_grad
    assert NonBayesian().pyro_distribution(torch.Size([2]), mean).event_shape == (2,)


def test_svi_trains_point_estimates_next_to_bayesian_variables() -> None:
    net = mixed_layer()

    def model(x, y=None):
        out = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)

    guide_trace = poutine.trace(net.guide).get_trace()
    assert isinstance(guide_trace.nodes["bias"]["fn"], dist.Delta)
    before = net._bias_mean.detach().clone()
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(torch.randn(16, 4), torch.randn(16, 3)))
    assert not torch.equal(before, net._bias_mean)


def test_normal_prior_initializes_the_point_estimate() -> None:
    """torch_blue fails here: the normal prior also sets a log_std it lacks."""
    layer = vi.VILinear(
        4,
        3,
        variational_distribution=NonBayesian(),
        prior=MeanFieldNormal(0.5),
        prior_initialization=True,
    )
    torch.testing.assert_close(layer._weight_mean.detach(), torch.full((3, 4), 0.5))
