import math

import pytest
import torch

from torch_blue_pyro.vi import VILinear
from torch_blue_pyro.vi.distributions import MeanFieldNormal
from torch_blue_pyro.vi.distributions.normal import draw_under_normal_prior
from torch_blue_pyro.vi.utils import use_norm_constants

torch_blue_distributions = pytest.importorskip("torch_blue.vi.distributions")


def test_log_prob_matches_torch_blue_and_the_closed_form() -> None:
    sample, mean, log_std = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    ours = MeanFieldNormal().log_prob(sample, (mean, log_std))
    theirs = torch_blue_distributions.MeanFieldNormal().log_prob(
        sample, (mean, log_std)
    )
    torch.testing.assert_close(ours, theirs)
    normal = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(
        ours,
        normal.log_prob(sample) + 0.5 * math.log(2 * math.pi),
        rtol=1e-5,
        atol=1e-5,
    )


def test_norm_constants_switch() -> None:
    sample, mean, log_std = torch.randn(5), torch.zeros(5), torch.zeros(5)
    try:
        use_norm_constants(True)
        with_constants = MeanFieldNormal().log_prob(sample, (mean, log_std))
    finally:
        use_norm_constants(False)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(sample)
    torch.testing.assert_close(with_constants, expected)


@pytest.mark.parametrize("norm_constants", [False, True])
def test_closed_form_log_q_equals_scoring_the_sample(norm_constants: bool) -> None:
    mean = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_std = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    dist = MeanFieldNormal()
    try:
        use_norm_constants(norm_constants)
        samples, log_q = dist.rsample_with_log_prob((mean, log_std), 5, True)
        scored = dist.log_prob(samples, (mean, log_std)).flatten(1).sum(1)
    finally:
        use_norm_constants(False)
    torch.testing.assert_close(log_q, scored)
    # The total derivative (through the sample too) agrees: zero for the mean, -1
    # per element for the log-std.
    inputs = (mean, log_std)
    closed = torch.autograd.grad(
        log_q.sum(), inputs, retain_graph=True, allow_unused=True
    )
    scored_grad = torch.autograd.grad(scored.sum(), inputs)
    closed_mean = torch.zeros_like(mean) if closed[0] is None else closed[0]
    torch.testing.assert_close(closed_mean, scored_grad[0])
    torch.testing.assert_close(closed[1], scored_grad[1])
    torch.testing.assert_close(closed[1], torch.full_like(log_std, -5.0))


def test_closed_form_prior_equals_scoring_the_sample() -> None:
    prior = MeanFieldNormal(mean=0.3, std=2.0)
    samples = torch.randn(4, 3, 5, dtype=torch.float64)
    expected = prior.prior_log_prob(samples).flatten(1).sum(1)
    torch.testing.assert_close(prior.log_prob_per_sample(samples), expected)


def test_samples_have_the_variational_moments() -> None:
    mean, log_std = torch.full((2,), 1.5), torch.full((2,), math.log(0.5))
    samples, _ = MeanFieldNormal().rsample_with_log_prob((mean, log_std), 40000, False)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(samples.std(0), log_std.exp(), atol=0.02, rtol=0)


def test_both_call_styles_of_torch_blue() -> None:
    mean, log_std = torch.zeros(3), torch.zeros(3)
    dist = MeanFieldNormal()
    assert dist.sample((mean, log_std)).shape == dist.sample(mean, log_std).shape
    sample = torch.randn(3)
    torch.testing.assert_close(
        dist.log_prob(sample, (mean, log_std)), dist.log_prob(sample, mean, log_std)
    )


def test_predictive_role_matches_torch_blue() -> None:
    samples, target = torch.randn(6, 4, 2), torch.randn(4, 2)
    ours = MeanFieldNormal().log_prob_from_samples(target, samples)
    theirs = torch_blue_distributions.MeanFieldNormal().log_prob_from_samples(
        target, samples
    )
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_std(std: float) -> None:
    with pytest.raises(ValueError, match="std must be a positive finite number"):
        MeanFieldNormal(std=std)


