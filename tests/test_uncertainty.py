import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import Tensor, nn

from torch_blue_pyro import uncertainty, vi
from torch_blue_pyro.uncertainty import (
    HomoscedasticNoise,
    classification_uncertainty,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_mean,
    predictive_probabilities,
    predictive_std,
    predictive_variance,
    regression_uncertainty,
    sample_tensor,
    split_mean_log_sigma,
)


# ------------------------------------------------------------------ sample_tensor
def test_sample_tensor_reads_a_vireturn_as_a_plain_tensor() -> None:
    out = vi.VIReturn(torch.randn(3, 4, 2), torch.zeros(3, 2))
    values = sample_tensor(out)
    assert type(values) is Tensor
    assert torch.equal(values, out.as_tensor())


def test_sample_tensor_reads_a_site_of_a_dict() -> None:
    draws = {"logits": torch.randn(4, 3, 2), "obs": torch.zeros(4, 3)}
    assert sample_tensor(draws, site="logits") is draws["logits"]


def test_sample_tensor_errors_name_the_problem() -> None:
    draws = {"logits": torch.randn(4, 3, 2), "obs": torch.zeros(4, 3)}
    with pytest.raises(ValueError, match=r"pass site=, one of \['logits', 'obs'\]"):
        sample_tensor(draws)
    with pytest.raises(ValueError, match="site 'probs' is not among"):
        sample_tensor(draws, site="probs")
    with pytest.raises(ValueError, match="only for a dict of samples"):
        sample_tensor(torch.zeros(2, 3), site="logits")
    with pytest.raises(ValueError, match="leading sample dimension"):
        sample_tensor(torch.tensor(1.0))
    with pytest.raises(TypeError, match="must be a tensor"):
        sample_tensor([[0.0, 1.0]])  # type: ignore[arg-type]


# ------------------------------------------------------------------ classification
def test_equal_samples_have_no_mutual_information() -> None:
    logits = torch.randn(5, 3).expand(6, 5, 3)  # six identical weight samples
    result = classification_uncertainty(logits)
    probs = torch.softmax(logits[0], dim=-1)
    entropy = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(result.probabilities, probs)
    torch.testing.assert_close(result.total, entropy)
    torch.testing.assert_close(result.aleatoric, entropy)
    torch.testing.assert_close(result.epistemic, torch.zeros(5), atol=1e-6, rtol=0)


def test_two_opposite_one_hot_samples_have_mutual_information_log_2() -> None:
    probs = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])  # (S=2, N=1, C=3)
    result = classification_uncertainty(probs, "probs")
    torch.testing.assert_close(result.probabilities, torch.tensor([[0.5, 0.5, 0.0]]))
    torch.testing.assert_close(result.aleatoric, torch.zeros(1))  # 0 log 0 = 0
    torch.testing.assert_close(result.total, torch.full((1,), math.log(2)))
    torch.testing.assert_close(result.epistemic, torch.full((1,), math.log(2)))


def test_uniform_prediction_has_entropy_log_c() -> None:
    logits = torch.zeros(4, 2, 5)
    torch.testing.assert_close(
        predictive_entropy(logits), torch.full((2,), math.log(5))
    )
    torch.testing.assert_close(expected_entropy(logits), torch.full((2,), math.log(5)))


def test_entropy_decomposition_identity_and_kl_form() -> None:
    logits = 3 * torch.randn(7, 11, 4, dtype=torch.float64)
    result = classification_uncertainty(logits)
    torch.testing.assert_close(result.total, result.aleatoric + result.epistemic)
    # The mutual information is the mean KL divergence of each sample from the mean.
    p = torch.softmax(logits, -1)
    kl = (p * (p.log() - result.probabilities.log())).sum(-1).mean(0)
    torch.testing.assert_close(result.epistemic, kl)
    assert bool((result.epistemic <= math.log(4) + 1e-12).all())
    torch.testing.assert_close(predictive_probabilities(logits), result.probabilities)
    torch.testing.assert_close(predictive_entropy(logits), result.total)
    torch.testing.assert_close(expected_entropy(logits), result.aleatoric)
    torch.testing.assert_close(mutual_information(logits), result.epistemic)


