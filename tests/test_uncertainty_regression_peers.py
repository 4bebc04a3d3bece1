"""The UCI regression benchmark's peer rows (benchmarks/uncertainty_regression.py).

Deterministic net, MC dropout, deep ensemble, IVON, last-layer Laplace and this
library's natural-gradient optimizer in both modes, each trained a few epochs on a
small part of scikit-learn's diabetes data (the ``dev`` extra ships it): finite
scores, the ensemble's mixture against its members, the goals of the new rows, and
a named message for a missing optional package.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import uncertainty_regression  # noqa: E402

BY_NAME = {
    (setting.name, setting.mode): setting for setting in uncertainty_regression.SETTINGS
}
PEERS = [
    setting
    for setting in uncertainty_regression.SETTINGS
    if setting.method != "vi"  # the rows tests/test_uncertainty_benchmark.py checks
]
TINY = 120  # data points: 108 to train on, 12 to score


def _quick(setting: uncertainty_regression.Setting) -> uncertainty_regression.Setting:
    return dataclasses.replace(setting, epochs=uncertainty_regression.QUICK_EPOCHS)


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = uncertainty_regression.DATASETS["diabetes"]()
    return x[:TINY], y[:TINY]


def test_the_new_rows_are_there() -> None:
    names = {(setting.name, setting.mode) for setting in PEERS}
    assert names == {
        ("ours (natural gradient)", "torch_blue"),
        ("ours (natural gradient)", "pyro"),
        ("deterministic", "-"),
        ("MC dropout", "-"),
        ("deep ensemble (5)", "-"),
        ("IVON", "-"),
        ("last-layer Laplace", "-"),
    }
    # The rows the other benchmark files index stay where they were.
    assert [(s.name, s.mode) for s in uncertainty_regression.SETTINGS[:3]] == [
        ("torch_blue defaults", "torch_blue"),
        ("recipe", "torch_blue"),
        ("recipe", "pyro"),
    ]


def test_the_natural_gradient_rows_take_their_settings_from_one_dict() -> None:
    settings = uncertainty_regression.NATURAL_GRADIENT
    for mode, samples in (("torch_blue", "samples"), ("pyro", "particles")):
        row = BY_NAME["ours (natural gradient)", mode]
        assert row.initial_std == settings["variational_std"]
        assert row.prior_std == settings["prior_std"]
        assert (
            row.epochs == settings["epochs"] == uncertainty_regression.RECIPE["epochs"]
        )
        assert row.samples == settings[samples]
        assert row.learning_rate == settings["lr"]
        assert row.noise  # the recipe's heteroscedastic head
        for key in ("precision_lr", "momentum", "trust_radius", "damping"):
            assert row.option(key) == settings[key]


@pytest.mark.parametrize("setting", PEERS, ids=[f"{s.name}-{s.mode}" for s in PEERS])
def test_each_new_method_trains_and_scores_a_tiny_split(setting) -> None:
    reason = uncertainty_regression.missing(setting)
    if reason is not None:
        pytest.skip(reason)
    x, y = _tiny()
    log_likelihood, rmse = uncertainty_regression.run_split(x, y, 0, _quick(setting))
    assert math.isfinite(log_likelihood) and math.isfinite(rmse)
    assert -20.0 < log_likelihood < 0.0  # targets of std ~77: a density below 1
    assert 0.0 < rmse < 5 * float(y.std())


def test_the_ensembles_mixture_scores_at_least_its_worst_member() -> None:
    setting = _quick(BY_NAME["deep ensemble (5)", "-"])
    x, y = _tiny()
    data = uncertainty_regression.split_data(x, y, 0)
    torch.manual_seed(0)
    mean, std = uncertainty_regression.predict_peer(
        data.x_train, data.y_train, data.x_test, setting
    )
    assert mean.shape == std.shape == (5, len(data.x_test), 1)
    assert not torch.equal(mean[0], mean[1])  # the members differ

    def score(m: torch.Tensor, s: torch.Tensor) -> float:
        return uncertainty_regression.mixture_scores(
            m, s, data.y_test, data.y_mean, data.y_std
        )[0]

    members = [score(mean[i : i + 1], std[i : i + 1]) for i in range(5)]
    assert score(mean, std) >= min(members)
    # Jensen: log of the mean density >= the mean of the log densities.
    assert score(mean, std) >= sum(members) / 5 - 1e-6


def test_mc_dropout_predicts_with_stochastic_passes() -> None:
    setting = _quick(BY_NAME["MC dropout", "-"])
    assert setting.option("p") in (0.005, 0.01, 0.05, 0.1)
    x, y = _tiny()
    data = uncertainty_regression.split_data(x, y, 0)
    mean, _ = uncertainty_regression.predict_peer(
        data.x_train, data.y_train, data.x_test, setting
    )
    assert mean.shape == (uncertainty_regression.PREDICT_SAMPLES, len(data.x_test), 1)
    assert mean.std(dim=0).min() > 0  # the passes differ


def test_one_stack_trains_each_member_as_if_alone() -> None:
    """The ensemble's members share nothing: a member's gradient is its own loss's."""
    net = uncertainty_regression.MLP(3, members=2)
    x, y = torch.randn(2, 8, 3), torch.randn(2, 8, 1)
    uncertainty_regression.gaussian_nll(net(x), y).backward()
    alone = uncertainty_regression.MLP(3, members=1)
    with torch.no_grad():
        for mine, theirs in zip(alone.parameters(), net.parameters(), strict=True):
            mine.copy_(theirs[1:])
    uncertainty_regression.gaussian_nll(alone(x[1:]), y[1:]).backward()
    for mine, theirs in zip(alone.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad[1:])


