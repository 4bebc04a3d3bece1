import pytest
import torch

pytest.importorskip("sklearn")

from torch_blue_pyro import demo, metrics


def test_demo_trains_a_calibrated_classifier(capsys) -> None:
    metrics = demo.main(["--epochs", "8", "--samples", "16"])
    assert metrics["accuracy"] > 0.9
    assert 0 < metrics["nll"] < 0.4
    assert 0 <= metrics["ece"] < 0.1
    assert metrics["seconds_per_epoch"] > 0
    printed = capsys.readouterr().out
    for label in ("accuracy", "NLL", "ECE", "seconds per epoch"):
        assert label in printed


def test_expected_calibration_error_by_hand() -> None:
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = torch.tensor([0, 1, 1, 1])
    # Bins of width .25: (.5, .75] holds confidences .6 (wrong) and .7 (right), a
    # gap of |.65 - .5|; (.75, 1] holds .9 and .8, both right, a gap of |.85 - 1|.
    ece = metrics.expected_calibration_error(probabilities, labels, n_bins=4)
    assert ece.item() == pytest.approx(0.5 * abs(0.65 - 0.5) + 0.5 * abs(0.85 - 1.0))