def test_probs_input_is_normalized_like_categorical() -> None:
    unnormalized = torch.rand(5, 4, 3) + 0.1
    ours = predictive_probabilities(unnormalized, "probs")
    theirs = vi.distributions.Categorical("probs").predictive_parameters_from_samples(
        unnormalized
    )
    torch.testing.assert_close(ours, theirs)


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match='input_type must be "logits" or "probs"'):
        predictive_probabilities(torch.zeros(2, 3, 4), "softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative probabilities"):
        predictive_probabilities(torch.randn(2, 3, 4), "probs")
    with pytest.raises(ValueError, match=r"floating point of shape \(S, \*, C\)"):
        predictive_entropy(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"floating point of shape \(S, \*, C\)"):
        predictive_entropy(torch.zeros(4))


def test_works_on_a_vireturn_from_the_model() -> None:
    model = vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 3))
    out = model(torch.randn(6, 4), samples=5)
    result = classification_uncertainty(out)
    assert all(type(t) is Tensor for t in result)
    assert result.probabilities.shape == (6, 3)
    assert result.total.shape == result.aleatoric.shape == (6,)
    # Autograd is kept: the uncertainty of a VIReturn can be differentiated.
    result.epistemic.sum().backward()
    assert model[0]._weight_mean.grad is not None


def test_works_on_pyro_predictive_output() -> None:
    net = vi.VISequential(vi.VILinear(2, 8), nn.ReLU(), vi.VILinear(8, 3))

    def model(x: Tensor) -> Tensor:
        logits = net(x)  # the weight sites, outside the data plate
        with pyro.plate("data", x.shape[0]):
            # Recorded inside the plate, the site has no padding dimension.
            pyro.deterministic("logits", logits, event_dim=1)
            return pyro.sample("obs", dist.Categorical(logits=logits))

    x = torch.randn(10, 2)
    draws = Predictive(model, guide=net.guide, num_samples=6)(x)
    assert draws["logits"].shape == (6, 10, 3)
    result = classification_uncertainty(draws, site="logits")
    torch.testing.assert_close(result.total, result.aleatoric + result.epistemic)
    torch.testing.assert_close(
        result.probabilities, torch.softmax(draws["logits"], -1).mean(0)
    )
    assert mutual_information(draws, site="logits").shape == (10,)


