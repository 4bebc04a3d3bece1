r"""Metrics of predictive quality: accuracy, proper scores, calibration, OOD detection.

Classification metrics take the predictive class probabilities ``(*, C)`` (for
example :func:`~torch_blue_pyro.uncertainty.predictive_probabilities` of ``S``
sampled outputs) and integer labels ``(*)``; leading dimensions are flattened into
``N`` predictions. They check their inputs: probabilities must be finite, in
:math:`[0, 1]` and sum to 1 over the classes (within ``1e-3``), labels integers in
``[0, C)`` of the matching shape.

Out-of-distribution (OOD) detection metrics take a score per input for an
in-distribution set and an OOD set. **Convention: a higher score means "more
likely OOD"**, and the OOD inputs are the positive class. Predictive entropy and
mutual information (:mod:`torch_blue_pyro.uncertainty`) are such scores; for a
confidence, where higher means in-distribution (the maximum class probability),
pass its negative.

Scalar metrics are returned as 0-dim tensors (``.item()`` gives a float); those built
from differentiable operations (negative log-likelihood, Brier score) keep autograd,
so they can also be minimized (for temperature scaling, say).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, TypeAlias

import torch
from torch import Tensor

from ._checks import positive_int
from .sites import HALF_LOG_TWO_PI

__all__ = [
    "OODDetection",
    "ReliabilityBins",
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "gaussian_negative_log_likelihood",
    "negative_log_likelihood",
    "ood_aupr",
    "ood_auroc",
    "ood_detection",
    "ood_fpr_at_tpr",
    "reliability_bins",
]

Binning: TypeAlias = Literal["equal_width", "equal_mass"]

_SUM_TOLERANCE = 1e-3


# ---------------------------------------------------------------- input checks
def _check_classification(
    probabilities: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Validate probabilities ``(*, C)`` and labels ``(*)``; flatten to ``N`` rows."""
    if not isinstance(probabilities, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(
            "probabilities and labels must be tensors, got "
            f"{type(probabilities).__name__} and {type(labels).__name__}"
        )
    probabilities = probabilities.as_subclass(Tensor)
    labels = labels.as_subclass(Tensor)
    if probabilities.dim() < 1 or not probabilities.is_floating_point():
        raise ValueError(
            "probabilities must be floating point of shape (*, C), the classes last, "
            f"got {probabilities.dtype} of shape {tuple(probabilities.shape)}"
        )
    num_classes = probabilities.shape[-1]
    if labels.shape != probabilities.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match probabilities of "
            f"shape {tuple(probabilities.shape)}: expected labels of shape "
            f"{tuple(probabilities.shape[:-1])}"
        )
    if labels.numel() == 0 or num_classes == 0:
        raise ValueError(
            f"need at least one prediction and one class, got probabilities of shape "
            f"{tuple(probabilities.shape)}"
        )
    if labels.is_floating_point():
        if not bool(torch.equal(labels, labels.round())):
            raise ValueError("labels must be integer class indices, got fractions")
    elif labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    labels = labels.long()
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for {num_classes} classes, got "
            f"values in [{low}, {high}]"
        )
    detached = probabilities.detach()
    if not bool(torch.isfinite(detached).all()):
        raise ValueError("probabilities must be finite, got NaN or infinity")
    if bool((detached < 0).any()) or bool((detached > 1).any()):
        raise ValueError(
            "probabilities must lie in [0, 1], got values in "
            f"[{float(detached.min()):g}, {float(detached.max()):g}]; for logits, "
            "use torch_blue_pyro.uncertainty.predictive_probabilities first"
        )
    deviation = float((detached.sum(dim=-1) - 1).abs().max())
    if deviation > _SUM_TOLERANCE:
        raise ValueError(
            "probabilities must sum to 1 over the last (class) dimension, got sums "
            f"off by up to {deviation:g}"
        )
    return probabilities.reshape(-1, num_classes), labels.reshape(-1)


