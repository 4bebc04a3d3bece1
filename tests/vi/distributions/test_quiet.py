import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import (
    BasicQuietPrior,
    MeanFieldNormal,
    MeanFieldStudentT,
    VariationalDistribution,
)
from torch_blue_pyro.vi.utils import UnsupportedDistributionError, use_norm_constants

torch_blue_vi = pytest.importorskip("torch_blue.vi")


@pytest.fixture
def norm_constants():
    """Switch normalization constants on for one test (both libraries)."""
    theirs = pytest.importorskip("torch_blue.vi.utils")
    use_norm_constants(True)
    theirs.use_norm_constants(True)
    yield
    use_norm_constants(False)
    theirs.use_norm_constants(False)


def quiet_log_prob_0_9(sample, mean, std_ratio, mean_mean, mean_std, constants):
    """torch_blue 0.9.2's BasicQuietPrior.prior_log_prob, written out."""
    variance = (std_ratio * mean) ** 2 + 1e-10
    value = (
        (sample - mean) ** 2 / variance
        + (mean - mean_mean) ** 2 / mean_std**2
        + variance.log()
        + 2 * math.log(mean_std)
    )
    if constants:
        value = value + 2 * math.log(2 * math.pi)
    return -0.5 * value


@pytest.mark.parametrize("constants", [False, True])
def test_log_prob_matches_torch_blue_0_9_and_1_1(constants: bool) -> None:
    sample = torch.randn(5, 4, dtype=torch.float64)
    mean = torch.randn(5, 4, dtype=torch.float64)
    prior = BasicQuietPrior(std_ratio=0.7, mean_mean=0.2, mean_std=1.5)
    theirs_1_1 = torch_blue_vi.distributions.BasicQuietPrior(0.7, 0.2, 1.5)
    their_utils = pytest.importorskip("torch_blue.vi.utils")
    try:
        use_norm_constants(constants)
        their_utils.use_norm_constants(constants)
        ours = prior.prior_log_prob(sample, (mean,))
        v1_1 = theirs_1_1.log_prob(
            sample, (theirs_1_1.mean_mean, theirs_1_1.mean_std, mean)
        )
    finally:
        use_norm_constants(False)
        their_utils.use_norm_constants(False)
    v0_9 = quiet_log_prob_0_9(sample, mean, 0.7, 0.2, 1.5, constants)
    torch.testing.assert_close(ours, v0_9, rtol=1e-12, atol=1e-12)
    # 1.1 adds eps to the variance of the means too: 1e-10 relative.
    torch.testing.assert_close(ours, v1_1, rtol=1e-7, atol=1e-7)


def test_log_prob_is_the_joint_density_of_weight_and_mean(norm_constants) -> None:
    sample, mean = torch.randn(6, dtype=torch.float64), torch.randn(6).double()
    prior = BasicQuietPrior(std_ratio=0.5, mean_mean=-0.3, mean_std=2.0)
    conditional = torch.distributions.Normal(mean, ((0.5 * mean) ** 2 + 1e-10).sqrt())
    hyper = torch.distributions.Normal(-0.3, 2.0)
    expected = conditional.log_prob(sample) + hyper.log_prob(mean)
    torch.testing.assert_close(prior.prior_log_prob(sample, mean), expected)


@pytest.mark.parametrize("constants", [False, True])
def test_closed_form_per_sample_equals_scoring(constants: bool) -> None:
    prior = BasicQuietPrior(std_ratio=0.3, mean_mean=0.1, mean_std=0.8)
    samples, mean = torch.randn(4, 3, 5).double(), torch.randn(3, 5).double()
    try:
        use_norm_constants(constants)
        fast = prior.log_prob_per_sample(samples, (mean,))
        scored = prior.prior_log_prob(samples, (mean,)).flatten(1).sum(1)
    finally:
        use_norm_constants(False)
    torch.testing.assert_close(fast, scored)


def test_both_call_styles_of_the_mean() -> None:
    prior, sample, mean = BasicQuietPrior(), torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(
        prior.prior_log_prob(sample, mean), prior.prior_log_prob(sample, (mean,))
    )
    torch.testing.assert_close(
        prior.log_prob(sample, prior.mean_mean, prior.mean_std, mean),
        prior.prior_log_prob(sample, mean),
    )
    with pytest.raises(ValueError, match="needs the variable's variational mean"):
        prior.log_prob_per_sample(sample.unsqueeze(0))
    with pytest.raises(ValueError, match=r"needs \(mean_mean, mean_std, mean\)"):
        prior.prior_log_prob(sample)