# ---------------------------------------------------------------------- regression
def test_predictive_mean_variance_std() -> None:
    samples = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    torch.testing.assert_close(predictive_mean(samples), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(predictive_variance(samples), torch.tensor([8 / 3, 0]))
    torch.testing.assert_close(
        predictive_variance(samples, correction=1), samples.var(0)
    )
    torch.testing.assert_close(
        predictive_std(samples), torch.tensor([math.sqrt(8 / 3), 0])
    )
    # One sample: variance 0, not NaN.
    torch.testing.assert_close(predictive_std(samples[:1]), torch.zeros(2))


def test_variance_decomposition_by_hand() -> None:
    means = torch.tensor([[1.0], [3.0]])
    log_sigmas = torch.log(torch.tensor([[1.0], [2.0]]))
    result = regression_uncertainty(torch.cat([means, log_sigmas], -1))
    torch.testing.assert_close(result.mean, torch.tensor([2.0]))
    torch.testing.assert_close(result.aleatoric_variance, torch.tensor([2.5]))
    torch.testing.assert_close(result.epistemic_variance, torch.tensor([1.0]))
    torch.testing.assert_close(result.total_variance, torch.tensor([3.5]))
    torch.testing.assert_close(result.total_std, torch.tensor([3.5]).sqrt())
    torch.testing.assert_close(result.aleatoric_std, torch.tensor([2.5]).sqrt())
    torch.testing.assert_close(result.epistemic_std, torch.tensor([1.0]))


def test_variance_decomposition_is_the_mixture_variance() -> None:
    samples = torch.randn(9, 5, 4, dtype=torch.float64)  # (S, N, 2D) with D = 2
    mu, log_sigma = split_mean_log_sigma(samples)
    result = regression_uncertainty(samples)
    # Law of total variance: Var = E[y^2] - E[y]^2 of the equal-weight mixture.
    second_moment = (torch.exp(2 * log_sigma) + mu.square()).mean(0)
    torch.testing.assert_close(result.total_variance, second_moment - mu.mean(0) ** 2)
    torch.testing.assert_close(
        result.total_variance, result.aleatoric_variance + result.epistemic_variance
    )
    # One sample: no epistemic part.
    single = regression_uncertainty(samples[:1])
    torch.testing.assert_close(single.epistemic_variance, torch.zeros_like(mu[0]))
    torch.testing.assert_close(single.total_variance, torch.exp(2 * log_sigma[0]))


def test_known_noise_std() -> None:
    means = torch.randn(6, 3, 1)
    result = regression_uncertainty(means, noise_std=0.5)
    torch.testing.assert_close(result.aleatoric_variance, torch.full((3, 1), 0.25))
    torch.testing.assert_close(result.epistemic_variance, predictive_variance(means))
    epistemic_only = regression_uncertainty(means, noise_std=0.0)
    torch.testing.assert_close(
        epistemic_only.total_variance, epistemic_only.epistemic_variance
    )
    with pytest.raises(ValueError, match="noise_std must be finite and >= 0"):
        regression_uncertainty(means, noise_std=-1.0)


def test_split_needs_an_even_last_dimension() -> None:
    mean, log_sigma = split_mean_log_sigma(torch.arange(8.0).reshape(2, 4))
    torch.testing.assert_close(mean, torch.tensor([[0.0, 1.0], [4.0, 5.0]]))
    torch.testing.assert_close(log_sigma, torch.tensor([[2.0, 3.0], [6.0, 7.0]]))
    with pytest.raises(ValueError, match="even, non-zero last dimension"):
        split_mean_log_sigma(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="even, non-zero last dimension"):
        regression_uncertainty(torch.zeros(4, 2, 3))


def test_regression_on_pyro_predictive_output() -> None:
    net = vi.VISequential(vi.VILinear(1, 8), nn.ReLU(), vi.VILinear(8, 2))
    likelihood = vi.distributions.HeteroscedasticNormal()

    def model(x: Tensor) -> Tensor:
        output = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic("output", output, event_dim=1)
            observation = likelihood.observation_distribution(output).to_event(1)
            return pyro.sample("obs", observation)

    x = torch.randn(7, 1)
    draws = Predictive(model, guide=net.guide, num_samples=5)(x)
    result = regression_uncertainty(draws, site="output")
    assert result.mean.shape == result.total_variance.shape == (7, 1)
    assert predictive_mean(draws, site="obs").shape == (7, 1)
    assert predictive_std(draws, site="obs").shape == (7, 1)


# ------------------------------------------------------------------ noise module
def test_homoscedastic_noise_appends_log_sigma() -> None:
    noise = HomoscedasticNoise(2, sigma=0.5)
    mean = torch.randn(3, 4, 2)
    out = noise(mean)
    assert out.shape == (3, 4, 4)
    torch.testing.assert_close(out[..., :2], mean)
    torch.testing.assert_close(out[..., 2:], torch.full((3, 4, 2), math.log(0.5)))
    torch.testing.assert_close(noise.sigma, torch.full((2,), 0.5))
    with pytest.raises(ValueError, match=r"takes means of shape \(\*, 2\)"):
        noise(torch.randn(4, 3))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="out_features must be a positive int"):
            HomoscedasticNoise(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma must be a positive finite number"):
        HomoscedasticNoise(1, sigma=0.0)


def test_homoscedastic_noise_in_a_sampled_model_and_in_pyro_mode() -> None:
    model = vi.VISequential(
        vi.VILinear(3, 8), nn.ReLU(), vi.VILinear(8, 1), HomoscedasticNoise(1, 0.2)
    )
    out = model(torch.randn(5, 3), samples=4)
    assert out.shape == (4, 5, 2) and out.log_probs.shape == (4, 2)
    torch.testing.assert_close(out[..., 1], torch.full((4, 5), math.log(0.2)))
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.HeteroscedasticNormal(), dataset_size=5
    )
    loss_fn(out, torch.randn(5, 1)).backward()
    assert model[3].log_sigma.grad is not None
    # Pyro mode: the parameter is a param site, so SVI trains it.
    trace = pyro.poutine.trace(model).get_trace(torch.randn(5, 3))
    assert trace.nodes["3.log_sigma"]["type"] == "param"
    assert trace.nodes["_RETURN"]["value"].shape == (5, 2)


def test_module_exports() -> None:
    for name in uncertainty.__all__:
        assert hasattr(uncertainty, name)
