"""The weight-site distributions behave as ``Normal(...).to_event(...)``."""

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from torch_blue_pyro.sites import NormalWeightPosterior, NormalWeightPrior


def posterior_pair() -> tuple[NormalWeightPosterior, dist.Independent, tuple]:
    loc = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_scale = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ours = NormalWeightPosterior(loc, log_scale.exp())
    generic = dist.Normal(loc, log_scale.exp()).to_event(2)
    return ours, generic, (loc, log_scale)


@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_posterior_scores_its_own_draws_and_others_as_the_generic_normal(
    batch_shape: tuple[int, ...],
) -> None:
    ours, generic, _ = posterior_pair()
    ours, generic = ours.expand(batch_shape), generic.expand(batch_shape)
    assert ours.batch_shape == generic.batch_shape
    assert ours.event_shape == generic.event_shape
    drawn = ours.rsample((7,))
    assert drawn.shape == (7, *batch_shape, 3, 4)
    torch.testing.assert_close(ours.log_prob(drawn), generic.log_prob(drawn))
    other = torch.randn(7, *batch_shape, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(ours.log_prob(other), generic.log_prob(other))
    torch.testing.assert_close(ours.entropy(), generic.entropy())
    torch.testing.assert_close(ours.mean, generic.mean)
    torch.testing.assert_close(ours.variance, generic.variance)


def test_posterior_draws_have_the_generic_values_and_total_gradients() -> None:
    ours, generic, parameters = posterior_pair()
    torch.manual_seed(1)
    drawn = ours.rsample((6,))
    torch.manual_seed(1)
    expected = generic.rsample((6,))
    torch.testing.assert_close(drawn, expected)
    weights = torch.randn(6, 3, 4, dtype=torch.float64)

    def objective(value: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return (weights * value.tanh()).sum() + (log_q * torch.arange(6.0)).sum()

    got = torch.autograd.grad(objective(drawn, ours.log_prob(drawn)), parameters)
    want = torch.autograd.grad(
        objective(expected, generic.log_prob(expected)), parameters
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_posterior_rescores_a_draw_after_its_location_changed() -> None:
    ours, _, (loc, log_scale) = posterior_pair()
    drawn = ours.rsample()
    with torch.no_grad():
        loc.add_(1.0)
    expected = dist.Normal(loc, log_scale.exp()).to_event(2).log_prob(drawn)
    torch.testing.assert_close(ours.log_prob(drawn), expected)


def test_posterior_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match=r"loc and scale must have one shape"):
        NormalWeightPosterior(torch.zeros(3), torch.ones(2))


@pytest.mark.parametrize("batch_shape", [(), (4,)])
def test_prior_matches_the_generic_normal(batch_shape: tuple[int, ...]) -> None:
    loc, scale = torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.7).double()
    ours = NormalWeightPrior(loc, scale, torch.Size((2, 5))).expand(batch_shape)
    generic = dist.Normal(loc, scale).expand((2, 5)).to_event(2).expand(batch_shape)
    values = torch.randn(3, *batch_shape, 2, 5, dtype=torch.float64)
    values.requires_grad_(True)
    torch.testing.assert_close(ours.log_prob(values), generic.log_prob(values))
    got = torch.autograd.grad(ours.log_prob(values).sum(), values)
    want = torch.autograd.grad(generic.log_prob(values).sum(), values)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ours.entropy(), generic.entropy())
    samples = ours.sample((4000,))
    assert samples.shape == (4000, *batch_shape, 2, 5)
    assert abs(samples.mean().item() - 0.3) < 0.05
    assert abs(samples.std().item() - 1.7) < 0.05
    with pytest.raises(ValueError, match=r"loc and scale must be scalar tensors"):
        NormalWeightPrior(torch.zeros(2), scale, torch.Size((2,)))


def test_kl_divergences_in_closed_form() -> None:
    ours, generic, _ = posterior_pair()
    loc, scale = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.8).double()
    prior = NormalWeightPrior(loc, scale, torch.Size((3, 4)))
    generic_prior = dist.Normal(loc, scale).expand((3, 4)).to_event(2)
    expected = kl_divergence(generic, generic_prior)
    torch.testing.assert_close(kl_divergence(ours, prior), expected)
    # An autoguide's normal against this prior, with a particle batch dimension.
    batched = generic.expand((5,))
    torch.testing.assert_close(
        kl_divergence(batched, prior.expand((5,))), expected.expand(5)
    )
    laplace = dist.Laplace(torch.zeros(3, 4), 1.0).to_event(2)
    with pytest.raises(NotImplementedError):
        kl_divergence(laplace, prior)