def _check_binning(n_bins: int, binning: str) -> int:
    n_bins = positive_int(n_bins, "n_bins")
    if binning not in ("equal_width", "equal_mass"):
        raise ValueError(
            f'binning must be "equal_width" or "equal_mass", got {binning!r}'
        )
    return n_bins


def _check_scores(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two sets of OOD scores; flatten each to 1-D float64."""
    checked = []
    for name, scores in (("scores_in", scores_in), ("scores_out", scores_out)):
        scores = torch.as_tensor(scores).as_subclass(Tensor).detach()
        if scores.numel() == 0:
            raise ValueError(f"{name} must hold at least one score, got none")
        if scores.dtype == torch.bool or scores.is_complex():
            raise ValueError(f"{name} must be real numbers, got {scores.dtype}")
        scores = scores.reshape(-1).to(torch.float64)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"{name} must be finite, got NaN or infinity")
        checked.append(scores)
    return checked[0], checked[1]


# -------------------------------------------------------------- classification
def accuracy(probabilities: Tensor, labels: Tensor) -> Tensor:
    r"""The fraction of predictions whose most probable class is the label.

    .. math::
        \mathrm{acc} = \frac1N \sum_{i=1}^N \mathbb 1[\arg\max_c p_{ic} = y_i]

    Parameters
    ----------
    probabilities: Tensor
        ``(*, C)`` predictive probabilities.
    labels: Tensor
        ``(*)`` integer labels in ``[0, C)``.

    Returns
    -------
    Tensor
        0-dim, in :math:`[0, 1]`.

    Raises
    ------
    ValueError
        If the inputs are invalid (see the module docstring).
    """
    probabilities, labels = _check_classification(probabilities, labels)
    correct = probabilities.argmax(dim=-1) == labels
    return correct.to(probabilities.dtype).mean()


def negative_log_likelihood(probabilities: Tensor, labels: Tensor) -> Tensor:
    r"""The mean negative log-likelihood of the labels (cross-entropy, log loss).

    .. math::
        \mathrm{NLL} = -\frac1N \sum_{i=1}^N \log \max(p_{i y_i}, \tau),

    with :math:`\tau` the smallest positive normal number of the dtype, so that a
    zero probability gives a large, finite value. It is a proper scoring rule: lower
    is better, 0 for certain, correct predictions.

    Parameters
    ----------
    probabilities: Tensor
        ``(*, C)`` predictive probabilities.
    labels: Tensor
        ``(*)`` integer labels in ``[0, C)``.

    Returns
    -------
    Tensor
        0-dim, in nats.

    Raises
    ------
    ValueError
        If the inputs are invalid (see the module docstring).
    """
    probabilities, labels = _check_classification(probabilities, labels)
    label_probabilities = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1)
    tiny = torch.finfo(probabilities.dtype).tiny
    return -label_probabilities.clamp_min(tiny).log().mean()


def brier_score(probabilities: Tensor, labels: Tensor) -> Tensor:
    r"""The multi-class Brier score: the mean squared error of the probabilities.

    .. math::
        \mathrm{BS} = \frac1N \sum_{i=1}^N \sum_{c=1}^C (p_{ic} - \mathbb 1[y_i =
        c])^2 \in [0, 2].

    This is Brier's (1950) definition. For two classes it is twice scikit-learn's
    binary ``brier_score_loss(y, p[:, 1])``, which scores the positive class only.

    Parameters
    ----------
    probabilities: Tensor
        ``(*, C)`` predictive probabilities.
    labels: Tensor
        ``(*)`` integer labels in ``[0, C)``.

    Returns
    -------
    Tensor
        0-dim.

    Raises
    ------
    ValueError
        If the inputs are invalid (see the module docstring).
    """
    probabilities, labels = _check_classification(probabilities, labels)
    one_hot = torch.zeros_like(probabilities).scatter_(1, labels.unsqueeze(1), 1.0)
    return (probabilities - one_hot).square().sum(dim=1).mean()


class ReliabilityBins(NamedTuple):
    """Per-bin data of a reliability diagram (top-label confidence vs accuracy).

    Empty bins have ``counts`` 0 and NaN ``confidences`` and ``accuracies``.
    """

    edges: Tensor
    """``(n_bins + 1,)`` bin edges on the confidence axis, from 0 to 1."""
    confidences: Tensor
    """``(n_bins,)`` mean confidence of the predictions in each bin."""
    accuracies: Tensor
    """``(n_bins,)`` fraction of correct predictions in each bin."""
    counts: Tensor
    """``(n_bins,)`` number of predictions in each bin (int64)."""


def _binned_sums(
    probabilities: Tensor, labels: Tensor, n_bins: int, binning: Binning
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bin edges and per-bin sums of confidence and correctness, and counts."""
    confidences, predictions = probabilities.max(dim=1)
    correct = (predictions == labels).to(probabilities.dtype)
    n = len(confidences)
    if binning == "equal_width":
        # Bin b (1-based) is ((b - 1) / M, b / M]; the first also holds 0.
        bins = (confidences * n_bins).ceil().long().clamp(1, n_bins) - 1
        edges = torch.linspace(0, 1, n_bins + 1, dtype=probabilities.dtype)
    else:
        order = confidences.detach().argsort(stable=True)
        # As equal as possible: the first N mod M bins hold one prediction more.
        counts = n // n_bins + (torch.arange(n_bins) < n % n_bins).long()
        bins = torch.empty(n, dtype=torch.long, device=confidences.device)
        bins[order] = torch.repeat_interleave(torch.arange(n_bins), counts).to(
            confidences.device
        )
        # Inner edges halfway between the neighbouring bins' confidences.
        ranked = confidences.detach()[order].cpu()
        starts = counts.cumsum(0)[:-1]
        below = ranked[(starts - 1).clamp(0, n - 1)]
        above = ranked[starts.clamp(max=n - 1)]
        edges = torch.cat(
            [ranked.new_zeros(1), (below + above) / 2, ranked.new_ones(1)]
        )
    zeros = probabilities.new_zeros(n_bins)
    confidence_sum = zeros.index_add(0, bins, confidences)
    correct_sum = zeros.index_add(0, bins, correct)
    count = torch.bincount(bins, minlength=n_bins)
    return edges.to(probabilities.device), confidence_sum, correct_sum, count


def reliability_bins(
    probabilities: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    binning: Binning = "equal_width",
) -> ReliabilityBins:
    r"""Per-bin confidence, accuracy and count: the data of a reliability diagram.

    The confidence of a prediction is its largest class probability,
    :math:`\hat p_i = \max_c p_{ic}`; it is correct if that class is the label. The
    predictions are grouped into ``n_bins`` bins :math:`B_b` by confidence:

    * ``"equal_width"``: :math:`B_b = (\frac{b-1}M, \frac bM]` (the first bin also
      holds confidence 0), as in Guo et al. (2017), "On Calibration of Modern
      Neural Networks";
    * ``"equal_mass"`` (adaptive): by rank of confidence, so that every bin holds
      :math:`\lfloor N/M \rfloor` or :math:`\lceil N/M \rceil` predictions (Nixon et
      al., 2019, "Measuring Calibration in Deep Learning"); predictions with equal
      confidence may fall into neighbouring bins. The inner edges lie halfway
      between the neighbouring bins' confidences.

    For each bin, :math:`\mathrm{conf}(B_b) = \frac{1}{|B_b|}\sum_{i \in B_b} \hat
    p_i` and :math:`\mathrm{acc}(B_b)` is the fraction of correct predictions. A
    calibrated model has :math:`\mathrm{acc}(B_b) \approx \mathrm{conf}(B_b)`.

    Parameters
    ----------
    probabilities: Tensor
        ``(*, C)`` predictive probabilities.
    labels: Tensor
        ``(*)`` integer labels in ``[0, C)``.
    n_bins: int, default: 15
        :math:`M`, the number of bins; >= 1.
    binning: {"equal_width", "equal_mass"}, default: "equal_width"
        How the bins are chosen.

    Returns
    -------
    ReliabilityBins
        ``(edges, confidences, accuracies, counts)``.

    Raises
    ------
    ValueError
        If the inputs are invalid, ``n_bins`` is not a positive int, or ``binning``
        is unknown.
    """
    probabilities, labels = _check_classification(probabilities, labels)
    n_bins = _check_binning(n_bins, binning)
    edges, confidence_sum, correct_sum, count = _binned_sums(
        probabilities, labels, n_bins, binning
    )
    denominator = count.to(probabilities.dtype)
    return ReliabilityBins(
        edges, confidence_sum / denominator, correct_sum / denominator, count
    )


def expected_calibration_error(
    probabilities: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    binning: Binning = "equal_width",
) -> Tensor:
    r"""The expected calibration error of the top-class predictions.

    With the bins of :func:`reliability_bins`,

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{M} \frac{|B_b|}{N}
        \left| \mathrm{acc}(B_b) - \mathrm{conf}(B_b) \right|
        = \frac1N \sum_{b=1}^{M} \Bigl| \sum_{i \in B_b}
        (\mathbb 1[\text{correct}_i] - \hat p_i) \Bigr|.

    Empty bins contribute zero. ``binning="equal_mass"`` gives the adaptive
    calibration error of Nixon et al. (2019). Lower is better; 0 is perfectly
    calibrated on these bins.

    Parameters
    ----------
    probabilities: Tensor
        ``(*, C)`` predictive probabilities.
    labels: Tensor
        ``(*)`` integer labels in ``[0, C)``.
    n_bins: int, default: 15
        :math:`M`, the number of bins; >= 1.
    binning: {"equal_width", "equal_mass"}, default: "equal_width"
        Equal-width confidence intervals or equal-mass (adaptive) bins.

    Returns
    -------
    Tensor
        0-dim, in :math:`[0, 1]`.

    Raises
    ------
    ValueError
        If the inputs are invalid, ``n_bins`` is not a positive int, or ``binning``
        is unknown.

    Examples
    --------
    >>> probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> labels = torch.tensor([0, 1, 1])
    >>> expected_calibration_error(probabilities, labels, n_bins=4)
    tensor(0.3333)
    """
    probabilities, labels = _check_classification(probabilities, labels)
    n_bins = _check_binning(n_bins, binning)
    _, confidence_sum, correct_sum, _ = _binned_sums(
        probabilities, labels, n_bins, binning
    )
    return (correct_sum - confidence_sum).abs().sum() / len(labels)


# ------------------------------------------------------------------ regression
def gaussian_negative_log_likelihood(
    mean: Tensor, std: Tensor, targets: Tensor
) -> Tensor:
    r"""The mean negative log-likelihood of targets under normal predictions.

    .. math::
        \mathrm{NLL} = \frac1N \sum_{i=1}^N \left( \frac{(y_i - \mu_i)^2}{2
        \sigma_i^2} + \log \sigma_i + \tfrac12 \log 2\pi \right),

    normalization constant included, averaged over all elements. For the predictive
    distribution of :func:`~torch_blue_pyro.uncertainty.regression_uncertainty`,
    pass its ``mean`` and ``total_std``.

    Parameters
    ----------
    mean: Tensor
        Predictive means.
    std: Tensor
        Predictive standard deviations, > 0, broadcastable to ``mean``.
    targets: Tensor
        Targets of the shape of ``mean``.

    Returns
    -------
    Tensor
        0-dim, in nats.

    Raises
    ------
    ValueError
        If the shapes differ or a standard deviation is not positive.
    """
    mean, std, targets = (t.as_subclass(Tensor) for t in (mean, std, targets))
    if targets.shape != mean.shape:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} do not match the means of "
            f"shape {tuple(mean.shape)}"
        )
    try:
        torch.broadcast_shapes(std.shape, mean.shape)
    except RuntimeError as error:
        raise ValueError(
            f"std of shape {tuple(std.shape)} does not broadcast to the means of "
            f"shape {tuple(mean.shape)}"
        ) from error
    if mean.numel() == 0:
        raise ValueError("need at least one prediction, got none")
    if not bool((std.detach() > 0).all()):
        raise ValueError(
            f"std must be positive, got a minimum of {float(std.detach().min()):g}"
        )
    standardized = (targets - mean) / std
    values = 0.5 * standardized.square() + std.log() + HALF_LOG_TWO_PI
    return values.expand(mean.shape).mean()


