import math

import pytest
import torch
from torch import nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import (
    BasicQuietPrior,
    Categorical,
    MeanFieldNormal,
    MeanFieldStudentT,
    NonBayesian,
    UniformPrior,
)
from torch_blue_pyro.vi.utils import UnsupportedDistributionError, use_norm_constants

torch_blue_vi = pytest.importorskip("torch_blue.vi")
their_utils = pytest.importorskip("torch_blue.vi.utils")
TB = torch_blue_vi.distributions


@pytest.fixture(params=[False, True], ids=["no_constants", "constants"])
def constants(request):
    use_norm_constants(request.param)
    their_utils.use_norm_constants(request.param)
    yield request.param
    use_norm_constants(False)
    their_utils.use_norm_constants(False)


def test_normal_normal_equals_torch_kl_divergence() -> None:
    prior_mean, prior_log_std = torch.randn(7).double(), torch.randn(7).double()
    mean, log_std = torch.randn(7).double(), torch.randn(7).double()
    ours = vi.NormalNormalDivergence()([prior_mean, prior_log_std], [mean, log_std])
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, log_std.exp()),
        torch.distributions.Normal(prior_mean, prior_log_std.exp()),
    ).sum()
    torch.testing.assert_close(ours, expected)
    scalar_prior = vi.NormalNormalDivergence().forward(0.5, -0.2, mean, log_std)
    torch.testing.assert_close(
        scalar_prior,
        vi.NormalNormalDivergence()(
            [torch.full((7,), 0.5).double(), torch.full((7,), -0.2).double()],
            [mean, log_std],
        ),
    )


def test_divergence_modules_equal_torch_blue(constants: bool) -> None:
    prior = [torch.full((6,), 0.3), torch.full((6,), -0.5)]
    variational = [torch.randn(6), torch.randn(6)]
    for ours, theirs, prior_parameters in (
        (vi.NormalNormalDivergence(), torch_blue_vi.NormalNormalDivergence(), prior),
        (
            vi.UniformNormalDivergence(),
            torch_blue_vi.UniformNormalDivergence(),
            [torch.zeros(6)],
        ),
    ):
        torch.testing.assert_close(
            ours(prior_parameters, variational), theirs(prior_parameters, variational)
        )
    zero = vi.NonBayesianDivergence()([torch.zeros(6)], [variational[0]])
    assert zero.shape == () and float(zero) == 0.0


def monte_carlo_kl(model: vi.VIModule, samples: int) -> tuple[float, float]:
    """Mean and standard error of log q - log p over sampled weights."""
    model.return_log_probs = True
    with torch.no_grad():
        log_probs = model(torch.randn(1, 3, dtype=torch.float64), samples=samples)
        difference = log_probs.log_probs[:, 1] - log_probs.log_probs[:, 0]
    return float(difference.mean()), float(difference.std() / math.sqrt(samples))


@pytest.mark.parametrize(
    "prior", [MeanFieldNormal(0.2, 0.7), UniformPrior()], ids=["normal", "uniform"]
)
def test_analytic_kl_is_the_expected_monte_carlo_kl(prior, constants: bool) -> None:
    model = vi.VILinear(3, 2, prior=prior, dtype=torch.float64)
    loss = vi.AnalyticalKullbackLeiblerLoss(model, MeanFieldNormal(), dataset_size=10)
    analytic = float(loss.prior_matching().detach())
    mean, standard_error = monte_carlo_kl(model, 20000)
    assert abs(analytic - mean) < 4 * standard_error


def test_data_term_is_that_of_kullback_leibler_loss() -> None:
    model = vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 3))
    output = model(torch.randn(6, 4), samples=5)
    target = torch.randint(0, 3, (6,))
    monte_carlo = vi.KullbackLeiblerLoss(Categorical(), 60, heat=0.5, track=True)
    analytic = vi.AnalyticalKullbackLeiblerLoss(
        model, Categorical(), 60, heat=0.5, track=True
    )
    value = analytic(output, target)
    monte_carlo(output, target)
    assert analytic.log["data_fitting"] == monte_carlo.log["data_fitting"]
    torch.testing.assert_close(
        value, analytic.log["data_fitting"][0] + 0.5 * analytic.prior_matching()
    )
    assert set(analytic.log) == {"data_fitting", "prior_matching"}