def test_layer_with_several_outputs_works_under_the_kl_loss(recorder) -> None:
    """torch_blue 1.1 unpacks the mean along its first dimension and fails here."""
    layer = vi.VILinear(4, 3, prior=BasicQuietPrior(std_ratio=0.5))
    x, target = torch.randn(8, 4), torch.randn(8, 3)
    with recorder:
        output = layer(x, samples=5)
    prior = BasicQuietPrior(std_ratio=0.5)
    expected = sum(
        prior.prior_log_prob(recorder.values[name], getattr(layer, f"_{name}_mean"))
        .flatten(1)
        .sum(1)
        for name in ("weight", "bias")
    )
    torch.testing.assert_close(output.log_probs[:, 0], expected)
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=100)(output, target)
    loss.backward()
    assert layer._weight_mean.grad is not None and layer._weight_mean.grad.ne(0).all()

    theirs = torch_blue_vi.VILinear(
        4, 3, prior=torch_blue_vi.distributions.BasicQuietPrior(0.5)
    )
    with pytest.raises(ValueError, match="too many values to unpack"):
        theirs(x, samples=5)


def test_log_prior_of_the_model_matches_torch_blue_1_1_for_one_output() -> None:
    """Where torch_blue 1.1 works (one output), it gives the same log prior."""
    ours = vi.VILinear(4, 1, prior=BasicQuietPrior(0.5, 0.1, 2.0))
    theirs = torch_blue_vi.VILinear(
        4, 1, prior=torch_blue_vi.distributions.BasicQuietPrior(0.5, 0.1, 2.0)
    )
    theirs.load_state_dict(ours.state_dict())
    weight = torch.randn(1, 4)
    torch.testing.assert_close(
        ours.get_log_probs(weight, "weight")[0],
        theirs.get_log_probs(weight, "weight")[0],
    )


def test_prior_initialization_draws_the_means_and_sets_the_stds() -> None:
    layer = vi.VILinear(
        40, 50, prior=BasicQuietPrior(0.5, 1.0, 0.1), prior_initialization=True
    )
    mean = layer._weight_mean.detach()
    assert abs(float(mean.mean()) - 1.0) < 0.02 and abs(float(mean.std()) - 0.1) < 0.02
    torch.testing.assert_close(
        layer._weight_log_std.detach(), torch.log(0.5 * mean.abs())
    )


def test_kaiming_rescale_scales_the_hyperprior_not_eps() -> None:
    prior = BasicQuietPrior(std_ratio=2.0, mean_mean=0.6, mean_std=1.2)
    prior.kaiming_rescale(12)
    scale = 1 / math.sqrt(36)
    assert float(prior.mean_mean) == pytest.approx(0.6 * scale)
    assert float(prior.mean_std) == pytest.approx(1.2 * scale)
    assert prior.eps == 1e-10 and prior.std_ratio == 2.0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"std_ratio": 0.0}, "std_ratio"),
        ({"std_ratio": -1.0}, "std_ratio"),
        ({"mean_std": 0.0}, "mean_std"),
        ({"mean_std": float("nan")}, "mean_std"),
        ({"mean_mean": float("inf")}, "mean_mean"),
        ({"eps": -1e-3}, "eps"),
    ],
)
def test_invalid_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=f"{argument} must be"):
        BasicQuietPrior(**kwargs)


def test_only_a_prior() -> None:
    with pytest.raises(UnsupportedDistributionError, match="BasicQuietPrior cannot"):
        vi.VILinear(4, 3, variational_distribution=BasicQuietPrior())
    with pytest.raises(UnsupportedDistributionError, match="BasicQuietPrior cannot"):
        vi.KullbackLeiblerLoss(BasicQuietPrior())
    with pytest.raises(ValueError, match="one distribution or a list of one per"):
        vi.VILinear(4, 3, prior=[BasicQuietPrior()])


def test_needs_a_variational_mean() -> None:
    class LocScale(VariationalDistribution):
        distribution_parameters = ("loc", "log_scale")
        _default_variational_parameters = (0.0, 0.0)

        def sample(self, parameters):
            loc, log_scale = parameters
            return loc + log_scale.exp() * torch.randn_like(loc)

        def log_prob(self, sample, parameters):
            loc, log_scale = parameters
            return -0.5 * ((sample - loc) / log_scale.exp()) ** 2 - log_scale

    layer = vi.VILinear(
        4, 3, variational_distribution=LocScale(), prior=BasicQuietPrior()
    )
    with pytest.raises(UnsupportedDistributionError, match=r"needs the variational"):
        layer(torch.randn(2, 4), samples=2)


