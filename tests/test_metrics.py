import ast
import inspect
import math

import pytest
import torch

from torch_blue_pyro import metrics, plots, uncertainty
from torch_blue_pyro.metrics import (
    accuracy,
    brier_score,
    expected_calibration_error,
    gaussian_negative_log_likelihood,
    negative_log_likelihood,
    ood_aupr,
    ood_auroc,
    ood_detection,
    ood_fpr_at_tpr,
    reliability_bins,
)

PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
LABELS = torch.tensor([0, 1, 1, 1])


def _random_problem(n: int = 200, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    probabilities = torch.softmax(2 * torch.randn(n, c, dtype=torch.float64), -1)
    labels = torch.multinomial(probabilities, 1).squeeze(1)
    return probabilities, labels


# ----------------------------------------------------------- by-hand values
def test_accuracy_by_hand() -> None:
    assert accuracy(PROBS, LABELS).item() == pytest.approx(0.75)


def test_negative_log_likelihood_by_hand() -> None:
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.8)) / 4
    assert negative_log_likelihood(PROBS, LABELS).item() == pytest.approx(expected)
    # A zero probability of the label gives a large, finite value.
    nll = negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert math.isfinite(nll.item()) and nll.item() > 80


def test_brier_score_by_hand() -> None:
    expected = (2 * 0.1**2 + 2 * 0.6**2 + 2 * 0.3**2 + 2 * 0.2**2) / 4
    assert brier_score(PROBS, LABELS).item() == pytest.approx(expected)


def test_ece_by_hand_equal_width_and_equal_mass() -> None:
    # Bins of width .25: (.5, .75] holds .6 (wrong) and .7 (right), (.75, 1] holds
    # .9 and .8 (both right).
    ece = expected_calibration_error(PROBS, LABELS, n_bins=4)
    assert ece.item() == pytest.approx(0.5 * abs(0.65 - 0.5) + 0.5 * abs(0.85 - 1.0))
    # Three equal-mass bins of the six confidences .55 .6 | .7 .8 | .9 .95.
    probabilities = torch.tensor([[c, 1 - c] for c in (0.9, 0.55, 0.7, 0.95, 0.6, 0.8)])
    labels = torch.tensor([0, 0, 1, 0, 1, 0])  # correct: .9, .55, .95, .8
    ece = expected_calibration_error(probabilities, labels, 3, "equal_mass")
    expected = (abs(0.5 - 0.575) + abs(0.5 - 0.75) + abs(1.0 - 0.925)) / 3
    assert ece.item() == pytest.approx(expected)
    bins = reliability_bins(probabilities, labels, 3, "equal_mass")
    torch.testing.assert_close(bins.counts, torch.tensor([2, 2, 2]))
    torch.testing.assert_close(bins.confidences, torch.tensor([0.575, 0.75, 0.925]))
    torch.testing.assert_close(bins.accuracies, torch.tensor([0.5, 0.5, 1.0]))
    torch.testing.assert_close(bins.edges, torch.tensor([0.0, 0.65, 0.85, 1.0]))


def test_one_bin_ece_is_the_gap_of_mean_confidence_and_accuracy() -> None:
    probabilities, labels = _random_problem()
    for binning in ("equal_width", "equal_mass"):
        ece = expected_calibration_error(probabilities, labels, 1, binning)
        gap = accuracy(probabilities, labels) - probabilities.max(-1).values.mean()
        torch.testing.assert_close(ece, gap.abs())


def test_certain_correct_predictions_are_calibrated() -> None:
    probabilities = torch.eye(3)[torch.tensor([0, 2, 1, 1])]
    labels = torch.tensor([0, 2, 1, 1])
    assert expected_calibration_error(probabilities, labels).item() == 0
    assert brier_score(probabilities, labels).item() == 0
    assert negative_log_likelihood(probabilities, labels).item() == 0


def test_reliability_bins_agree_with_the_ece() -> None:
    probabilities, labels = _random_problem(n=203)
    for binning in ("equal_width", "equal_mass"):
        bins = reliability_bins(probabilities, labels, 10, binning)
        assert bins.edges.shape == (11,) and bins.counts.dtype == torch.int64
        assert bins.edges[0] == 0 and bins.edges[-1] == 1
        assert bool((bins.edges.diff() >= 0).all())
        assert int(bins.counts.sum()) == 203
        full = bins.counts > 0
        weights = bins.counts[full] / 203
        gaps = (bins.accuracies[full] - bins.confidences[full]).abs()
        torch.testing.assert_close(
            (weights * gaps).sum(),
            expected_calibration_error(probabilities, labels, 10, binning),
        )
        # Every confidence lies within its bin's edges.
        assert bool((bins.confidences[full] >= bins.edges[:-1][full]).all())
        assert bool((bins.confidences[full] <= bins.edges[1:][full]).all())
    equal_mass = reliability_bins(probabilities, labels, 10, "equal_mass")
    assert set(equal_mass.counts.tolist()) == {20, 21}