def their_model(ours: nn.Module, variational, prior) -> nn.Module:
    theirs = torch_blue_vi.VISequential(
        torch_blue_vi.VILinear(4, 8, variational_distribution=variational, prior=prior),
        nn.ReLU(),
        torch_blue_vi.VILinear(8, 2, variational_distribution=variational, prior=prior),
    )
    theirs.load_state_dict(ours.state_dict())
    return theirs


@pytest.mark.parametrize(
    ("variational", "prior", "predictive"),
    [
        ("MeanFieldNormal", "MeanFieldNormal", "MeanFieldNormal"),
        ("MeanFieldNormal", "UniformPrior", "MeanFieldNormal"),
        ("NonBayesian", "UniformPrior", "NonBayesian"),
        ("NonBayesian", "MeanFieldNormal", "NonBayesian"),
    ],
)
def test_loss_equals_torch_blue(
    variational: str, prior: str, predictive: str, constants: bool
) -> None:
    distributions = vi.distributions

    def make(namespace, name):
        if name == "NonBayesian":
            return namespace.NonBayesian("MSE")
        return getattr(namespace, name)()

    ours = vi.VISequential(
        vi.VILinear(
            4,
            8,
            variational_distribution=make(distributions, variational),
            prior=make(distributions, prior),
        ),
        nn.ReLU(),
        vi.VILinear(
            8,
            2,
            variational_distribution=make(distributions, variational),
            prior=make(distributions, prior),
        ),
    )
    theirs = their_model(ours, make(TB, variational), make(TB, prior))
    our_loss = vi.AnalyticalKullbackLeiblerLoss(
        ours, make(distributions, predictive), dataset_size=40, heat=0.7, track=True
    )
    their_loss = torch_blue_vi.AnalyticalKullbackLeiblerLoss(
        theirs, make(TB, predictive), dataset_size=40, heat=0.7, track=True
    )
    output = ours(torch.randn(6, 4), samples=4)
    target = torch.randn(6, 2)
    torch.testing.assert_close(
        our_loss(output, target), their_loss(output, target).squeeze()
    )
    torch.testing.assert_close(
        our_loss(output, target, dataset_size=7),
        their_loss(output, target, dataset_size=7).squeeze(),
    )
    assert our_loss.log["data_fitting"] == pytest.approx(their_loss.log["data_fitting"])
    assert our_loss.log["prior_matching"] == pytest.approx(
        their_loss.log["prior_matching"]
    )


def test_model_mixing_divergences() -> None:
    """Normal weights with point-estimate biases; torch_blue raises here."""
    model = vi.VILinear(
        4,
        3,
        variational_distribution=[MeanFieldNormal(), NonBayesian()],
        prior=[MeanFieldNormal(0.0, 0.5), UniformPrior()],
    )
    loss = vi.AnalyticalKullbackLeiblerLoss(model, MeanFieldNormal(), dataset_size=10)
    assert loss.kl_module is None
    assert {name: type(d) for name, d in loss.divergences.items()} == {
        "weight": vi.NormalNormalDivergence,
        "bias": vi.NonBayesianDivergence,
    }
    expected = vi.NormalNormalDivergence().forward(
        0.0, math.log(0.5), model._weight_mean, model._weight_log_std
    )
    torch.testing.assert_close(loss.prior_matching(), expected)
    loss(model(torch.randn(5, 4), samples=3), torch.randn(5, 3)).backward()
    assert model._weight_log_std.grad is not None and model._bias_mean.grad is not None

    theirs = torch_blue_vi.VILinear(
        4,
        3,
        variational_distribution=[TB.MeanFieldNormal(), TB.NonBayesian()],
        prior=[TB.MeanFieldNormal(), TB.UniformPrior()],
    )
    with pytest.raises(NotImplementedError, match="inconsistent"):
        torch_blue_vi.AnalyticalKullbackLeiblerLoss(theirs, TB.MeanFieldNormal())


def test_plain_loss_for_a_non_bayesian_model() -> None:
    model = vi.VILinear(
        4, 3, variational_distribution=NonBayesian(), prior=NonBayesian()
    )
    loss = vi.AnalyticalKullbackLeiblerLoss(model, NonBayesian("L1"), dataset_size=9)
    assert isinstance(loss.kl_module, vi.NonBayesianDivergence)
    x, target = torch.randn(5, 4), torch.randn(5, 3)
    prediction = nn.functional.linear(x, model._weight_mean, model._bias_mean)
    torch.testing.assert_close(
        loss(model(x, samples=2), target), 9 * nn.functional.l1_loss(prediction, target)
    )


