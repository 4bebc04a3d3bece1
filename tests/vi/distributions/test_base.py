"""User distributions written against torch_blue 1.1's or 0.9's base classes."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import (
    Distribution,
    MeanFieldNormal,
    PredictiveDistribution,
    Prior,
    VariationalDistribution,
)
from torch_blue_pyro.vi.utils import UnsupportedDistributionError


def laplace_log_prob(sample, loc, log_scale):
    return -(sample - loc).abs() / math.exp(log_scale) - log_scale


# ------------------------------------------------------- torch_blue 1.1 style


class Laplace(Prior):
    """A prior written for torch_blue 1.1: parameters as attributes, only log_prob."""

    distribution_parameters = ("loc", "log_scale")

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        self.loc = loc
        self.log_scale = math.log(scale)

    def log_prob(self, sample, parameters):
        loc, log_scale = parameters
        return laplace_log_prob(sample, loc, log_scale)


class MeanFieldLaplace(VariationalDistribution):
    """A variational distribution written for torch_blue 1.1."""

    distribution_parameters = ("mean", "log_scale")
    _default_variational_parameters = (0.0, -1.0)

    def sample(self, parameters):
        mean, log_scale = parameters
        noise = torch.distributions.Laplace(0.0, 1.0).sample(mean.shape)
        return mean + log_scale.exp() * noise

    def log_prob(self, sample, parameters):
        mean, log_scale = parameters
        return -(sample - mean).abs() / log_scale.exp() - log_scale


# ------------------------------------------------------- torch_blue 0.9 style


class Laplace09(Distribution):
    """A prior written for torch_blue 0.9: role flags and prior_log_prob(sample)."""

    is_prior = True
    is_variational_distribution = False
    is_predictive_distribution = False

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        self.distribution_parameters = ("loc", "log_scale")
        self.loc = loc
        self.log_scale = math.log(scale)

    def prior_log_prob(self, sample):
        return laplace_log_prob(sample, self.loc, self.log_scale)


class MeanFieldLaplace09(Distribution):
    """A variational distribution written for torch_blue 0.9: unpacked parameters."""

    is_prior = False
    is_variational_distribution = True
    is_predictive_distribution = False

    def __init__(self, scale: float = 0.3) -> None:
        super().__init__()
        self.distribution_parameters = ("mean", "log_scale")
        self._default_variational_parameters = (0.0, math.log(scale))

    def sample(self, mean, log_scale):
        noise = torch.distributions.Laplace(0.0, 1.0).sample(mean.shape)
        return mean + log_scale.exp() * noise

    def variational_log_prob(self, sample, mean, log_scale):
        return -(sample - mean).abs() / log_scale.exp() - log_scale


def variational_laplace_log_prob(layer, name, value):
    mean = getattr(layer, f"_{name}_mean")
    log_scale = getattr(layer, f"_{name}_log_scale")
    return (-(value - mean).abs() / log_scale.exp() - log_scale).flatten(1).sum(1)


@pytest.mark.parametrize(
    ("prior", "variational"),
    [(Laplace, MeanFieldLaplace), (Laplace09, MeanFieldLaplace09)],
    ids=["torch_blue_1_1", "torch_blue_0_9"],
)
def test_user_prior_and_variational_distribution_in_a_layer(
    recorder, prior, variational
) -> None:
    layer = vi.VILinear(
        4, 3, variational_distribution=variational(), prior=prior(0.1, 2.0)
    )
    assert layer._weight_log_scale.shape == (3, 4)
    x, target = torch.randn(8, 4), torch.randn(8, 3)
    with recorder:
        output = layer(x, samples=5)
    weight, bias = recorder.values["weight"], recorder.values["bias"]
    log_prior = sum(
        laplace_log_prob(value, 0.1, math.log(2.0)).flatten(1).sum(1)
        for value in (weight, bias)
    )
    log_q = variational_laplace_log_prob(
        layer, "weight", weight
    ) + variational_laplace_log_prob(layer, "bias", bias)
    torch.testing.assert_close(output.log_probs, torch.stack((log_prior, log_q), 1))
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=100)
    loss(output, target).backward()
    assert layer._weight_log_scale.grad is not None
    # Scoring one sample outside the forward pass agrees.
    torch.testing.assert_close(
        layer.get_log_probs(weight[0], "weight"),
        torch.stack(
            (
                laplace_log_prob(weight[0], 0.1, math.log(2.0)).sum(),
                variational_laplace_log_prob(layer, "weight", weight[:1])[0],
            )
        ),
    )


@pytest.mark.parametrize("prior", [Laplace, Laplace09])
def test_user_prior_under_pyro_with_a_guide(prior) -> None:
    """Without a Pyro form the prior is scored by its torch_blue log-density."""
    net = vi.VILinear(4, 3, prior=prior(0.0, 1.5))

    def model(x, y=None):
        out = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)

    guide_trace = poutine.trace(net.guide).get_trace()
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        torch.randn(5, 4)
    )
    weight = guide_trace.nodes["weight"]["value"]
    torch.testing.assert_close(
        model_trace.nodes["weight"]["fn"].log_prob(weight),
        laplace_log_prob(weight, 0.0, math.log(1.5)).sum(),
    )
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(torch.randn(16, 4), torch.randn(16, 3)))
    with pytest.raises(NotImplementedError, match="has no Pyro form to draw from"):
        poutine.trace(net).get_trace(torch.randn(5, 4))


@pytest.mark.parametrize("variational", [MeanFieldLaplace, MeanFieldLaplace09])
def test_user_variational_distribution_as_a_pyro_guide(variational) -> None:
    net = vi.VILinear(4, 3, variational_distribution=variational())
    trace = poutine.trace(net.guide).get_trace()
    site = trace.nodes["weight"]
    assert site["value"].shape == (3, 4) and site["fn"].event_shape == (3, 4)
    expected = variational_laplace_log_prob(net, "weight", site["value"][None])[0]
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected)
    assert site["fn"].rsample((2,)).shape == (2, 3, 4)


def test_role_flags() -> None:
    laplace = Laplace09()
    assert isinstance(laplace, Prior) and laplace.is_prior
    assert not isinstance(laplace, VariationalDistribution)
    assert isinstance(MeanFieldLaplace09(), VariationalDistribution)
    assert Laplace().is_prior and not Laplace().is_variational_distribution
    normal = MeanFieldNormal()
    assert normal.is_prior and normal.is_variational_distribution
    assert normal.is_predictive_distribution
    with pytest.raises(UnsupportedDistributionError, match="Laplace09 cannot"):
        vi.VILinear(4, 3, variational_distribution=Laplace09())


def test_a_false_flag_removes_an_inherited_role() -> None:
    class NormalPriorOnly(MeanFieldNormal):
        is_variational_distribution = False
        is_predictive_distribution = False

    prior_only = NormalPriorOnly()
    assert isinstance(prior_only, Prior)
    assert not isinstance(prior_only, (VariationalDistribution, PredictiveDistribution))
    assert not prior_only.is_variational_distribution
    with pytest.raises(UnsupportedDistributionError, match="NormalPriorOnly cannot"):
        vi.VILinear(4, 3, variational_distribution=NormalPriorOnly())
    vi.VILinear(4, 3, prior=NormalPriorOnly())


def test_old_style_methods_take_both_call_styles() -> None:
    dist_ = MeanFieldLaplace09()
    mean, log_scale = torch.zeros(3), torch.zeros(3)
    assert dist_.sample(mean, log_scale).shape == dist_.sample((mean, log_scale)).shape
    sample = torch.randn(3)
    torch.testing.assert_close(
        dist_.variational_log_prob(sample, mean, log_scale),
        dist_.variational_log_prob(sample, (mean, log_scale)),
    )


def test_old_style_hierarchical_prior_and_a_reduced_log_prob(recorder) -> None:
    class ShrinkToMean09(Distribution):
        """0.9 style: a required parameter, and a log-prob that returns a total."""

        is_prior = True
        _required_parameters = ("mean",)

        def __init__(self) -> None:
            self.distribution_parameters = ("mean",)
            self._scaling_parameters = ()

        def prior_log_prob(self, sample, mean):
            return -((sample - mean) ** 2).sum().reshape(1)

    layer = vi.VILinear(4, 3, prior=ShrinkToMean09())
    with recorder:
        output = layer(torch.randn(2, 4), samples=3)
    expected = sum(
        -((recorder.values[name] - getattr(layer, f"_{name}_mean")) ** 2)
        .flatten(1)
        .sum(1)
        for name in ("weight", "bias")
    )
    torch.testing.assert_close(output.log_probs[:, 0], expected)


def test_post_init_runs_after_init() -> None:
    class Checked(Laplace):
        def __post_init__(self) -> None:
            super().__post_init__()
            if self.log_scale > 5:
                raise ValueError("scale too large")

    Checked(scale=2.0)
    with pytest.raises(ValueError, match="scale too large"):
        Checked(scale=1e3)


def test_a_distribution_without_a_role_is_an_error() -> None:
    class Roleless(Distribution):
        distribution_parameters = ("mean",)

    with pytest.raises(TypeError, match="Roleless plays no role"):
        Roleless()


def test_missing_defaults_of_an_old_style_variational_distribution() -> None:
    class NoDefaults09(MeanFieldLaplace09):
        def __init__(self) -> None:
            self.distribution_parameters = ("mean", "log_scale")

    with pytest.raises(ValueError, match="one default per distribution parameter"):
        vi.VILinear(4, 3, variational_distribution=NoDefaults09())


def test_an_incomplete_subclass_fails_as_in_its_torch_blue_release() -> None:
    """1.1-style (role classes): TypeError when built, as torch_blue 1.1; 0.9-style
    (role flags): NotImplementedError when the missing method is called, as 0.9."""
    tb = pytest.importorskip("torch_blue.vi.distributions")

    for base in (Prior, tb.Prior):

        class NoLogProb(base):  # type: ignore[valid-type, misc]
            distribution_parameters = ("mean",)

        with pytest.raises(TypeError, match="abstract method log_prob"):
            NoLogProb()

    class OldStyle(Distribution):
        is_prior = True

        def __init__(self) -> None:
            self.distribution_parameters = ()

    with pytest.raises(NotImplementedError, match="OldStyle does not implement"):
        OldStyle().prior_log_prob(torch.zeros(3))