def test_works_with_a_student_t_variational_distribution() -> None:
    layer = vi.VILinear(
        4, 3, variational_distribution=MeanFieldStudentT(), prior=BasicQuietPrior()
    )
    assert torch.isfinite(layer(torch.randn(2, 4), samples=3).log_probs).all()


# ------------------------------------------------------------------ Pyro


def regression_model(net: vi.VIModule):
    def model(x, y=None):
        out = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)
        return out

    return model


def test_pyro_model_draws_the_hyper_site_first() -> None:
    net = vi.VILinear(4, 3, prior=BasicQuietPrior(0.5))
    trace = poutine.trace(net).get_trace(torch.randn(5, 4))
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["weight_prior_mean", "weight", "bias_prior_mean", "bias"]
    mean = trace.nodes["weight_prior_mean"]["value"]
    conditional = trace.nodes["weight"]["fn"]
    assert conditional.event_shape == (3, 4) and conditional.batch_shape == ()
    torch.testing.assert_close(conditional.mean, mean)
    torch.testing.assert_close(conditional.stddev, ((0.5 * mean) ** 2 + 1e-10).sqrt())


def test_prior_samples_follow_the_hierarchy() -> None:
    net = vi.VILinear(50, 40, prior=BasicQuietPrior(0.5, 1.0, 0.2))
    samples = Predictive(net, num_samples=2)(torch.randn(1, 50))
    mean, weight = samples["weight_prior_mean"], samples["weight"]
    assert abs(float(mean.mean()) - 1.0) < 0.02 and abs(float(mean.std()) - 0.2) < 0.02
    standardized = (weight - mean) / ((0.5 * mean) ** 2 + 1e-10).sqrt()
    assert abs(float(standardized.std()) - 1.0) < 0.03


def test_guide_puts_a_point_mass_at_the_variational_mean() -> None:
    net = vi.VISequential(vi.VILinear(4, 3, prior=BasicQuietPrior()))
    trace = poutine.trace(net.guide).get_trace()
    hyper = trace.nodes["0.weight_prior_mean"]
    assert isinstance(hyper["fn"], dist.Delta)
    torch.testing.assert_close(hyper["value"], net[0]._weight_mean)
    order = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert order.index("0.weight_prior_mean") < order.index("0.weight")


def test_elbo_of_the_guide_uses_torch_blue_log_prior(norm_constants) -> None:
    """Replaying the guide, the model's prior terms are torch_blue's log prior."""
    net = vi.VILinear(4, 3, prior=BasicQuietPrior(0.5, 0.2, 1.5))
    guide_trace = poutine.trace(net.guide).get_trace()
    model_trace = poutine.trace(poutine.replay(net, trace=guide_trace)).get_trace(
        torch.randn(2, 4)
    )
    model_trace.compute_log_prob()
    for name in ("weight", "bias"):
        pyro_terms = (
            model_trace.nodes[f"{name}_prior_mean"]["log_prob_sum"]
            + model_trace.nodes[name]["log_prob_sum"]
        )
        value = guide_trace.nodes[name]["value"]
        torch_blue = net.get_log_probs(value, name)[0]
        torch.testing.assert_close(pyro_terms, torch_blue)


def test_svi_with_the_layers_guide_and_with_an_autoguide() -> None:
    net = vi.VILinear(4, 3, prior=BasicQuietPrior(0.5))
    model = regression_model(net)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    before = net._weight_mean.detach().clone()
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(x, y))
    assert not torch.equal(before, net._weight_mean)

    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(x, y))
    assert guide.locs.weight_prior_mean.shape == (3, 4)


def test_no_closed_form_marginal() -> None:
    with pytest.raises(NotImplementedError, match="hierarchical"):
        BasicQuietPrior().pyro_distribution(torch.Size([3]), torch.zeros(()))
    with pytest.raises(NotImplementedError, match="no closed form for prior"):
        vi.AnalyticalKullbackLeiblerLoss(
            vi.VILinear(4, 3, prior=BasicQuietPrior()), MeanFieldNormal()
        )