def test_empty_bins_are_nan_and_count_zero() -> None:
    bins = reliability_bins(PROBS, LABELS, n_bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert bool(bins.confidences[:5].isnan().all())
    assert bool(bins.accuracies[9].isnan())
    # More bins than predictions: equal-mass bins are empty at the end.
    bins = reliability_bins(PROBS, LABELS, n_bins=6, binning="equal_mass")
    assert bins.counts.tolist() == [1, 1, 1, 1, 0, 0]
    assert bool((bins.edges.diff() >= 0).all())


def test_leading_dimensions_are_flattened() -> None:
    probabilities, labels = _random_problem(n=24)
    for metric in (accuracy, negative_log_likelihood, brier_score):
        torch.testing.assert_close(
            metric(probabilities.reshape(2, 3, 4, 4), labels.reshape(2, 3, 4)),
            metric(probabilities, labels),
        )


def test_nll_and_brier_keep_autograd() -> None:
    logits = torch.randn(8, 3, requires_grad=True)
    labels = torch.randint(0, 3, (8,))
    loss = negative_log_likelihood(logits.softmax(-1), labels)
    loss = loss + brier_score(logits.softmax(-1), labels)
    loss.backward()
    assert logits.grad is not None
    torch.testing.assert_close(
        negative_log_likelihood(logits.softmax(-1), labels),
        torch.nn.functional.cross_entropy(logits, labels),
    )


def test_demo_style_pipeline_from_sampled_logits() -> None:
    logits = torch.randn(5, 30, 4)
    probabilities = uncertainty.predictive_probabilities(logits)
    labels = torch.randint(0, 4, (30,))
    assert 0 <= expected_calibration_error(probabilities, labels).item() <= 1


# ------------------------------------------------------- reference: sklearn
@pytest.mark.cpu_only
def test_classification_metrics_match_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    probabilities, labels = _random_problem()
    p, y = probabilities.numpy(), labels.numpy()
    assert negative_log_likelihood(probabilities, labels).item() == pytest.approx(
        sklearn_metrics.log_loss(y, p, labels=[0, 1, 2, 3])
    )
    assert accuracy(probabilities, labels).item() == pytest.approx(
        sklearn_metrics.accuracy_score(y, p.argmax(1))
    )
    # Two classes: the multi-class Brier score is twice sklearn's binary one.
    binary = torch.stack([1 - probabilities[:, 0], probabilities[:, 0]], -1)
    binary_labels = (labels == 0).long()
    assert brier_score(binary, binary_labels).item() == pytest.approx(
        2
        * sklearn_metrics.brier_score_loss(binary_labels.numpy(), binary[:, 1].numpy())
    )
    try:
        reference = sklearn_metrics.brier_score_loss(
            y, p, labels=[0, 1, 2, 3], scale_by_half=False
        )
    except TypeError:  # scikit-learn < 1.7: binary only
        return
    assert brier_score(probabilities, labels).item() == pytest.approx(reference)


@pytest.mark.cpu_only
def test_ood_metrics_match_scikit_learn_with_ties() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    # Rounded scores: many ties within and across the two sets.
    scores_in = torch.round(torch.randn(300), decimals=1)
    scores_out = torch.round(torch.randn(120) + 1.0, decimals=1)
    y = torch.cat([torch.zeros(300), torch.ones(120)]).numpy()
    s = torch.cat([scores_in, scores_out]).numpy()
    result = ood_detection(scores_in, scores_out)
    assert result.auroc.item() == pytest.approx(sklearn_metrics.roc_auc_score(y, s))
    assert result.aupr.item() == pytest.approx(
        sklearn_metrics.average_precision_score(y, s)
    )
    fpr, tpr, _ = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    reference = fpr[(tpr >= 0.95).argmax()]
    assert result.fpr_at_tpr.item() == pytest.approx(reference)
    for target in (0.5, 0.8, 1.0):
        reference = fpr[(tpr >= target - 1e-12).argmax()]
        assert ood_fpr_at_tpr(scores_in, scores_out, target).item() == pytest.approx(
            reference
        )


# ------------------------------------------------------- OOD by hand
def test_ood_metrics_by_hand() -> None:
    separated = ood_detection(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.9]))
    assert separated.auroc.item() == 1.0
    assert separated.aupr.item() == 1.0
    assert separated.fpr_at_tpr.item() == 0.0
    reversed_ = ood_detection(torch.tensor([0.5, 0.9]), torch.tensor([0.1, 0.2, 0.3]))
    assert reversed_.auroc.item() == 0.0
    assert reversed_.fpr_at_tpr.item() == 1.0
    # One score for all: chance; precision is the OOD fraction at the only threshold.
    tied = ood_detection(torch.zeros(6), torch.zeros(2))
    assert tied.auroc.item() == 0.5
    assert tied.aupr.item() == pytest.approx(0.25)
    assert tied.fpr_at_tpr.item() == 1.0
    # in: 1 3 5, out: 2 4 6. Pairs out > in: 2>1, 4>1, 4>3, 6>all = 6 of 9.
    scores_in, scores_out = torch.tensor([1.0, 3, 5]), torch.tensor([2.0, 4, 6])
    assert ood_auroc(scores_in, scores_out).item() == pytest.approx(6 / 9)
    # Precision at recall 1/3, 2/3, 1: 1/1, 2/3, 3/5.
    expected = (1 + 2 / 3 + 3 / 5) / 3
    assert ood_aupr(scores_in, scores_out).item() == pytest.approx(expected)
    # All three OOD flagged at threshold 2, which also flags 3 and 5 of the in-set.
    assert ood_fpr_at_tpr(scores_in, scores_out).item() == pytest.approx(2 / 3)
    assert ood_fpr_at_tpr(scores_in, scores_out, tpr=0.3).item() == 0.0


