"""HierarchicalPrior and Horseshoe: hyper-variables as sample sites of their own."""

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import Tensor, nn

from tests.data import shuffled_digits
from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import (
    Categorical,
    HierarchicalPrior,
    Horseshoe,
    HyperVariable,
    MeanFieldNormal,
)
from torch_blue_pyro.vi.distributions.pyro_prior import fit_to_variable


def horseshoe_net(hidden: int = 3) -> vi.VISequential:
    return vi.VISequential(
        vi.VILinear(4, hidden, prior=Horseshoe(0.5)),
        nn.Tanh(),
        vi.VILinear(hidden, 2, prior=Horseshoe(local="unit")),
    )


def hand_written_horseshoe(
    site: str, shape: tuple[int, ...], global_scale: float, per_unit: bool = False
) -> None:
    """The horseshoe of one variable, written out in Pyro."""
    dims = len(shape)
    tau = pyro.sample(
        f"{site}_tau",
        dist.HalfCauchy(global_scale).expand((1,) * dims).to_event(dims),
    )
    local = (shape[0], *(1,) * (dims - 1)) if per_unit else shape
    lam = pyro.sample(
        f"{site}_lambda", dist.HalfCauchy(1.0).expand(local).to_event(dims)
    )
    pyro.sample(site, dist.Normal(0.0, tau * lam).expand(shape).to_event(dims))


def hand_written_prior(values: Mapping[str, Tensor]) -> float:
    """Log joint of ``horseshoe_net()``'s weights and hyper-sites at ``values``."""

    def model() -> None:
        hand_written_horseshoe("0.weight", (3, 4), 0.5)
        hand_written_horseshoe("0.bias", (3,), 0.5)
        hand_written_horseshoe("2.weight", (2, 3), 1.0, per_unit=True)
        hand_written_horseshoe("2.bias", (2,), 1.0, per_unit=True)

    conditioned = poutine.condition(model, data=dict(values))
    return poutine.trace(conditioned).get_trace().log_prob_sum()


SITES = {
    "0.weight_tau": (1, 1),
    "0.weight_lambda": (3, 4),
    "0.weight": (3, 4),
    "0.bias_tau": (1,),
    "0.bias_lambda": (3,),
    "0.bias": (3,),
    "2.weight_tau": (1, 1),
    "2.weight_lambda": (2, 1),
    "2.weight": (2, 3),
    "2.bias_tau": (1,),
    "2.bias_lambda": (2,),
    "2.bias": (2,),
}


def sample_sites(trace) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(site["value"].shape)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name != "data"
    }


def test_hyper_sites_in_the_model_and_the_guide() -> None:
    net = horseshoe_net()
    x = torch.randn(6, 4)

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", 60, subsample_size=6):
            pyro.deterministic("out", net(x), event_dim=1)

    trace = poutine.trace(model).get_trace(x)
    assert sample_sites(trace) == SITES
    for name in SITES:
        # Global, like the weights: neither batched nor scaled by the data plate.
        assert trace.nodes[name]["cond_indep_stack"] == ()
        assert trace.nodes[name]["scale"] == 1.0
    assert isinstance(trace.nodes["0.weight_tau"]["fn"].base_dist, dist.HalfCauchy)

    guide = poutine.trace(net.guide).get_trace(x)
    assert sample_sites(guide) == SITES
    params = {n: s["value"] for n, s in guide.nodes.items() if s["type"] == "param"}
    assert params["0._weight_tau_loc"] is net[0]._weight_tau_loc
    assert params["2._weight_lambda_log_scale"].shape == (2, 1)
    factor = guide.nodes["0.weight_lambda"]["fn"]
    log_normal = dist.LogNormal(
        net[0]._weight_lambda_loc, net[0]._weight_lambda_log_scale.exp()
    ).to_event(2)
    value = guide.nodes["0.weight_lambda"]["value"]
    torch.testing.assert_close(factor.log_prob(value), log_normal.log_prob(value))
    # The model finds every parameter announced by the guide, none as its own.
    assert not [n for n, s in trace.nodes.items() if s["type"] == "param"]


