"""Pyro's workflows on the layers: plates, vectorized particles, autoguides, priors."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoNormal,
)
from torch import nn

from tests.data import shuffled_digits
from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import MeanFieldNormal, PyroPrior


def mlp() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 3))


def cnn() -> vi.VISequential:
    return vi.VISequential(
        vi.VIConv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), vi.VILinear(48, 3)
    )


class Encoder(vi.VIModule):
    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.encoder = vi.VITransformerEncoder(
            vi.VITransformerEncoderLayer(8, 2, 16, batch_first=True), 1
        )
        self.head = vi.VILinear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(-2))


NETWORKS = {
    "mlp": (mlp, (4,)),
    "cnn": (cnn, (1, 4, 4)),
    "transformer": (Encoder, (5, 8)),
}


def classifier(net: vi.VIModule, size: int, subsample: int | None = None):
    """A Pyro model that calls the network inside a (subsampled) data plate."""

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        with pyro.plate("data", size, subsample_size=subsample) as index:
            logits = pyro.deterministic("logits", net(x[index]))
            labels = None if y is None else y[index]
            pyro.sample("obs", dist.Categorical(logits=logits), obs=labels)

    return model


def point_mass(net: vi.VIModule) -> vi.VIModule:
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("log_std"):
                parameter.fill_(-30.0)
    return net


def test_weights_stay_global_inside_a_subsampled_data_plate() -> None:
    net = mlp()
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    trace = poutine.trace(classifier(net, 40, subsample=10)).get_trace(x, y)
    weight = trace.nodes["0.weight"]
    assert weight["value"].shape == (8, 4)
    assert weight["cond_indep_stack"] == ()
    assert weight["scale"] == 1.0, "weights must not be scaled by N / batch"
    assert trace.nodes["obs"]["scale"] == 4.0
    assert trace.nodes["logits"]["value"].shape == (10, 3)


@pytest.mark.parametrize("name", NETWORKS)
def test_vectorized_particles_equal_sequential_ones(name: str) -> None:
    build, shape = NETWORKS[name]
    net = point_mass(build()).eval()
    x, y = torch.randn(6, *shape), torch.randint(0, 3, (6,))
    model = classifier(net, 6)
    # Point masses make the likelihood term deterministic; the closed-form KL of
    # the mean-field ELBO makes the rest deterministic too (a sampled log q of a
    # point mass still varies with the noise, by about sqrt(n_weights / 2)).
    sequential = TraceMeanField_ELBO(num_particles=4).loss(model, net.guide, x, y)
    vectorized = TraceMeanField_ELBO(num_particles=4, vectorize_particles=True).loss(
        model, net.guide, x, y
    )
    assert math.isclose(sequential, vectorized, rel_tol=1e-5)


@pytest.mark.parametrize("name", NETWORKS)
def test_vectorized_particles_draw_independent_weights(name: str) -> None:
    build, shape = NETWORKS[name]
    net = build().eval()
    x = torch.randn(6, *shape)
    predictive = Predictive(
        classifier(net, 6), guide=net.guide, num_samples=5, parallel=True
    )
    logits = predictive(x)["logits"]
    assert logits.shape == (5, 6, 3)
    assert not torch.allclose(logits[0], logits[1])
    sequential = Predictive(classifier(net, 6), guide=net.guide, num_samples=5)(x)
    assert sequential["logits"].shape == logits.shape


def test_vectorized_elbo_trains_as_well_as_sequential() -> None:
    x = torch.randn(120, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    results = []
    for vectorize in (False, True):
        torch.manual_seed(0)
        net = mlp()
        elbo = Trace_ELBO(num_particles=4, vectorize_particles=vectorize)
        svi = SVI(classifier(net, 120), net.guide, pyro.optim.Adam({"lr": 0.03}), elbo)
        for _ in range(150):
            svi.step(x, y)
        net.return_log_probs = False
        with torch.no_grad():
            probs = torch.softmax(net(x, samples=20), -1).mean(0)
        results.append((probs.argmax(-1) == y).float().mean().item())
    # The majority class holds half the points.
    assert min(results) > 0.7, results
    assert abs(results[0] - results[1]) < 0.1, results


def test_mean_field_elbo_uses_the_closed_form_kl() -> None:
    net = mlp()
    guide_site = poutine.trace(net.guide).get_trace().nodes["0.weight"]["fn"]
    prior_site = poutine.trace(net).get_trace(torch.randn(2, 4)).nodes["0.weight"]["fn"]
    kl = torch.distributions.kl_divergence(guide_site, prior_site)
    mean, log_std = net[0].get_variational_parameters("weight")
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, log_std.exp()),
        torch.distributions.Normal(0.0, 1.0),
    ).sum()
    torch.testing.assert_close(kl, expected)
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    losses = [
        TraceMeanField_ELBO().loss(classifier(net, 30), net.guide, x, y)
        for _ in range(30)
    ]
    monte_carlo = [
        Trace_ELBO().loss(classifier(net, 30), net.guide, x, y) for _ in range(30)
    ]
    assert torch.tensor(losses).std() < torch.tensor(monte_carlo).std()


def digits(hidden: int) -> tuple:
    """Digits, and a network small enough for every autoguide."""
    x, y = shuffled_digits()
    net = vi.VISequential(vi.VILinear(64, hidden), nn.Tanh(), vi.VILinear(hidden, 10))
    return net, x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize(
    "autoguide", [AutoNormal, AutoDiagonalNormal, AutoLowRankMultivariateNormal]
)
def test_autoguides_learn_digits(autoguide) -> None:
    net, x, y, x_test, y_test = digits(hidden=16)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = net(x)
        with pyro.plate("data", 1200, subsample_size=len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    guide = autoguide(model, init_scale=0.05)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(4):
        for start in range(0, 1200, 200):
            svi.step(x[start : start + 200], y[start : start + 200])
    predictive = Predictive(
        model, guide=guide, num_samples=10, return_sites=["_RETURN"]
    )
    with torch.no_grad():
        logits = predictive(x_test)["_RETURN"]
    accuracy = (torch.softmax(logits, -1).mean(0).argmax(-1) == y_test).float().mean()
    assert accuracy > 0.6, f"{autoguide.__name__}: {accuracy:.2f} (chance 0.1)"


def test_normalizing_flow_guide_learns() -> None:
    """AutoIAFNormal starts at N(0, 1) weights: a small problem keeps it quick."""
    x = torch.randn(400, 2)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    net = vi.VISequential(vi.VILinear(2, 8), nn.Tanh(), vi.VILinear(8, 2))

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = net(x)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    # The flow's hidden layers must be at least as wide as the number of weights.
    guide = AutoIAFNormal(model, hidden_dim=[60])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(300)]
    assert sum(losses[-20:]) < 0.3 * sum(losses[:20])
    predictive = Predictive(
        model, guide=guide, num_samples=20, return_sites=["_RETURN"]
    )
    with torch.no_grad():
        probs = torch.softmax(predictive(x)["_RETURN"], -1).mean(0)
    assert (probs.argmax(-1) == y).float().mean() > 0.9


@pytest.mark.parametrize(
    "prior",
    [
        dist.Laplace(0.0, 0.5),
        dist.StudentT(3.0, 0.0, 1.0),
        PyroPrior(dist.Normal(0, 2)),
    ],
)
def test_pyro_distributions_as_priors_in_both_modes(prior, recorder) -> None:
    layer = vi.VILinear(3, 2, prior=prior)
    base = prior.distribution if isinstance(prior, PyroPrior) else prior
    with recorder:
        out = layer(torch.randn(4, 3), samples=5)
    expected = sum(
        base.log_prob(value).flatten(1).sum(1) for value in recorder.values.values()
    )
    torch.testing.assert_close(out.log_probs[:, 0], expected)
    trace = poutine.trace(layer).get_trace(torch.randn(4, 3))
    site = trace.nodes["weight"]
    assert site["fn"].event_shape == (2, 3)
    torch.testing.assert_close(
        site["fn"].log_prob(site["value"]), base.log_prob(site["value"]).sum()
    )


def test_scale_mixture_prior_trains_with_the_guide() -> None:
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.tensor([0.5, 0.5])),
        dist.Normal(torch.zeros(2), torch.tensor([0.1, 1.0])),
    )
    net = vi.VISequential(
        vi.VILinear(2, 8, prior=mixture), nn.Tanh(), vi.VILinear(8, 1)
    )
    x = torch.randn(64, 2)
    y = x[:, :1] * 2

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mean = net(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample(
                "obs", dist.Normal(mean, 0.1), obs=None if y is None else y[:, 0]
            )

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(200)]
    assert sum(losses[-20:]) < 0.2 * sum(losses[:20])


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        (
            dist.Normal(torch.zeros(5), 1.0),
            r"random variable 'weight' has batch shape \(5,\), which does not "
            r"broadcast to the variable's shape \(2, 3\)",
        ),
        (
            dist.Normal(torch.zeros(4, 2, 3), 1.0),
            r"'weight' has batch shape \(4, 2, 3\), which does not broadcast to the "
            r"variable's shape \(2, 3\)",
        ),
        (
            # Fits the weight's rows, not the bias.
            dist.Normal(torch.zeros(3), 1.0).to_event(1),
            r"random variable 'bias' has event shape \(3,\), which is not the "
            r"trailing dimensions of the variable's shape \(2,\)",
        ),
    ],
)
def test_pyro_prior_with_a_wrong_shape_fails_when_the_layer_is_built(
    prior, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        vi.VILinear(3, 2, prior=prior)


def test_pyro_prior_with_a_wrong_shape_set_later_names_the_site() -> None:
    net = vi.VISequential(vi.VILinear(3, 2))
    net[0].prior["bias"] = PyroPrior(dist.Normal(torch.zeros(5), 1.0))
    message = (
        r"of site '0\.bias' has batch shape \(5,\), which does not broadcast to the "
        r"variable's shape \(2,\)"
    )
    with pytest.raises(ValueError, match=message):
        poutine.trace(net).get_trace(torch.randn(4, 3))
    with pytest.raises(ValueError, match=message):
        net(torch.randn(4, 3), samples=2)
    with pytest.raises(TypeError, match=r"PyroPrior takes a pyro\.distributions"):
        PyroPrior(MeanFieldNormal())


def test_pyro_prior_with_an_event_shape_on_the_trailing_dims(recorder) -> None:
    """A multivariate normal on each row of the weight, in both modes."""
    covariance = 0.5 * torch.eye(3) + 0.1
    rows = dist.MultivariateNormal(torch.zeros(3), covariance)
    layer = vi.VILinear(3, 2, prior=[rows, dist.Laplace(0.0, 1.0)])
    with recorder:
        out = layer(torch.randn(4, 3), samples=5)
    weight, bias = recorder.values["weight"], recorder.values["bias"]
    expected = rows.log_prob(weight).sum(-1) + dist.Laplace(0.0, 1.0).log_prob(
        bias
    ).sum(-1)
    torch.testing.assert_close(out.log_probs[:, 0], expected)
    site = poutine.trace(layer).get_trace(torch.randn(4, 3)).nodes["weight"]
    assert site["fn"].event_shape == (2, 3) and site["fn"].batch_shape == ()
    torch.testing.assert_close(
        site["fn"].log_prob(site["value"]), rows.log_prob(site["value"]).sum()
    )


def test_nuts_and_vi_posterior_predictives_agree_on_held_out_points() -> None:
    x = torch.cat([torch.linspace(-2, -0.5, 20), torch.linspace(0.5, 2, 20)])[:, None]
    y = torch.sin(2 * x).squeeze(-1) + 0.1 * torch.randn(40)
    x_test = torch.linspace(-2, 2, 50)[:, None]
    y_test = torch.sin(2 * x_test).squeeze(-1) + 0.1 * torch.randn(50)
    start_narrow = MeanFieldNormal(std=0.01)
    net = vi.VISequential(
        vi.VILinear(1, 6, variational_distribution=start_narrow),
        nn.Tanh(),
        vi.VILinear(6, 1, variational_distribution=start_narrow),
    )

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mean = net(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mean, 0.1), obs=y)
        return mean

    def held_out_log_likelihood(**predictive_kwargs) -> float:
        means = Predictive(model, return_sites=["_RETURN"], **predictive_kwargs)(
            x_test
        )["_RETURN"]
        log_likelihood = dist.Normal(means, 0.1).log_prob(y_test)
        mixture = torch.logsumexp(log_likelihood, 0) - math.log(len(means))
        return mixture.mean().item()

    mcmc = MCMC(
        NUTS(model, max_tree_depth=5),
        num_samples=80,
        warmup_steps=80,
        disable_progbar=True,
    )
    mcmc.run(x, y)
    nuts = held_out_log_likelihood(posterior_samples=mcmc.get_samples())
    # The closed-form KL of the mean-field ELBO makes the fit less noisy than a
    # sampled one; over seeds the held-out value then ranges over about 0.4-0.7.
    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.03}), TraceMeanField_ELBO())
    for _ in range(1500):
        svi.step(x, y)
    variational = held_out_log_likelihood(guide=net.guide, num_samples=80)
    prior = held_out_log_likelihood(num_samples=80)
    assert nuts > prior + 2 and variational > prior + 2, (nuts, variational, prior)
    assert abs(nuts - variational) < 0.5, (nuts, variational)


def test_a_guide_that_misses_weight_sites_is_a_clear_error() -> None:
    net = mlp()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))

    def partial_guide(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.sample("0.weight", dist.Normal(torch.zeros(8, 4), 1.0).to_event(2))

    svi = SVI(classifier(net, 10), partial_guide, pyro.optim.Adam({}), Trace_ELBO())
    with pytest.raises(
        ValueError, match=r"does not sample the weight site\(s\) \['0\.bias'"
    ):
        svi.step(x, y)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_nuts_with_a_jit_compiled_potential() -> None:
    """The priors are built from the parameters' dtype and device only: no parameter
    (which requires grad) is captured as a constant of the traced program."""
    net = vi.VISequential(vi.VILinear(1, 2), nn.Tanh(), vi.VILinear(2, 1))
    x = torch.linspace(-1, 1, 8)[:, None]
    y = torch.sin(2 * x).squeeze(-1)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        mean = net(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mean, 0.1), obs=y)

    kernel = NUTS(model, jit_compile=True, ignore_jit_warnings=True, max_tree_depth=4)
    mcmc = MCMC(kernel, num_samples=20, warmup_steps=20, disable_progbar=True)
    mcmc.run(x, y)
    samples = mcmc.get_samples()
    assert samples["0.weight"].shape == (20, 2, 1)
    assert samples["2.bias"].shape == (20, 1)
    assert all(torch.isfinite(value).all() for value in samples.values())


def nested_classifier(net: vi.VIModule):
    """A model with an outer plate of size 1 at dim=-2 around the data plate."""

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("outer", 1, dim=-2), pyro.plate("data", 10, dim=-1):
            logits = net(x)
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    return model


def test_a_plate_at_dim_minus_one_leaves_the_weights_alone() -> None:
    """The layers need no plate dims: their sites are drawn outside the data plates,
    so a data plate at dim=-1 around a network with a feature dim does not clash,
    with or without vectorized particles."""
    net = mlp()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    model = classifier(net, 10)
    for elbo in (
        Trace_ELBO(max_plate_nesting=1),
        Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
    ):
        assert math.isfinite(elbo.loss(model, net.guide, x, y))
    trace = poutine.trace(model).get_trace(x, y)
    assert trace.nodes["0.weight"]["cond_indep_stack"] == ()


def test_max_plate_nesting_too_small_is_a_clear_error() -> None:
    net = mlp()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    vectorized = Trace_ELBO(
        num_particles=3, vectorize_particles=True, max_plate_nesting=0
    )
    # Pyro puts the data plate (no explicit dim) left of the particles, at dim=-2;
    # it would report a shape mismatch at "obs".
    with pytest.raises(
        ValueError,
        match=r"plate 'data' around the network with sites '0\.weight', '0\.bias', "
        r"\.\.\. is at dim=-2, left of the vectorized particle plate "
        r"'num_particles_vectorized' \(dim=-1\): max_plate_nesting=0 is too small",
    ):
        vectorized.loss(classifier(net, 10), net.guide, x, y)

    def explicit(x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate("data", 10, dim=-1):
            pyro.sample("obs", dist.Categorical(logits=net(x)), obs=y)

    # With an explicit dim, Pyro's own error names both plates.
    with pytest.raises(
        ValueError, match='plates "data" and "num_particles_vectorized", collide'
    ):
        vectorized.loss(explicit, net.guide, x, y)
    with pytest.raises(ValueError, match="increasing max_plate_nesting to at least 2"):
        Trace_ELBO(max_plate_nesting=1).loss(nested_classifier(net), net.guide, x, y)


def test_a_user_plate_at_the_particle_dim_is_pyros_own_clear_error() -> None:
    net = mlp()
    x, y = torch.randn(10, 1, 4), torch.randint(0, 3, (10, 1))

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate("data", 10, dim=-2):
            pyro.sample("obs", dist.Categorical(logits=net(x)), obs=y)

    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    with pytest.raises(
        ValueError, match='plates "data" and "num_particles_vectorized", collide'
    ):
        elbo.loss(model, net.guide, x, y)


def test_particles_that_would_land_on_a_data_plate_are_a_clear_error() -> None:
    """With an outer plate the particle plate sits at dim=-3, but an input with one
    batch dim puts the output's leading particle dim at -2, on the outer plate:
    Pyro would report a shape mismatch at "obs"; the network names the plates."""
    net = mlp()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    model = nested_classifier(net)
    message = (
        r"sites '0\.weight', '0\.bias', \.\.\. is called inside plate\(s\) 'outer' "
        r"\(dim=-2, size 1\), 'data' \(dim=-1, size 10\) under the vectorized "
        r"particle plate '.*' \(dim=-3, .*would land at dim=-2, on plate 'outer' "
        r"\(size 1\).* \(shape \(1, 10, 4\)\)"
    )
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True)
    with pytest.raises(ValueError, match=message):
        elbo.loss(model, net.guide, x, y)
    with pytest.raises(ValueError, match=message):
        Predictive(model, guide=net.guide, num_samples=3, parallel=True)(x)
    # One batch dim per plate dim, as the message says, works.
    assert math.isfinite(elbo.loss(model, net.guide, x[None], y))
    logits = Predictive(
        model, guide=net.guide, num_samples=3, parallel=True, return_sites=["_RETURN"]
    )(x[None])["_RETURN"]
    assert logits.shape == (3, 1, 10, 3)