def test_switches_off_log_probs_and_accepts_outputs_with_them() -> None:
    model = vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 2))
    with_log_probs = model(torch.randn(3, 4), samples=2)
    loss = vi.AnalyticalKullbackLeiblerLoss(model, MeanFieldNormal(), dataset_size=3)
    assert not model.return_log_probs and not model[2].return_log_probs
    assert model(torch.randn(3, 4), samples=2).log_probs is None
    assert torch.isfinite(loss(with_log_probs, torch.randn(3, 2)))


def test_model_inside_a_plain_container() -> None:
    model = nn.ModuleList([vi.VILinear(4, 3), nn.Linear(3, 3)])
    loss = vi.AnalyticalKullbackLeiblerLoss(model, MeanFieldNormal(), dataset_size=3)
    assert list(loss.divergences) == ["0.weight", "0.bias"]


def test_custom_divergence_gets_flat_parameters_of_every_variable() -> None:
    calls = []

    class Recording(vi.KullbackLeiblerModule):
        def forward(self, prior_mean, prior_log_std, mean, log_std):
            calls.append((prior_mean, prior_log_std, mean, log_std))
            return (mean - prior_mean).square().sum()

    model = vi.VISequential(vi.VILinear(4, 3, prior=MeanFieldNormal(0.5, 2.0)))
    loss = vi.AnalyticalKullbackLeiblerLoss(
        model, MeanFieldNormal(), divergence_type=Recording()
    )
    value = loss.prior_matching()
    ((prior_mean, prior_log_std, mean, _),) = calls
    assert prior_mean.shape == prior_log_std.shape == mean.shape == (15,)
    torch.testing.assert_close(prior_mean, torch.full((15,), 0.5))
    torch.testing.assert_close(prior_log_std, torch.full((15,), math.log(2.0)))
    flat = torch.cat((model[0]._weight_mean.flatten(), model[0]._bias_mean))
    torch.testing.assert_close(mean, flat)
    torch.testing.assert_close(value, (flat - 0.5).square().sum())


def test_missing_dataset_size_warns() -> None:
    model = vi.VILinear(4, 3)
    loss = vi.AnalyticalKullbackLeiblerLoss(model, MeanFieldNormal())
    output, target = model(torch.randn(5, 4), samples=2), torch.randn(5, 3)
    with pytest.warns(UserWarning, match=r"Batch size \(5\) is used instead"):
        value = loss(output, target)
    torch.testing.assert_close(value, loss(output, target, dataset_size=5))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"predictive_distribution": UniformPrior()},
            UnsupportedDistributionError,
            "UniformPrior cannot be used as a predictive",
        ),
        (
            {"divergence_type": vi.NormalNormalDivergence},
            TypeError,
            r"got the class NormalNormalDivergence; pass an instance",
        ),
        ({"divergence_type": "normal"}, TypeError, "got str"),
        ({"dataset_size": 0}, ValueError, "dataset_size must be a positive int"),
        ({"heat": -1.0}, ValueError, "heat must be a finite number"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    arguments = {"model": vi.VILinear(4, 3), "predictive_distribution": Categorical()}
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        vi.AnalyticalKullbackLeiblerLoss(**arguments)


def test_models_without_a_closed_form_or_variables() -> None:
    with pytest.raises(NotImplementedError, match="MeanFieldStudentT"):
        vi.AnalyticalKullbackLeiblerLoss(
            vi.VILinear(4, 3, variational_distribution=MeanFieldStudentT()),
            MeanFieldNormal(),
        )
    with pytest.raises(NotImplementedError, match="BasicQuietPrior"):
        vi.AnalyticalKullbackLeiblerLoss(
            vi.VILinear(4, 3, prior=BasicQuietPrior()), MeanFieldNormal()
        )
    with pytest.raises(ValueError, match="needs a model with random variables"):
        vi.AnalyticalKullbackLeiblerLoss(nn.Linear(4, 3), MeanFieldNormal())
    with pytest.raises(TypeError, match=r"model must be the torch\.nn\.Module"):
        vi.AnalyticalKullbackLeiblerLoss("model", MeanFieldNormal())