def test_pyro_log_joint_equals_a_hand_written_model() -> None:
    net = horseshoe_net()
    guide = poutine.trace(net.guide).get_trace()
    model = poutine.trace(poutine.replay(net, trace=guide)).get_trace(torch.randn(5, 4))
    values = {name: guide.nodes[name]["value"] for name in SITES}
    torch.testing.assert_close(model.log_prob_sum(), hand_written_prior(values))


def test_torch_blue_log_probs_are_the_hierarchical_elbo_terms(
    recorder, monkeypatch
) -> None:
    """log p: the hand-written model's log joint of the draws; log q: the weights'
    variational log-density plus the hyper-variables' log-normal factors."""
    net = horseshoe_net().double()
    hyper_draws: dict[str, dict[str, Tensor]] = {}
    for index in (0, 2):
        for variable in ("weight", "bias"):
            prior = net[index].prior[variable]
            draw = prior.sample_hyper

            def recording(factors, num_samples, draw=draw, site=f"{index}.{variable}"):
                hyper, log_q = draw(factors, num_samples)
                hyper_draws[site] = hyper
                return hyper, log_q

            monkeypatch.setattr(prior, "sample_hyper", recording)
    with recorder:
        out = net(torch.randn(5, 4, dtype=torch.float64), samples=3)
    assert out.log_probs.shape == (3, 2)
    for sample in range(3):
        values = {name: value[sample] for name, value in recorder.values.items()}
        for site, hyper in hyper_draws.items():
            for name, value in hyper.items():
                values[f"{site}_{name}"] = value[sample]
        torch.testing.assert_close(out.log_probs[sample, 0], hand_written_prior(values))
        log_q = 0.0
        for index in (0, 2):
            module = net[index]
            for variable in ("weight", "bias"):
                site = f"{index}.{variable}"
                q = module.variational_distribution[variable]
                log_q += q.variational_log_prob(
                    values[site], module.get_variational_parameters(variable)
                ).sum()
                for name in ("tau", "lambda"):
                    loc = getattr(module, f"_{variable}_{name}_loc")
                    log_scale = getattr(module, f"_{variable}_{name}_log_scale")
                    factor = dist.LogNormal(loc, log_scale.exp())
                    log_q += factor.log_prob(values[f"{site}_{name}"]).sum()
        torch.testing.assert_close(out.log_probs[sample, 1], log_q)


