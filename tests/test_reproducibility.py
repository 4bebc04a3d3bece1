"""Reproducibility: the same seed gives bit-identical training on CPU, in both modes.

Seeding is ``torch.manual_seed(seed)`` and ``pyro.set_rng_seed(seed)`` (which seeds
torch, ``random`` and numpy) before the model is built: the initialization, every
weight draw and every Pyro sample then come from the same stream. Each test also
checks that another seed gives another result, so it can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()


def data() -> tuple[Tensor, Tensor]:
    generator = torch.Generator(torch.get_default_device()).manual_seed(0)
    x = torch.randn(48, 4, generator=generator)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def mlp() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 16), nn.ReLU(), vi.VILinear(16, 3))


def cnn() -> vi.VISequential:
    # The 4 features as a 1-channel signal of length 4.
    return vi.VISequential(
        nn.Unflatten(-1, (1, 4)),
        vi.VIConv1d(1, 3, 2),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(9, 3),
    )


class Attention(vi.VIModule):
    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.embed = vi.VILinear(1, 8)
        self.encoder = vi.VITransformerEncoderLayer(8, 2, dim_feedforward=16)
        self.head = vi.VILinear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x.unsqueeze(-1))  # the 4 features as 4 tokens
        return self.head(self.encoder(tokens).mean(dim=-2))


MODELS: dict[str, Callable[[], vi.VIModule]] = {
    "mlp": mlp,
    "cnn": cnn,
    "attention": Attention,
}


def parameters(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def torch_blue_run(build: Callable[[], vi.VIModule], seed: int, analytical: bool):
    seed_everything(seed)
    x, y = data()
    model = build()
    loss_fn: nn.Module = (
        vi.AnalyticalKullbackLeiblerLoss(model, Categorical(), dataset_size=480)
        if analytical
        else vi.KullbackLeiblerLoss(Categorical(), dataset_size=480)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(6):
        rows = slice(8 * step, 8 * step + 16)
        loss = loss_fn(model(x[rows], samples=3), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses), parameters(model)


def pyro_run(build: Callable[[], vi.VIModule], seed: int):
    seed_everything(seed)
    x, y = data()
    net = build()

    def model(x: Tensor, y: Tensor | None = None) -> Tensor:
        data_plate = pyro.plate("data", len(x), subsample_size=16)
        logits = net(x[data_plate.indices])
        with data_plate:
            obs = None if y is None else y[data_plate.indices]
            return pyro.sample("obs", dist.Categorical(logits=logits), obs=obs)

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = torch.tensor([svi.step(x, y) for _ in range(6)], dtype=torch.float64)
    predictions = Predictive(model, guide=net.guide, num_samples=5)(x)["obs"]
    return losses, parameters(net), predictions


def assert_identical(first: dict[str, Tensor], second: dict[str, Tensor]) -> None:
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def assert_different(first: dict[str, Tensor], second: dict[str, Tensor]) -> None:
    assert any(not torch.equal(value, second[name]) for name, value in first.items())


@pytest.mark.parametrize("analytical", [False, True], ids=["monte-carlo", "analytic"])
@pytest.mark.parametrize("name", list(MODELS))
def test_torch_blue_training_is_bit_identical_for_the_same_seed(
    name: str, analytical: bool
) -> None:
    losses, trained = torch_blue_run(MODELS[name], 7, analytical)
    again_losses, again = torch_blue_run(MODELS[name], 7, analytical)
    assert torch.equal(losses, again_losses)
    assert_identical(trained, again)
    other_losses, other = torch_blue_run(MODELS[name], 8, analytical)
    assert not torch.equal(losses, other_losses)
    assert_different(trained, other)


@pytest.mark.parametrize("name", list(MODELS))
def test_pyro_svi_is_bit_identical_for_the_same_seed(name: str) -> None:
    losses, trained, predictions = pyro_run(MODELS[name], 7)
    again_losses, again, again_predictions = pyro_run(MODELS[name], 7)
    assert torch.equal(losses, again_losses)
    assert_identical(trained, again)
    assert torch.equal(predictions, again_predictions)
    other_losses, other, _ = pyro_run(MODELS[name], 8)
    assert not torch.equal(losses, other_losses)
    assert_different(trained, other)
    assert len(pyro.get_param_store().keys()) == 0


def test_training_runs_with_deterministic_algorithms_enforced() -> None:
    """``torch.use_deterministic_algorithms(True)`` (needed for bit-identical GPU
    runs) finds no nondeterministic op in either mode."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for build in MODELS.values():
            first = torch_blue_run(build, 3, analytical=False)[1]
            assert_identical(first, torch_blue_run(build, 3, analytical=False)[1])
            pyro_run(build, 3)
    finally:
        torch.use_deterministic_algorithms(previous)
