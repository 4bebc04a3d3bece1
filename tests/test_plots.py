import sys
from collections.abc import Iterator

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

from torch_blue_pyro import metrics, plots, uncertainty  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def _classification() -> tuple[torch.Tensor, torch.Tensor]:
    probabilities = uncertainty.predictive_probabilities(2 * torch.randn(8, 100, 3))
    return probabilities, torch.randint(0, 3, (100,))


def test_reliability_diagram_draws_one_bar_per_bin() -> None:
    probabilities, labels = _classification()
    ax = plots.reliability_diagram(probabilities, labels, n_bins=10)
    assert isinstance(ax, Axes)
    accuracy_bars, gap_bars = ax.containers
    assert len(accuracy_bars) == len(gap_bars) == 10
    assert len(ax.lines) == 1  # the diagonal
    bins = metrics.reliability_bins(probabilities, labels, n_bins=10)
    heights = torch.tensor([bar.get_height() for bar in accuracy_bars])
    torch.testing.assert_close(
        heights, bins.accuracies.nan_to_num().float(), check_dtype=False
    )
    ece = metrics.expected_calibration_error(probabilities, labels, n_bins=10)
    assert f"ECE {ece.item():.3f}" in ax.get_legend().get_title().get_text()


def test_reliability_diagram_with_equal_mass_bins_into_given_axes() -> None:
    probabilities, labels = _classification()
    _, ax = plt.subplots()
    returned = plots.reliability_diagram(probabilities, labels, 5, "equal_mass", ax=ax)
    assert returned is ax
    bars = ax.containers[0]
    edges = metrics.reliability_bins(probabilities, labels, 5, "equal_mass").edges
    widths = torch.tensor([bar.get_width() for bar in bars], dtype=edges.dtype)
    torch.testing.assert_close(widths, edges.diff())


def test_regression_band_draws_mean_band_and_points() -> None:
    x = torch.linspace(-2, 2, 50)
    mean, std = torch.sin(x).unsqueeze(-1), (0.1 + x.abs()).unsqueeze(-1)
    ax = plots.regression_band(
        x[torch.randperm(50)],
        mean,
        std,
        k=3,
        x_train=torch.randn(20),
        y_train=torch.randn(20, 1),
    )
    assert len(ax.lines) == 1
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(bands) == 1 and len(points) == 1
    assert len(points[0].get_offsets()) == 20
    xs = ax.lines[0].get_xdata()
    assert (xs[1:] >= xs[:-1]).all()  # sorted by x for drawing


def test_regression_band_with_an_epistemic_band() -> None:
    x = torch.linspace(0, 1, 30)
    result = uncertainty.regression_uncertainty(torch.randn(10, 30, 2))
    ax = plots.regression_band(
        x, result.mean, result.total_std, epistemic_std=result.epistemic_std
    )
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2 and len(ax.lines) == 1
    assert not any(isinstance(c, PathCollection) for c in ax.collections)


def test_regression_band_errors() -> None:
    x = torch.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="mean has 4 values for 5 inputs"):
        plots.regression_band(x, torch.zeros(4), torch.ones(5))
    with pytest.raises(ValueError, match="both x_train and y_train"):
        plots.regression_band(x, x, x, x_train=x)
    with pytest.raises(ValueError, match="k must be a positive number"):
        plots.regression_band(x, x, x, k=0)
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 1\)"):
        plots.regression_band(x, torch.zeros(5, 2), x)


def test_entropy_histogram_draws_two_histograms_on_shared_bins() -> None:
    entropy_in = uncertainty.predictive_entropy(4 * torch.randn(6, 80, 3))
    entropy_out = uncertainty.predictive_entropy(0.5 * torch.randn(6, 40, 3))
    ax = plots.entropy_histogram(entropy_in, entropy_out, bins=12)
    first, second = ax.containers
    assert len(first) == len(second) == 12
    assert [bar.get_x() for bar in first] == [bar.get_x() for bar in second]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["in-distribution", "out-of-distribution"]


def test_entropy_histogram_errors() -> None:
    with pytest.raises(ValueError, match="bins must be a positive int"):
        plots.entropy_histogram(torch.rand(3), torch.rand(3), bins=0)
    with pytest.raises(ValueError, match="out_of_distribution must hold at least"):
        plots.entropy_histogram(torch.rand(3), torch.zeros(0))
    with pytest.raises(ValueError, match="labels must be two names"):
        plots.entropy_histogram(torch.rand(3), torch.rand(3), labels=("a",))
    # Equal scores still give a drawable range.
    ax = plots.entropy_histogram(torch.zeros(3), torch.zeros(2), bins=4)
    assert len(ax.containers[0]) == 4


def test_missing_matplotlib_gives_an_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'torch-blue-pyro\[plots\]'"):
        plots.entropy_histogram(torch.rand(3), torch.rand(3))