@pytest.mark.parametrize("local", ["element", "unit"])
@pytest.mark.parametrize("shape", [(5, 4), (5,), (3, 2, 4)])
def test_horseshoe_closed_form_equals_the_generic_log_joint(
    local: str, shape: tuple[int, ...]
) -> None:
    """Values and gradients of the written-out densities against the distributions'."""
    prior = Horseshoe(0.3, local=local)
    hyper = {
        name: (
            torch.rand(3, *spec.shape(shape), dtype=torch.float64) * 2 + 0.05
        ).requires_grad_()
        for name, spec in prior.hyper_variables().items()
    }
    samples = torch.randn(3, *shape, dtype=torch.float64, requires_grad=True)
    closed_form = prior.log_joint_per_sample(samples, hyper)
    generic = HierarchicalPrior.log_joint_per_sample(prior, samples, hyper)
    torch.testing.assert_close(closed_form, generic)
    inputs = [samples, *hyper.values()]
    for ours, reference in zip(
        torch.autograd.grad(closed_form.sum(), inputs),
        torch.autograd.grad(generic.sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(ours, reference)


def test_kl_loss_reaches_the_hyper_factors() -> None:
    net = horseshoe_net()
    out = net(torch.randn(5, 4), samples=4)
    loss = vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=50)(
        out, torch.randn(5, 2)
    )
    loss.backward()
    for name in ("_weight_tau_loc", "_weight_lambda_log_scale", "_bias_tau_loc"):
        grad = getattr(net[0], name).grad
        assert grad is not None and grad.ne(0).all(), name


def test_prediction_draws_no_hyper_variables(monkeypatch) -> None:
    net = horseshoe_net()
    net.return_log_probs = False

    def fail(*args, **kwargs):
        raise AssertionError("hyper-variables drawn for a prediction")

    for index in (0, 2):
        for variable in ("weight", "bias"):
            monkeypatch.setattr(net[index].prior[variable], "sample_hyper", fail)
    assert net(torch.randn(5, 4), samples=3).shape == (3, 5, 2)


def test_get_log_probs_includes_one_draw_of_the_hyper_variables() -> None:
    layer = vi.VILinear(4, 3, prior=Horseshoe(), dtype=torch.float64)
    with torch.no_grad():  # the factors become point masses at exp(loc)
        layer._weight_tau_log_scale.fill_(-30.0)
        layer._weight_lambda_log_scale.fill_(-30.0)
        layer._weight_tau_loc.fill_(math.log(0.3))
    weight = torch.randn(3, 4, dtype=torch.float64)
    log_prior = layer.get_log_probs(weight, "weight")[0]
    expected = (
        dist.Normal(0.0, 0.3).log_prob(weight).sum()
        + dist.HalfCauchy(1.0).log_prob(torch.tensor(0.3)).double()
        + 12 * dist.HalfCauchy(1.0).log_prob(torch.tensor(1.0)).double()
    )
    torch.testing.assert_close(log_prior, expected)
    # prior_log_prob scores the variable given the hyper-variables' values.
    prior = layer.prior["weight"]
    tau, lam = torch.tensor([[0.5]]), torch.rand(3, 4) + 0.5
    torch.testing.assert_close(
        prior.prior_log_prob(weight.float(), tau, lam),
        dist.Normal(0.0, tau * lam).log_prob(weight.float()),
    )
    with pytest.raises(ValueError, match=r"one value per hyper-variable \('tau', "):
        prior.prior_log_prob(weight, tau)


def digits() -> tuple[Tensor, ...]:
    x, y = shuffled_digits()
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize("mode", ["torch_blue", "pyro"])
def test_a_horseshoe_network_learns_digits(mode: str) -> None:
    x, y, x_test, y_test = digits()
    net = vi.VISequential(
        vi.VILinear(64, 16, prior=Horseshoe()),
        nn.Tanh(),
        vi.VILinear(16, 10, prior=Horseshoe()),
    )
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 1200, 100)]
    losses = []
    if mode == "torch_blue":
        loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=1200)
        optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
        for _ in range(4):
            for xb, yb in batches:
                optimizer.zero_grad()
                loss = loss_fn(net(xb, samples=4), yb)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    else:

        def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
            logits = net(x)
            with pyro.plate("data", 1200, subsample_size=len(x)):
                pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

        svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
        for _ in range(4):
            for xb, yb in batches:
                losses.append(svi.step(xb, yb))
    net.return_log_probs = False
    with torch.no_grad():
        probs = torch.softmax(net(x_test, samples=10), -1).mean(0)
    accuracy = (probs.argmax(-1) == y_test).float().mean()
    assert accuracy > 0.6, f"{mode}: accuracy {accuracy:.2f} (chance 0.1)"
    assert sum(losses[-12:]) < 0.9 * sum(losses[:12]), losses


def test_autonormal_learns_the_hyper_sites() -> None:
    net = horseshoe_net(hidden=8)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = net(x)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    guide = AutoNormal(model, init_scale=0.05)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(60)]
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    locs = pyro.get_param_store()["AutoNormal.locs.0.weight_lambda"]
    assert locs.shape == (8, 4)
    samples = Predictive(model, guide=guide, num_samples=4)(x)
    lam = samples["2.weight_lambda"]
    assert lam.shape[0] == 4 and lam.shape[-2:] == (2, 1)
    assert (samples["0.weight_tau"] > 0).all()