# --------------------------------------------------------------- OOD detection
def _roc_counts(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    r"""True and false positive counts at each distinct threshold, descending.

    A threshold :math:`t` flags the inputs with score :math:`\ge t` as OOD.
    """
    scores = torch.cat([scores_out, scores_in])
    is_out = torch.cat([torch.ones_like(scores_out), torch.zeros_like(scores_in)])
    order = scores.argsort(descending=True, stable=True)
    scores, is_out = scores[order], is_out[order]
    # The last index of each run of equal scores: one ROC point per threshold.
    last = torch.nonzero(scores[1:] != scores[:-1]).reshape(-1)
    last = torch.cat([last, last.new_tensor([len(scores) - 1])])
    true_positives = is_out.cumsum(0)[last]
    false_positives = (last + 1).to(torch.float64) - true_positives
    return true_positives, false_positives


def ood_auroc(scores_in: Tensor, scores_out: Tensor) -> Tensor:
    r"""Area under the ROC curve of detecting OOD inputs by their score.

    The probability that an OOD input scores higher than an in-distribution one,
    ties counting one half (the Mann-Whitney statistic):

    .. math::
        \mathrm{AUROC} = \frac{1}{N_{\text{in}} N_{\text{out}}}
        \sum_{i \in \text{in}} \sum_{j \in \text{out}} \Bigl(\mathbb 1[s_j > s_i]
        + \tfrac12 \mathbb 1[s_j = s_i]\Bigr).

    0.5 is chance, 1 a perfect detector. Higher scores must mean "more likely OOD"
    (see the module docstring). Matches scikit-learn's ``roc_auc_score`` with the
    OOD inputs as the positive class.

    Parameters
    ----------
    scores_in: Tensor
        Scores of in-distribution inputs, any shape (flattened).
    scores_out: Tensor
        Scores of OOD inputs, any shape (flattened).

    Returns
    -------
    Tensor
        0-dim float64.

    Raises
    ------
    ValueError
        If a set of scores is empty or not finite.
    """
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    true_positives, false_positives = _roc_counts(scores_in, scores_out)
    origin = true_positives.new_zeros(1)
    tpr = torch.cat([origin, true_positives]) / len(scores_out)
    fpr = torch.cat([origin, false_positives]) / len(scores_in)
    return torch.trapezoid(tpr, fpr)


def ood_aupr(scores_in: Tensor, scores_out: Tensor) -> Tensor:
    r"""Area under the precision-recall curve, OOD inputs as positives (AUPR-Out).

    Computed as the average precision over the distinct thresholds :math:`t_k`,
    from the highest score down,

    .. math::
        \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k, \qquad
        P_k = \frac{\mathrm{TP}_k}{\mathrm{TP}_k + \mathrm{FP}_k},\;
        R_k = \frac{\mathrm{TP}_k}{N_{\text{out}}},\; R_0 = 0,

    without interpolation, as scikit-learn's ``average_precision_score``. Chance
    level is the OOD fraction :math:`N_{\text{out}} / (N_{\text{in}} +
    N_{\text{out}})`. For AUPR-In (in-distribution inputs as positives), call
    ``ood_aupr(-scores_out, -scores_in)``.

    Parameters
    ----------
    scores_in: Tensor
        Scores of in-distribution inputs, any shape (flattened).
    scores_out: Tensor
        Scores of OOD inputs, any shape (flattened); higher means more likely OOD.

    Returns
    -------
    Tensor
        0-dim float64.

    Raises
    ------
    ValueError
        If a set of scores is empty or not finite.
    """
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    true_positives, false_positives = _roc_counts(scores_in, scores_out)
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / len(scores_out)
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return (steps * precision).sum()


def ood_fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> Tensor:
    r"""The false positive rate at the first threshold that reaches a given TPR.

    Lowering the threshold :math:`t` from the highest score down, flagging inputs
    with score :math:`\ge t` as OOD, this is the fraction of in-distribution inputs
    flagged at the first threshold where at least the fraction ``tpr`` of OOD
    inputs is flagged:

    .. math::
        \mathrm{FPR@TPR} = \mathrm{FPR}(t^*), \qquad
        t^* = \max\{t : \mathrm{TPR}(t) \ge \text{tpr}\}.

    ``tpr=0.95`` gives the common FPR@95%TPR; lower is better.

    Parameters
    ----------
    scores_in: Tensor
        Scores of in-distribution inputs, any shape (flattened).
    scores_out: Tensor
        Scores of OOD inputs, any shape (flattened); higher means more likely OOD.
    tpr: float, default: 0.95
        The true positive rate to reach, in :math:`(0, 1]`.

    Returns
    -------
    Tensor
        0-dim float64, in :math:`[0, 1]`.

    Raises
    ------
    ValueError
        If a set of scores is empty or not finite, or ``tpr`` is not in
        :math:`(0, 1]`.
    """
    if isinstance(tpr, bool) or not (0 < float(tpr) <= 1):
        raise ValueError(f"tpr must be a number in (0, 1], got {tpr!r}")
    scores_in, scores_out = _check_scores(scores_in, scores_out)
    true_positives, false_positives = _roc_counts(scores_in, scores_out)
    # Compare counts, not rates: tpr * N_out may not be exactly representable.
    needed = math.ceil(float(tpr) * len(scores_out) - 1e-9)
    first = int(torch.nonzero(true_positives >= needed)[0])
    return false_positives[first] / len(scores_in)


class OODDetection(NamedTuple):
    """OOD detection metrics of one score (higher = more likely OOD)."""

    auroc: Tensor
    """Area under the ROC curve, see :func:`ood_auroc`."""
    aupr: Tensor
    """Area under the precision-recall curve, OOD positive, see :func:`ood_aupr`."""
    fpr_at_tpr: Tensor
    """False positive rate at the requested TPR, see :func:`ood_fpr_at_tpr`."""


def ood_detection(
    scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95
) -> OODDetection:
    """AUROC, AUPR and FPR at a TPR of detecting OOD inputs by a score, at once.

    Parameters
    ----------
    scores_in: Tensor
        Scores of in-distribution inputs, any shape (flattened).
    scores_out: Tensor
        Scores of OOD inputs, any shape (flattened); higher means more likely OOD.
    tpr: float, default: 0.95
        The true positive rate of :func:`ood_fpr_at_tpr`.

    Returns
    -------
    OODDetection
        ``(auroc, aupr, fpr_at_tpr)``, 0-dim float64 each.

    Raises
    ------
    ValueError
        If a set of scores is empty or not finite, or ``tpr`` is not in
        :math:`(0, 1]`.
    """
    return OODDetection(
        ood_auroc(scores_in, scores_out),
        ood_aupr(scores_in, scores_out),
        ood_fpr_at_tpr(scores_in, scores_out, tpr),
    )