@pytest.mark.cpu_only
def test_aupr_in_by_negating_and_swapping() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    scores_in, scores_out = torch.randn(50), torch.randn(30) + 1
    y_in = torch.cat([torch.ones(50), torch.zeros(30)]).numpy()
    s = torch.cat([-scores_in, -scores_out]).numpy()
    assert ood_aupr(-scores_out, -scores_in).item() == pytest.approx(
        sklearn_metrics.average_precision_score(y_in, s)
    )


# ------------------------------------------------------------ regression
def test_gaussian_nll_matches_torch() -> None:
    mean, std = torch.randn(10, 2), torch.rand(10, 2) + 0.2
    targets = torch.randn(10, 2)
    reference = torch.nn.GaussianNLLLoss(full=True, eps=0.0)(mean, targets, std**2)
    torch.testing.assert_close(
        gaussian_negative_log_likelihood(mean, std, targets), reference
    )
    # A scalar std broadcasts.
    torch.testing.assert_close(
        gaussian_negative_log_likelihood(mean, torch.tensor(0.5), targets),
        gaussian_negative_log_likelihood(mean, torch.full((10, 2), 0.5), targets),
    )
    with pytest.raises(ValueError, match=r"targets of shape \(10,\) do not match"):
        gaussian_negative_log_likelihood(mean[:, 0:1], std[:, 0:1], targets[:, 0])
    with pytest.raises(ValueError, match="std must be positive"):
        gaussian_negative_log_likelihood(mean, torch.zeros(10, 2), targets)
    with pytest.raises(ValueError, match="does not broadcast"):
        gaussian_negative_log_likelihood(mean, torch.ones(3), targets)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("probabilities", "labels", "message"),
    [
        (PROBS, torch.tensor([0, 1, 1]), r"labels of shape \(3,\) do not match"),
        (PROBS, torch.tensor([0, 1, 2, 1]), r"labels must lie in \[0, 2\)"),
        (PROBS, torch.tensor([0, 1, -1, 1]), r"labels must lie in \[0, 2\)"),
        (PROBS, torch.tensor([0.0, 1.0, 0.5, 1.0]), "integer class indices"),
        (PROBS, torch.tensor([True, False, True, True]), "integer class indices"),
        (torch.randn(4, 2), LABELS, "must lie in .0, 1.* for logits"),
        (PROBS * 0.5, LABELS, "must sum to 1 over the last"),
        (PROBS.long(), LABELS, "must be floating point"),
        (PROBS[:0], LABELS[:0], "at least one prediction"),
        (torch.full((4, 2), float("nan")), LABELS, "must be finite"),
    ],
)
def test_classification_inputs_are_validated(
    probabilities: torch.Tensor, labels: torch.Tensor, message: str
) -> None:
    for metric in (
        accuracy,
        negative_log_likelihood,
        brier_score,
        expected_calibration_error,
        reliability_bins,
    ):
        with pytest.raises(ValueError, match=message):
            metric(probabilities, labels)


def test_float_labels_with_integer_values_are_accepted() -> None:
    assert accuracy(PROBS, LABELS.double()).item() == pytest.approx(0.75)


def test_bins_are_validated() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_bins must be a positive int"):
            expected_calibration_error(PROBS, LABELS, n_bins=bad)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match='binning must be "equal_width" or "equal_mass"'
    ):
        reliability_bins(PROBS, LABELS, binning="adaptive")  # type: ignore[arg-type]


def test_ood_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="scores_in must hold at least one score"):
        ood_auroc(torch.zeros(0), torch.ones(3))
    with pytest.raises(ValueError, match="scores_out must be finite"):
        ood_aupr(torch.zeros(3), torch.tensor([1.0, float("nan")]))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"tpr must be a number in \(0, 1\]"):
            ood_fpr_at_tpr(torch.zeros(3), torch.ones(3), tpr=bad)


def test_the_library_does_not_import_scikit_learn_or_matplotlib_eagerly() -> None:
    for module in (metrics, uncertainty, plots):
        tree = ast.parse(inspect.getsource(module))
        top_level = [
            alias.name if isinstance(node, ast.Import) else node.module
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in getattr(node, "names", [])
        ]
        assert not any(
            name and name.split(".")[0] in ("sklearn", "matplotlib")
            for name in top_level
        ), (module.__name__, top_level)
