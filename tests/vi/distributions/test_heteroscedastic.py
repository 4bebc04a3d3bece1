import math
from collections.abc import Iterator

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.uncertainty import HomoscedasticNoise, regression_uncertainty
from torch_blue_pyro.vi.distributions import HeteroscedasticNormal
from torch_blue_pyro.vi.utils import use_norm_constants


def test_is_a_predictive_distribution_only() -> None:
    dist = HeteroscedasticNormal()
    assert dist.is_predictive_distribution
    assert not dist.is_prior and not dist.is_variational_distribution
    assert repr(dist) == "HeteroscedasticNormal(eps=1e-06)"
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        HeteroscedasticNormal(eps=-1.0)


def test_predictive_parameters_are_the_mixture_moments() -> None:
    samples = torch.randn(6, 4, 2)
    mean, std = HeteroscedasticNormal().predictive_parameters_from_samples(samples)
    expected = regression_uncertainty(samples)
    torch.testing.assert_close(mean, expected.mean)
    torch.testing.assert_close(std, expected.total_std)
    # One sample: the predicted sigma itself (MeanFieldNormal would need two).
    mean, std = HeteroscedasticNormal().predictive_parameters_from_samples(samples[:1])
    torch.testing.assert_close(mean, samples[0, :, :1])
    torch.testing.assert_close(std, samples[0, :, 1:].exp())


@pytest.mark.parametrize("norm_constants", [False, True])
def test_log_prob_is_the_normal_log_density(norm_constants: bool) -> None:
    mean, std = torch.randn(5, 1), torch.rand(5, 1) + 0.5
    target = torch.randn(5, 1)
    dist = HeteroscedasticNormal(eps=0.0)
    expected = torch.distributions.Normal(mean, std).log_prob(target)
    try:
        use_norm_constants(norm_constants)
        ours = dist.log_prob_from_parameters(target, (mean, std))
    finally:
        use_norm_constants(False)
    shift = 0.0 if norm_constants else 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(ours, expected + shift)
    # torch_blue 0.9's unpacked call style works too.
    torch.testing.assert_close(
        dist.log_prob(target, mean, std), expected + 0.5 * math.log(2 * math.pi)
    )


def test_kl_loss_data_term_with_one_sample() -> None:
    output = vi.VIReturn(torch.randn(1, 8, 2), torch.zeros(1, 2))
    target = torch.randn(8, 1)
    loss = vi.KullbackLeiblerLoss(HeteroscedasticNormal(eps=0.0), dataset_size=100)
    mean, log_sigma = output[0].as_tensor().chunk(2, -1)
    log_likelihood = torch.distributions.Normal(mean, log_sigma.exp()).log_prob(target)
    expected = -100 * (log_likelihood + 0.5 * math.log(2 * math.pi)).mean()
    torch.testing.assert_close(loss(output, target), expected)


def test_target_shape_must_match_the_means() -> None:
    samples = torch.randn(3, 8, 2)
    dist = HeteroscedasticNormal()
    with pytest.raises(ValueError, match=r"give the targets as y.unsqueeze\(-1\)"):
        dist.log_prob_from_samples(torch.randn(8), samples)
    with pytest.raises(ValueError, match=r"target of shape \(8, 2\) does not match"):
        dist.log_prob_from_samples(torch.randn(8, 2), samples)
    with pytest.raises(ValueError, match="even, non-zero last dimension"):
        dist.log_prob_from_samples(torch.randn(8, 1), torch.randn(3, 8, 3))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one torch thread: small models stall on more when cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(model: vi.VISequential, x: Tensor, y: Tensor, steps: int) -> None:
    loss_fn = vi.KullbackLeiblerLoss(HeteroscedasticNormal(), dataset_size=len(x))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(steps):
        loss = loss_fn(model(x, samples=2), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.usefixtures("one_thread")
def test_homoscedastic_noise_learns_the_noise_level() -> None:
    x = torch.linspace(-1, 1, 128).unsqueeze(-1)
    y = 2 * x + 0.3 * torch.randn_like(x)
    variational = vi.distributions.MeanFieldNormal(std=0.01)
    model = vi.VISequential(
        vi.VILinear(1, 1, variational_distribution=variational), HomoscedasticNoise(1)
    )
    _train(model, x, y, steps=200)
    residual_std = (y - 2 * x).std().item()
    assert model[1].sigma.item() == pytest.approx(residual_std, abs=0.03)


@pytest.mark.usefixtures("one_thread")
def test_heteroscedastic_network_learns_input_dependent_noise() -> None:
    x = torch.linspace(0, 1, 128).unsqueeze(-1)
    y = x + (0.05 + 0.5 * x) * torch.randn_like(x)  # std .1 at x = .1, .5 at x = .9
    variational = vi.distributions.MeanFieldNormal(std=0.01)
    model = vi.VISequential(
        vi.VILinear(1, 16, variational_distribution=variational),
        nn.Tanh(),
        vi.VILinear(16, 2, variational_distribution=variational),
    )
    _train(model, x, y, steps=300)
    model.return_log_probs = False
    with torch.no_grad():
        result = regression_uncertainty(model(torch.tensor([[0.1], [0.9]]), samples=32))
    low, high = result.aleatoric_std.squeeze(-1).tolist()
    assert low < 0.3 < 0.35 < high and high > 2 * low


def test_observation_distribution_trains_with_svi() -> None:
    net = vi.VISequential(vi.VILinear(1, 8), nn.Tanh(), vi.VILinear(8, 2))
    likelihood = HeteroscedasticNormal()
    x, y = torch.randn(32, 1), torch.randn(32, 1)

    def model(x: Tensor, y: Tensor) -> None:
        output = net(x)
        with pyro.plate("data", len(x)):
            pyro.sample(
                "obs", likelihood.observation_distribution(output).to_event(1), obs=y
            )

    observation = likelihood.observation_distribution(torch.zeros(32, 2))
    assert observation.batch_shape == (32, 1)
    torch.testing.assert_close(
        observation.scale, torch.full((32, 1), math.sqrt(1 + 1e-6))
    )
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