@pytest.mark.parametrize("mode", ["torch_blue", "pyro"])
def test_irrelevant_inputs_get_smaller_local_scales(mode: str) -> None:
    """A sparse linear regression: the learned local scales of the three relevant
    inputs are several times those of the nine irrelevant ones."""
    x = torch.randn(40, 12)
    weights = torch.zeros(12)
    weights[:3] = torch.tensor([3.0, -2.0, 2.5])
    y = x @ weights + torch.randn(40)
    layer = vi.VILinear(12, 1, bias=False, prior=Horseshoe(0.1))
    if mode == "pyro":

        def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
            mean = layer(x).squeeze(-1)
            with pyro.plate("data", len(x)):
                pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)

        svi = SVI(model, layer.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(150):
            svi.step(x, y)
    else:
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
        for _ in range(150):
            optimizer.zero_grad()
            out = layer(x, samples=4)
            log_likelihood = dist.Normal(out.squeeze(-1), 1.0).log_prob(y).sum(-1)
            kl = out.log_probs[:, 1] - out.log_probs[:, 0]
            (kl - log_likelihood).mean().backward()
            optimizer.step()
    local_scales = layer._weight_lambda_loc.detach().exp().squeeze(0)
    relevant, irrelevant = local_scales[:3], local_scales[3:]
    assert relevant.min() > irrelevant.max(), local_scales
    assert relevant.mean() > 3 * irrelevant.mean(), local_scales


def test_state_dict_round_trip_restores_the_guide() -> None:
    net, twin = horseshoe_net(), horseshoe_net()
    x, y = torch.randn(20, 4), torch.randn(20, 2)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        out = net(x)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    before = net[0]._weight_tau_loc.detach().clone()
    for _ in range(5):
        svi.step(x, y)
    assert not torch.equal(before, net[0]._weight_tau_loc)
    state = net.state_dict()
    assert "0._weight_tau_loc" in state and "2._bias_lambda_log_scale" in state
    twin.load_state_dict(state)
    pyro.set_rng_seed(3)
    first = poutine.trace(net.guide).get_trace()
    pyro.set_rng_seed(3)
    second = poutine.trace(twin.guide).get_trace()
    for name in SITES:
        torch.testing.assert_close(
            first.nodes[name]["value"], second.nodes[name]["value"]
        )


def test_vectorized_particles_batch_the_hyper_sites() -> None:
    net = horseshoe_net()
    x, y = torch.randn(6, 4), torch.randn(6, 2)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", len(x)):
            out = pyro.deterministic("out", net(x), event_dim=1)
            pyro.sample("obs", dist.Normal(out, 1.0).to_event(1), obs=y)
        return out

    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    assert math.isfinite(elbo.loss(model, net.guide, x, y))
    samples = Predictive(model, guide=net.guide, num_samples=5, parallel=True)(x)
    assert samples["0.weight_lambda"].shape[0] == 5
    assert samples["out"].shape == (5, 6, 2)
    prior_samples = Predictive(model, num_samples=5, parallel=True)(x)
    assert prior_samples["2.weight"].shape[0] == 5


class NormalMeans(HierarchicalPrior):
    """A custom prior: normal weights around a per-unit mean, itself normal."""

    def hyper_variables(self) -> dict[str, HyperVariable]:
        return {"mean": HyperVariable("unit", dist.constraints.real, init=0.0)}

    def hyperprior(self, name, hyper, reference):
        return dist.Normal(reference.new_zeros(()), 2.0)

    def conditional(self, hyper):
        return dist.Normal(hyper["mean"], 0.5)


def test_a_custom_hierarchical_prior_with_a_real_hyper_variable() -> None:
    net = vi.VISequential(vi.VILinear(4, 3, prior=NormalMeans()))
    trace = poutine.trace(net).get_trace(torch.randn(2, 4))
    assert trace.nodes["0.weight_mean"]["value"].shape == (3, 1)
    assert trace.nodes["0.bias_mean"]["value"].shape == (3,)
    guide = poutine.trace(net.guide).get_trace()
    factor = guide.nodes["0.weight_mean"]["fn"]
    value = guide.nodes["0.weight_mean"]["value"]
    normal = dist.Normal(net[0]._weight_mean_loc, net[0]._weight_mean_log_scale.exp())
    torch.testing.assert_close(factor.log_prob(value), normal.log_prob(value).sum())
    assert torch.equal(net[0]._weight_mean_loc, torch.zeros(3, 1))
    assert torch.isfinite(net(torch.randn(2, 4), samples=3).log_probs).all()


def test_rescale_prior_scales_the_global_scale() -> None:
    layer = vi.VILinear(12, 3, prior=Horseshoe(0.6), rescale_prior=True)
    assert layer.prior["weight"].global_scale == pytest.approx(0.6 / 6)
    assert layer._weight_tau_loc.item() == pytest.approx(math.log(0.1))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Horseshoe(0.0), "global_scale must be a positive finite number"),
        (lambda: Horseshoe(local="row"), "local must be 'element' or 'unit'"),
        (lambda: HyperVariable("row"), r"per must be one of \('variable', "),
    ],
)
def test_invalid_arguments(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


class NegativeInit(NormalMeans):
    def hyper_variables(self) -> dict[str, HyperVariable]:
        return {"scale": HyperVariable("variable", init=-1.0)}


def test_an_init_outside_the_support_fails_when_the_layer_is_built() -> None:
    with pytest.raises(
        ValueError,
        match=r"the init of NegativeInit's hyper-variable 'scale' of VILinear's "
        r"random variable 'weight' must lie in its support GreaterThan\(lower_bound="
        r"0\.0\), got -1\.0",
    ):
        vi.VILinear(4, 3, prior=NegativeInit())


class WrongShape(NormalMeans):
    def conditional(self, hyper):
        return dist.Normal(torch.zeros(5), 1.0)


def test_a_conditional_of_the_wrong_shape_fails_when_the_layer_is_built() -> None:
    with pytest.raises(
        ValueError,
        match=r"the conditional of WrongShape of VILinear's random variable 'weight' "
        r"has batch shape \(5,\), which does not broadcast to the variable's shape "
        r"\(3, 4\)",
    ):
        vi.VILinear(4, 3, prior=WrongShape())


def test_no_closed_form() -> None:
    with pytest.raises(NotImplementedError, match="no closed form for prior"):
        vi.AnalyticalKullbackLeiblerLoss(
            vi.VILinear(4, 3, prior=Horseshoe()), MeanFieldNormal()
        )
    site = poutine.trace(vi.VILinear(4, 3, prior=Horseshoe())).get_trace(
        torch.randn(2, 4)
    )
    assert site.nodes["weight"]["fn"].event_shape == (3, 4)
    with pytest.raises(NotImplementedError, match="hierarchical"):
        Horseshoe().pyro_prior("w", torch.Size([3]), torch.zeros(())).log_prob(
            torch.zeros(3)
        )


def test_fit_to_variable_keeps_leading_plate_dims() -> None:
    fitted = fit_to_variable(
        dist.Normal(torch.zeros(5, 1, 3, 1), 1.0), (3, 4), "x", leading_batch=True
    )
    assert fitted.batch_shape == (5, 1) and fitted.event_shape == (3, 4)
    with pytest.raises(ValueError, match="x has batch shape"):
        fit_to_variable(dist.Normal(torch.zeros(5, 1, 3, 1), 1.0), (3, 4), "x")


def test_a_guide_that_misses_the_hyper_sites_is_a_clear_error() -> None:
    net = vi.VILinear(4, 3, prior=Horseshoe())

    def model(x: torch.Tensor) -> None:
        pyro.deterministic("out", net(x), event_dim=1)

    def weights_only(x: torch.Tensor) -> None:
        for name, shape in (("weight", (3, 4)), ("bias", (3,))):
            pyro.sample(name, dist.Normal(torch.zeros(shape), 1.0).to_event(len(shape)))

    svi = SVI(model, weights_only, pyro.optim.Adam({}), Trace_ELBO())
    with pytest.raises(
        ValueError,
        match=r"does not sample the weight site\(s\) \['weight_tau', 'weight_lambda', "
        r"'bias_tau', 'bias_lambda'\]",
    ):
        svi.step(torch.randn(2, 4))