def test_pyro_forms() -> None:
    prior = MeanFieldNormal(0.0, 2.0).pyro_distribution(
        torch.Size([3, 4]), torch.zeros((), dtype=torch.float64)
    )
    assert prior.event_shape == (3, 4) and prior.batch_shape == ()
    assert prior.sample().dtype == torch.float64
    mean, log_std = torch.zeros(3, 4), torch.zeros(3, 4)
    guide = MeanFieldNormal().pyro_distribution((mean, log_std))
    assert guide.event_shape == (3, 4) and guide.has_rsample


@pytest.mark.parametrize("norm_constants", [False, True])
@pytest.mark.parametrize("prior_mean", [0.0, 0.3])
@pytest.mark.parametrize("used", ["all", "log_probs_only", "samples_only"])
def test_fused_draw_under_normal_prior_equals_autograd(
    norm_constants: bool, prior_mean: float, used: str
) -> None:
    # The fused draw has the values and gradients of drawing with
    # rsample_with_log_prob and scoring with the prior's log_prob_per_sample.
    mean = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    log_std = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    variational, prior = MeanFieldNormal(), MeanFieldNormal(mean=prior_mean, std=1.7)
    num_samples = 5
    weights = torch.randn(num_samples, 3, 4, dtype=torch.float64)
    prior_weights, q_weights = torch.randn(2, num_samples, dtype=torch.float64)

    def loss(samples: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor):
        terms = []
        if used != "log_probs_only":
            terms.append((weights * samples.sin()).sum())
        if used != "samples_only":
            terms.append((prior_weights * log_p).sum() + (q_weights * log_q).sum())
        return sum(terms)

    try:
        use_norm_constants(norm_constants)
        seed = torch.seed()
        fused = draw_under_normal_prior(mean, log_std, prior, num_samples)
        torch.manual_seed(seed)
        samples, log_q = variational.rsample_with_log_prob(
            (mean, log_std), num_samples, True
        )
        reference = (samples, prior.log_prob_per_sample(samples), log_q)
    finally:
        use_norm_constants(False)
    for got, expected in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, expected)
    fused_grads = torch.autograd.grad(loss(*fused), (mean, log_std))
    reference_grads = torch.autograd.grad(loss(*reference), (mean, log_std))
    for got, expected in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_layers_use_the_fused_draw_for_normal_under_normal_prior() -> None:
    # A VILinear's log-probs equal drawing and scoring its weights one by one.
    torch.manual_seed(0)
    layer = VILinear(3, 2, prior=MeanFieldNormal(std=0.5))
    input_ = torch.randn(4, 3)
    seed = torch.seed()
    output = layer(input_, samples=6)
    torch.manual_seed(seed)
    expected = torch.zeros(6, 2, dtype=output.dtype)
    for name in ("weight", "bias"):
        mean, log_std = layer.get_variational_parameters(name)
        values, log_q = MeanFieldNormal().rsample_with_log_prob(
            (mean, log_std), 6, True
        )
        expected[:, 0] += MeanFieldNormal(std=0.5).log_prob_per_sample(values)
        expected[:, 1] += log_q
    torch.testing.assert_close(output.log_probs, expected)


def test_prediction_draws_equal_tracked_draws() -> None:
    # Without gradients the draw reuses the noise's memory; values are unchanged.
    mean = torch.randn(3, 4, requires_grad=True)
    log_std = torch.randn(3, 4, requires_grad=True)
    dist = MeanFieldNormal()
    seed = torch.seed()
    tracked, _ = dist.rsample_with_log_prob((mean, log_std), 5, False)
    assert tracked.requires_grad
    torch.manual_seed(seed)
    with torch.no_grad():
        untracked, log_prob = dist.rsample_with_log_prob((mean, log_std), 5, False)
    assert log_prob is None and not untracked.requires_grad
    torch.testing.assert_close(untracked, tracked.detach())
    # The tracked draw still differentiates (its noise was not overwritten).
    (grad_mean,) = torch.autograd.grad(tracked.sum(), mean)
    torch.testing.assert_close(grad_mean, torch.full_like(mean, 5.0))
