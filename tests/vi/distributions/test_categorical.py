import pytest
import torch

from torch_blue_pyro.vi.distributions import Categorical

torch_blue_distributions = pytest.importorskip("torch_blue.vi.distributions")


@pytest.mark.parametrize("input_type", ["logits", "probs"])
def test_matches_torch_blue(input_type: str) -> None:
    samples = torch.rand(5, 4, 3) + 0.1
    target = torch.tensor([0, 2, 1, 2])
    ours = Categorical(input_type).log_prob_from_samples(target, samples)
    theirs = torch_blue_distributions.Categorical(input_type).log_prob_from_samples(
        target, samples
    )
    torch.testing.assert_close(ours, theirs)


def test_predictive_parameters_average_the_probabilities() -> None:
    logits = torch.randn(5, 4, 3)
    probs = Categorical().predictive_parameters_from_samples(logits)
    torch.testing.assert_close(probs, torch.softmax(logits + 1e-5, -1).mean(0))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_accepts_torch_blue_1_1_tuples() -> None:
    probs = torch.softmax(torch.randn(4, 3), -1)
    labels = torch.tensor([0, 1, 2, 0])
    dist = Categorical()
    torch.testing.assert_close(
        dist.log_prob(labels, (probs,)), dist.log_prob_from_parameters(labels, probs)
    )


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match='input_type must be "logits" or "probs"'):
        Categorical("softmax")
    dist = Categorical()
    probs = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="integer class labels"):
        dist.log_prob(torch.tensor([0.5, 1.0]), probs)
    with pytest.raises(ValueError, match="does not match predictions"):
        dist.log_prob(torch.tensor([0, 1, 2]), probs)
