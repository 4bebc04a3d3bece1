import pytest
import torch
from torch import nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical, MeanFieldNormal
from torch_blue_pyro.vi.utils import UnsupportedDistributionError

torch_blue_vi = pytest.importorskip("torch_blue.vi")


def classifier() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 16), nn.ReLU(), vi.VILinear(16, 3))


def regressor() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 16), nn.ReLU(), vi.VILinear(16, 2))


@pytest.mark.parametrize("heat", [1.0, 0.3])
def test_categorical_loss_equals_torch_blue(heat: float) -> None:
    output = classifier()(torch.randn(8, 4), samples=6)
    target = torch.randint(0, 3, (8,))
    ours = vi.KullbackLeiblerLoss(Categorical(), dataset_size=100, heat=heat)
    theirs = torch_blue_vi.KullbackLeiblerLoss(
        torch_blue_vi.distributions.Categorical(), dataset_size=100, heat=heat
    )
    torch.testing.assert_close(ours(output, target), theirs(output, target))


def test_normal_loss_equals_torch_blue() -> None:
    output = regressor()(torch.randn(8, 4), samples=6)
    target = torch.randn(8, 2)
    ours = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=50)
    theirs = torch_blue_vi.KullbackLeiblerLoss(
        torch_blue_vi.distributions.MeanFieldNormal(), dataset_size=50
    )
    torch.testing.assert_close(ours(output, target), theirs(output, target))


def test_same_weights_give_the_same_expected_loss_as_torch_blue() -> None:
    """Whole pipeline: same parameters, independent draws, same mean loss."""
    ours = classifier()
    theirs = torch_blue_vi.VISequential(
        torch_blue_vi.VILinear(4, 16), nn.ReLU(), torch_blue_vi.VILinear(16, 3)
    )
    theirs.load_state_dict(ours.state_dict())
    x, target = torch.randn(32, 4), torch.randint(0, 3, (32,))
    our_loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=100)
    their_loss = torch_blue_vi.KullbackLeiblerLoss(
        torch_blue_vi.distributions.Categorical(), dataset_size=100
    )
    with torch.no_grad():
        a = torch.stack([our_loss(ours(x, samples=50), target) for _ in range(40)])
        b = torch.stack([their_loss(theirs(x, samples=50), target) for _ in range(40)])
    standard_error = (a.var() / 40 + b.var() / 40).sqrt()
    assert (a.mean() - b.mean()).abs() < 4 * standard_error + 1e-3 * a.mean().abs()


def test_loss_components_closed_form() -> None:
    logits = torch.randn(4, 5, 3)
    log_probs = torch.tensor([[-1.0, 2.0], [-3.0, 4.0], [-2.0, 1.0], [0.0, 1.0]])
    output = vi.VIReturn(logits, log_probs)
    target = torch.tensor([0, 2, 1, 1, 0])
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=10, heat=0.5, track=True)
    value = loss(output, target)
    probs = torch.softmax(logits + 1e-5, -1).mean(0)
    nll = -torch.log(probs[torch.arange(5), target] + 1e-5).mean()
    kl = 0.5 * (log_probs[:, 1].mean() - log_probs[:, 0].mean())
    torch.testing.assert_close(value, 10 * nll + kl)
    assert loss.log["data_fitting"] == [pytest.approx(float(10 * nll))]
    assert loss.log["prior_matching"] == [pytest.approx(float(kl))]
    torch.testing.assert_close(loss.log["log_probs"][0], log_probs.mean(0))


def test_dataset_size_at_call_overrides_construction() -> None:
    output = vi.VIReturn(torch.randn(3, 4, 3), torch.zeros(3, 2))
    target = torch.randint(0, 3, (4,))
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=10)
    torch.testing.assert_close(
        loss(output, target, dataset_size=20), 2 * loss(output, target)
    )


def test_missing_dataset_size_warns_and_uses_the_batch_size() -> None:
    output = vi.VIReturn(torch.randn(3, 4, 3), torch.zeros(3, 2))
    target = torch.randint(0, 3, (4,))
    loss = vi.KullbackLeiblerLoss(Categorical())
    with pytest.warns(UserWarning, match=r"Batch size \(4\) is used instead"):
        value = loss(output, target)
    torch.testing.assert_close(value, loss(output, target, dataset_size=4))


@pytest.mark.parametrize("bad", [0, -5, 2.5, "100", True])
def test_bad_dataset_size(bad) -> None:
    with pytest.raises(ValueError, match="dataset_size must be a positive int"):
        vi.KullbackLeiblerLoss(Categorical(), dataset_size=bad)
    output = vi.VIReturn(torch.randn(3, 4, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="dataset_size must be a positive int"):
        vi.KullbackLeiblerLoss(Categorical())(output, torch.zeros(4), dataset_size=bad)


def test_track_can_be_switched_on_later_and_keeps_history() -> None:
    output = vi.VIReturn(torch.randn(3, 4, 3), torch.zeros(3, 2))
    target = torch.randint(0, 3, (4,))
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=4)
    assert loss.log is None
    loss.track()
    loss(output, target)
    loss.track(False)
    loss(output, target)
    loss.track()
    loss(output, target)
    assert len(loss.log["data_fitting"]) == 2


def test_output_without_log_probs_is_a_clear_error() -> None:
    model = classifier()
    model.return_log_probs = False
    output = model(torch.randn(4, 4), samples=3)
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=4)
    with pytest.raises(ValueError, match="needs model_output with log_probs"):
        loss(output, torch.zeros(4))


def test_normal_predictive_with_one_sample_is_an_error_not_nan() -> None:
    output = regressor()(torch.randn(4, 4), samples=1)
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=4)
    with pytest.raises(ValueError, match="needs samples >= 2, got 1"):
        loss(output, torch.randn(4, 2))


def test_labels_out_of_range_are_a_clear_error() -> None:
    output = classifier()(torch.randn(4, 4), samples=2)
    loss = vi.KullbackLeiblerLoss(Categorical(), dataset_size=4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss(output, torch.tensor([0, 1, 2, 3]))


def test_distribution_that_cannot_predict() -> None:
    class PriorOnly(vi.distributions.Prior):
        distribution_parameters = ("mean",)
        mean = 0.0

        def log_prob(self, sample: torch.Tensor, parameters: tuple) -> torch.Tensor:
            return -0.5 * (sample - parameters[0]) ** 2

    with pytest.raises(UnsupportedDistributionError, match="PriorOnly"):
        vi.KullbackLeiblerLoss(PriorOnly())


@pytest.mark.parametrize("heat", [-1.0, float("nan"), float("inf")])
def test_bad_heat(heat: float) -> None:
    with pytest.raises(ValueError, match="heat must be a finite number"):
        vi.KullbackLeiblerLoss(Categorical(), heat=heat)
