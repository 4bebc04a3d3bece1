"""The same layers as a plain Pyro model: sites, guide, SVI, Predictive."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn

from tests.data import shuffled_digits
from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical


def mlp(in_features: int = 4, hidden: int = 8, classes: int = 3) -> vi.VISequential:
    return vi.VISequential(
        vi.VILinear(in_features, hidden), nn.ReLU(), vi.VILinear(hidden, classes)
    )


def classification_model(net: vi.VIModule):
    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = net(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    return model


def test_under_trace_each_weight_is_one_site_without_sample_dimension() -> None:
    net = mlp()
    x = torch.randn(5, 4)
    trace = poutine.trace(net).get_trace(x)
    sites = {
        name: site["value"].shape
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    assert sites == {
        "0.weight": (8, 4),
        "0.bias": (8,),
        "2.weight": (3, 8),
        "2.bias": (3,),
    }
    output = trace.nodes["_RETURN"]["value"]
    assert type(output) is torch.Tensor and output.shape == (5, 3)
    prior = trace.nodes["0.weight"]["fn"]
    assert prior.event_shape == (8, 4) and prior.batch_shape == ()


def test_sites_are_drawn_from_the_prior() -> None:
    net = vi.VILinear(50, 40, prior=vi.distributions.MeanFieldNormal(0.0, 3.0))
    trace = poutine.trace(net).get_trace(torch.randn(2, 50))
    weight = trace.nodes["weight"]["value"]
    assert abs(float(weight.std()) - 3.0) < 0.1


def test_autosampling_keywords_are_rejected_under_pyro() -> None:
    with pytest.raises(TypeError, match="samples is for torch_blue's autosampling"):
        poutine.trace(mlp()).get_trace(torch.randn(5, 4), samples=3)


def test_guide_samples_every_site_from_the_variational_distribution() -> None:
    net = mlp()
    with torch.no_grad():
        for module in (net[0], net[2]):
            module._weight_log_std.fill_(-20.0)
    trace = poutine.trace(net.guide).get_trace(torch.randn(5, 4))
    samples = {n: s for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert set(samples) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(samples["0.weight"]["value"], net[0]._weight_mean)
    params = {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "param"}
    assert params["0._weight_mean"] is net[0]._weight_mean
    assert set(params) == {n for n, _ in net.named_parameters()}


def test_svi_trains_the_modules_own_parameters_without_the_param_store() -> None:
    net = vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    other = mlp()
    other_before = {n: p.clone() for n, p in other.named_parameters()}
    before = {n: p.clone() for n, p in net.named_parameters()}
    svi = SVI(
        classification_model(net),
        net.guide,
        pyro.optim.Adam({"lr": 0.05}),
        Trace_ELBO(),
    )
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    for _ in range(3):
        svi.step(x, y)
    for name, parameter in net.named_parameters():
        assert not torch.equal(parameter, before[name]), f"{name} was not trained"
    for name, parameter in other.named_parameters():
        assert torch.equal(parameter, other_before[name])
    assert len(pyro.get_param_store()) == 0


def test_two_models_with_the_same_site_names_train_independently() -> None:
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    first, second = mlp(), mlp()
    second.load_state_dict(first.state_dict())
    for net, lr in ((first, 0.1), (second, 0.0)):
        svi = SVI(
            classification_model(net),
            net.guide,
            pyro.optim.SGD({"lr": lr}),
            Trace_ELBO(),
        )
        svi.step(x, y)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(first.parameters(), second.parameters(), strict=True)
    ]
    assert all(changed)


def test_predictive_with_the_guide() -> None:
    net = mlp()
    x = torch.randn(6, 4)
    predictive = Predictive(
        classification_model(net), guide=net.guide, num_samples=7, return_sites=["obs"]
    )
    samples = predictive(x)
    assert samples["obs"].shape == (7, 6)
    assert samples["obs"].min() >= 0 and samples["obs"].max() < 3


def digits() -> tuple[torch.Tensor, ...]:
    x, y = shuffled_digits()
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_both_training_paths_learn_digits() -> None:
    x_train, y_train, x_test, y_test = digits()
    n = len(y_train)
    batches = [(x_train[i : i + 100], y_train[i : i + 100]) for i in range(0, n, 100)]

    torch_blue_net = mlp(64, 32, 10)
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=n)
    optimizer = torch.optim.Adam(torch_blue_net.parameters(), lr=1e-2)
    for _ in range(8):
        for xb, yb in batches:
            optimizer.zero_grad()
            loss_fn(torch_blue_net(xb, samples=4), yb).backward()
            optimizer.step()

    pyro_net = mlp(64, 32, 10)

    def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        logits = pyro_net(x)
        with pyro.plate("data", n, subsample_size=x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    svi = SVI(model, pyro_net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(8):
        for xb, yb in batches:
            svi.step(xb, yb)

    for net in (torch_blue_net, pyro_net):
        net.return_log_probs = False
        with torch.no_grad():
            probs = torch.softmax(net(x_test, samples=20), -1).mean(0)
        accuracy = (probs.argmax(-1) == y_test).float().mean()
        assert accuracy > 0.85, f"{type(net).__name__}: accuracy {accuracy:.3f}"


def test_state_dict_round_trip_restores_the_guide() -> None:
    net, twin = mlp(), mlp()
    svi = SVI(
        classification_model(net), net.guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()
    )
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    for _ in range(5):
        svi.step(x, y)
    twin.load_state_dict(net.state_dict())
    pyro.set_rng_seed(3)
    first = poutine.trace(net.guide).get_trace()
    pyro.set_rng_seed(3)
    second = poutine.trace(twin.guide).get_trace()
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(
            first.nodes[name]["value"], second.nodes[name]["value"]
        )