@pytest.mark.parametrize(
    ("method", "install"),
    [("ivon", "ivon-opt"), ("laplace", "laplace-torch")],
)
def test_a_missing_optional_package_is_named_not_a_traceback(
    monkeypatch, capsys, method: str, install: str
) -> None:
    setting = next(s for s in PEERS if s.method == method)
    module = uncertainty_regression.OPTIONAL[method][0]
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    reason = uncertainty_regression.missing(setting)
    assert reason is not None and setting.name in reason and install in reason
    x, y = _tiny()
    with pytest.raises(SystemExit, match=install):
        uncertainty_regression.run_split(x, y, 0, _quick(setting))
    # The benchmark leaves the row out and says why.
    results = uncertainty_regression.run(1, ["diabetes"], settings=[setting])
    assert results == []
    assert f"skipped: {setting.name} needs" in capsys.readouterr().out


def _result(name: str, mode: str, dataset: str, values: list[float]):
    setting = BY_NAME[name, mode]
    return uncertainty_regression.Result(dataset, setting, values, [1.0], 0.0)


def test_the_goals_cover_the_recipe_and_the_natural_gradient_rows() -> None:
    results = [
        _result("recipe", "torch_blue", "boston", [-2.40, -2.44]),  # met
        _result("ours (natural gradient)", "torch_blue", "boston", [-2.5]),  # not
        _result("ours (natural gradient)", "pyro", "concrete", [-3.0]),  # met
        _result("ours (natural gradient)", "pyro", "boston", [float("nan")]),
        _result("deterministic", "-", "boston", [-2.0]),  # no goal
    ]
    checked = uncertainty_regression.goals(results)
    verdict = {(goal, where): met for goal, where, _, met in checked}
    assert verdict == {
        ("boston test LL ≥ -2.45", "recipe, torch_blue"): True,
        ("boston test LL ≥ -2.45", "ours (natural gradient), torch_blue"): False,
        ("concrete test LL ≥ -3.1", "ours (natural gradient), pyro"): True,
        ("boston test LL ≥ -2.45", "ours (natural gradient), pyro"): False,
    }


def test_a_diverged_split_is_said_not_averaged() -> None:
    result = _result("IVON", "-", "boston", [-2.5, float("nan"), -2.7])
    assert result.log_likelihood == "diverged on 1 of 3 splits; the others -2.60 ± 0.10"
    assert _result("IVON", "-", "boston", [float("nan")]).log_likelihood == (
        "diverged on 1 of 1 splits"
    )
