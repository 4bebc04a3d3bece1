"""Plots of predictive uncertainty: reliability diagram, regression band, histograms.

matplotlib is an optional dependency: ``pip install 'torch-blue-pyro[plots]'``. It
is imported when a function is called, not with this module. Every function draws
into ``ax`` (a new figure's axes if ``None``) and returns the axes, so plots can be
combined and restyled; nothing is shown or saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .metrics import Binning, expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["entropy_histogram", "regression_band", "reliability_diagram"]


def _axes(ax: Axes | None) -> Axes:
    """``ax``, or the axes of a new figure; imports matplotlib on first use."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "torch_blue_pyro.plots needs matplotlib: pip install "
            "'torch-blue-pyro[plots]' (or pip install matplotlib)"
        ) from error
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _numpy(values: Any, name: str) -> np.ndarray:
    """A 1-D float numpy array from a tensor or array of ``N`` or ``(N, 1)`` values."""
    if isinstance(values, Tensor):
        values = values.as_subclass(Tensor).detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be one value per point, shape (N,) or (N, 1), got shape "
            f"{array.shape}"
        )
    return array


def reliability_diagram(
    probabilities: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    binning: Binning = "equal_width",
    *,
    ax: Axes | None = None,
) -> Axes:
    """Plot accuracy against confidence per bin, with the calibration gap.

    One bar per bin (``n_bins`` bars, empty bins of height 0) spans the bin on the
    confidence axis and rises to the bin's accuracy; a second, hatched set of bars
    shows the gap between accuracy and mean confidence, and a dashed diagonal the
    perfect calibration. The legend gives the expected calibration error. The data
    are those of :func:`~torch_blue_pyro.metrics.reliability_bins`.

    Parameters
    ----------
    probabilities: Tensor
        ``(*, C)`` predictive probabilities.
    labels: Tensor
        ``(*)`` integer labels in ``[0, C)``.
    n_bins: int, default: 15
        The number of bins.
    binning: {"equal_width", "equal_mass"}, default: "equal_width"
        How the bins are chosen, see
        :func:`~torch_blue_pyro.metrics.reliability_bins`.
    ax: matplotlib.axes.Axes, optional
        Where to draw; a new figure if ``None``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes: ``ax.containers`` holds the accuracy and the gap bars, ``ax.lines``
        the diagonal.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If the inputs are invalid (see :mod:`torch_blue_pyro.metrics`).
    """
    bins = reliability_bins(probabilities, labels, n_bins, binning)
    ece = float(expected_calibration_error(probabilities, labels, n_bins, binning))
    ax = _axes(ax)
    edges = bins.edges.detach().cpu().double().numpy()
    accuracy = np.nan_to_num(bins.accuracies.detach().cpu().double().numpy())
    confidence = np.nan_to_num(bins.confidences.detach().cpu().double().numpy())
    widths = np.diff(edges)
    ax.bar(
        edges[:-1],
        accuracy,
        width=widths,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    ax.bar(
        edges[:-1],
        np.abs(confidence - accuracy),
        width=widths,
        bottom=np.minimum(confidence, accuracy),
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        linewidth=0.5,
        label="gap to confidence",
    )
    ax.plot(
        [0, 1],
        [0, 1],
        linestyle="--",
        color="gray",
        zorder=3,
        label="perfect calibration",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", title=f"ECE {ece:.3f} ({len(widths)} bins)")
    return ax


def regression_band(
    x: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    k: float = 2.0,
    epistemic_std: Tensor | None = None,
    x_train: Tensor | None = None,
    y_train: Tensor | None = None,
    ax: Axes | None = None,
) -> Axes:
    r"""Plot a 1-D regression: the predictive mean in a band of :math:`\pm k` std.

    Draws the mean as a line and :math:`\mu \pm k\sigma` as a shaded band, sorted
    by ``x``; with ``epistemic_std`` a darker inner band :math:`\mu \pm k
    \sigma_{\text{epistemic}}` (from
    :func:`~torch_blue_pyro.uncertainty.regression_uncertainty`) shows how much of
    the width is the model's own uncertainty; with ``x_train`` and ``y_train`` the
    training points as a scatter.

    Parameters
    ----------
    x: Tensor
        ``(N,)`` inputs.
    mean: Tensor
        ``(N,)`` or ``(N, 1)`` predictive means.
    std: Tensor
        ``(N,)`` or ``(N, 1)`` predictive (total) standard deviations.
    k: float, default: 2.0
        The band's half-width in standard deviations; > 0.
    epistemic_std: Tensor, optional
        ``(N,)`` or ``(N, 1)`` epistemic standard deviations for the inner band.
    x_train: Tensor, optional
        ``(M,)`` inputs of the training points; give ``y_train`` with it.
    y_train: Tensor, optional
        ``(M,)`` or ``(M, 1)`` targets of the training points.
    ax: matplotlib.axes.Axes, optional
        Where to draw; a new figure if ``None``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes: the mean in ``ax.lines``; the bands, then the scatter, in
        ``ax.collections``.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If the shapes do not match, ``k`` is not positive, or only one of
        ``x_train`` and ``y_train`` is given.
    """
    if isinstance(k, bool) or not float(k) > 0:
        raise ValueError(f"k must be a positive number, got {k!r}")
    if (x_train is None) != (y_train is None):
        raise ValueError("give both x_train and y_train, or neither")
    xs = _numpy(x, "x")
    columns = {"mean": _numpy(mean, "mean"), "std": _numpy(std, "std")}
    if epistemic_std is not None:
        columns["epistemic_std"] = _numpy(epistemic_std, "epistemic_std")
    for name, column in columns.items():
        if len(column) != len(xs):
            raise ValueError(f"{name} has {len(column)} values for {len(xs)} inputs x")
    ax = _axes(ax)
    order = np.argsort(xs, kind="stable")
    xs, means = xs[order], columns["mean"][order]
    spread = float(k) * columns["std"][order]
    ax.fill_between(
        xs,
        means - spread,
        means + spread,
        color="tab:blue",
        alpha=0.2,
        label=rf"$\pm{float(k):g}$ std (total)",
    )
    if epistemic_std is not None:
        inner = float(k) * columns["epistemic_std"][order]
        ax.fill_between(
            xs,
            means - inner,
            means + inner,
            color="tab:blue",
            alpha=0.35,
            label=rf"$\pm{float(k):g}$ std (epistemic)",
        )
    ax.plot(xs, means, color="tab:blue", label="predictive mean")
    if x_train is not None and y_train is not None:
        points_x, points_y = _numpy(x_train, "x_train"), _numpy(y_train, "y_train")
        if len(points_x) != len(points_y):
            raise ValueError(
                f"x_train has {len(points_x)} values and y_train {len(points_y)}"
            )
        ax.scatter(points_x, points_y, s=8, color="black", label="training data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend()
    return ax


def entropy_histogram(
    in_distribution: Tensor,
    out_of_distribution: Tensor,
    *,
    bins: int = 30,
    labels: Sequence[str] = ("in-distribution", "out-of-distribution"),
    xlabel: str = "predictive entropy (nats)",
    ax: Axes | None = None,
) -> Axes:
    """Overlay histograms of an uncertainty score in and out of distribution.

    Both histograms share ``bins`` equal-width bins over the range of all scores and
    are normalized to unit area, so sets of different sizes compare. A score that
    separates the two sets well detects OOD inputs (see
    :func:`~torch_blue_pyro.metrics.ood_auroc`). Any score works: predictive
    entropy, mutual information, ... (set ``xlabel``).

    Parameters
    ----------
    in_distribution: Tensor
        Scores of in-distribution inputs, any shape (flattened).
    out_of_distribution: Tensor
        Scores of out-of-distribution inputs, any shape (flattened).
    bins: int, default: 30
        The number of bins; >= 1.
    labels: sequence of two str, default: ("in-distribution", "out-of-distribution")
        The legend entries.
    xlabel: str, default: "predictive entropy (nats)"
        The x-axis label.
    ax: matplotlib.axes.Axes, optional
        Where to draw; a new figure if ``None``.

    Returns
    -------
    matplotlib.axes.Axes
        The axes; ``ax.containers`` holds the two histograms' bars.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If a set of scores is empty or not finite, ``bins`` is not a positive int,
        or ``labels`` does not hold two names.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if isinstance(labels, str) or len(labels) != 2:
        raise ValueError(f"labels must be two names, got {labels!r}")
    sets = []
    for name, values in (
        ("in_distribution", in_distribution),
        ("out_of_distribution", out_of_distribution),
    ):
        array = _numpy(torch.as_tensor(values).reshape(-1), name)
        if array.size == 0 or not np.isfinite(array).all():
            raise ValueError(f"{name} must hold at least one finite score")
        sets.append(array)
    ax = _axes(ax)
    low = min(float(s.min()) for s in sets)
    high = max(float(s.max()) for s in sets)
    if high == low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1).tolist()
    for array, label, color in zip(
        sets, labels, ("tab:blue", "tab:orange"), strict=True
    ):
        ax.hist(array, bins=edges, density=True, alpha=0.5, color=color, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()
    return ax
