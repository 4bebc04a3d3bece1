"""Checkpoints: state dicts, optimizer resumption, fresh processes, pickle, deepcopy.

* ``state_dict()`` through ``torch.save`` and ``torch.load(weights_only=True)``
  restores a model exactly: the same parameters, and the same predictions for the
  same seed, in torch_blue mode and in Pyro mode.
* Training 5 steps, saving model, optimizer and RNG state, loading them into fresh
  objects and training 5 more gives bit-identical parameters to 10 uninterrupted
  steps (torch_blue mode with ``KullbackLeiblerLoss``; Pyro mode with a torch
  optimizer on ``Trace_ELBO().differentiable_loss``).
* A model saved here and evaluated in a fresh Python process gives identical metrics.
* ``pickle`` and ``copy.deepcopy`` of an MLP, a CNN and a transformer encoder give
  independent models that predict identically for the same seed.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------- models
def mlp() -> vi.VIModule:
    return vi.VISequential(vi.VILinear(6, 16), nn.ReLU(), vi.VILinear(16, 3))


def cnn() -> vi.VIModule:
    return vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        vi.VILinear(4 * 3 * 3, 3),
    )


class EncoderClassifier(vi.VIModule):
    """A transformer encoder with mean pooling and a linear head."""

    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        layer = vi.VITransformerEncoderLayer(8, 2, dim_feedforward=16)
        self.encoder = vi.VITransformerEncoder(layer, num_layers=2)
        self.head = vi.VILinear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(dim=-2))


def transformer() -> vi.VIModule:
    return EncoderClassifier()


def inputs(name: str, n: int = 12) -> Tensor:
    generator = torch.Generator(torch.get_default_device()).manual_seed(5)
    shape = {"mlp": (n, 6), "cnn": (n, 1, 6, 6), "transformer": (n, 4, 8)}[name]
    return torch.randn(*shape, generator=generator)


def labels(n: int = 12) -> Tensor:
    return torch.arange(n) % 3


MODELS: dict[str, Callable[[], vi.VIModule]] = {
    "mlp": mlp,
    "cnn": cnn,
    "transformer": transformer,
}


def train(model: vi.VIModule, x: Tensor, steps: int, optimizer=None):
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=100)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = loss_fn(model(x, samples=3), labels(len(x)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def predict(model: vi.VIModule, x: Tensor, seed: int = 123) -> tuple[Tensor, Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model(x, samples=4)
    return output.as_tensor().clone(), output.log_probs.clone()


def pyro_predict(model: vi.VIModule, x: Tensor, seed: int = 123) -> Tensor:
    """Pyro mode: weights from the guide, as Predictive would draw them."""
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    with torch.no_grad():
        return poutine.replay(model, trace=guide_trace)(x)


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for key, value in a_state.items():
        assert torch.equal(value, b_state[key]), key


def assert_same_predictions(a: vi.VIModule, b: vi.VIModule, x: Tensor) -> None:
    for ours, theirs in zip(predict(a, x), predict(b, x), strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(pyro_predict(a, x), pyro_predict(b, x))


# ------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_round_trip_restores_the_model_exactly(
    name: str, tmp_path: Path
) -> None:
    x = inputs(name)
    model = MODELS[name]()
    train(model, x, steps=2)
    torch.save(model.state_dict(), tmp_path / "model.pt")

    torch.manual_seed(99)  # a different initialization, overwritten by the load
    restored = MODELS[name]()
    assert not torch.equal(predict(restored, x)[0], predict(model, x)[0])
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert restored.load_state_dict(state) is not None
    assert_same_parameters(model, restored)
    assert_same_predictions(model, restored, x)


# ---------------------------------------------------------------- resuming
def save_checkpoint(path: Path, model: nn.Module, optimizer) -> None:
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            # The weight draws continue the same random stream after resuming.
            "torch_rng": torch.get_rng_state(),
        },
        path,
    )


def load_checkpoint(path: Path, model: nn.Module, optimizer) -> None:
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["torch_rng"])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_resuming_from_a_checkpoint_is_bit_identical(name: str, tmp_path: Path) -> None:
    x = inputs(name)
    torch.manual_seed(0)
    uninterrupted = MODELS[name]()
    train(uninterrupted, x, steps=10)

    torch.manual_seed(0)
    first = MODELS[name]()
    optimizer = train(first, x, steps=5)
    save_checkpoint(tmp_path / "checkpoint.pt", first, optimizer)
    assert not torch.equal(
        first.state_dict()["0._weight_mean"],
        uninterrupted.state_dict()["0._weight_mean"],
    )

    torch.manual_seed(42)  # fresh objects, another initialization and RNG state
    resumed = MODELS[name]()
    optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    load_checkpoint(tmp_path / "checkpoint.pt", resumed, optimizer)
    train(resumed, x, steps=5, optimizer=optimizer)
    assert_same_parameters(uninterrupted, resumed)


def pyro_classifier(net: vi.VIModule) -> Callable[[Tensor, Tensor], None]:
    def model(x: Tensor, y: Tensor) -> None:
        logits = net(x)
        with pyro.plate("data", 100, subsample=torch.arange(len(x))):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    return model


def pyro_train(net: vi.VIModule, steps: int, optimizer=None):
    """Pyro mode with a torch optimizer: its state_dict checkpoints like any other."""
    x, y = inputs("mlp"), labels()
    optimizer = optimizer or torch.optim.Adam(net.parameters(), lr=1e-2)
    elbo, model = Trace_ELBO(), pyro_classifier(net)
    for _ in range(steps):
        loss = elbo.differentiable_loss(model, net.guide, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def test_resuming_pyro_mode_training_is_bit_identical(tmp_path: Path) -> None:
    pyro.set_rng_seed(0)
    uninterrupted = mlp()
    pyro_train(uninterrupted, steps=10)

    pyro.set_rng_seed(0)
    first = mlp()
    optimizer = pyro_train(first, steps=5)
    save_checkpoint(tmp_path / "checkpoint.pt", first, optimizer)

    pyro.set_rng_seed(42)
    resumed = mlp()
    optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    load_checkpoint(tmp_path / "checkpoint.pt", resumed, optimizer)
    pyro_train(resumed, steps=5, optimizer=optimizer)
    assert_same_parameters(uninterrupted, resumed)


def test_resuming_svi_with_a_pyro_optimizer_is_bit_identical(tmp_path: Path) -> None:
    x, y = inputs("mlp"), labels()

    def run(net: vi.VIModule, steps: int, optimizer) -> None:
        svi = SVI(pyro_classifier(net), net.guide, optimizer, Trace_ELBO())
        for _ in range(steps):
            svi.step(x, y)

    pyro.set_rng_seed(0)
    uninterrupted = mlp()
    run(uninterrupted, 10, pyro.optim.Adam({"lr": 1e-2}))

    pyro.set_rng_seed(0)
    first = mlp()
    optimizer = pyro.optim.Adam({"lr": 1e-2})
    run(first, 5, optimizer)
    state = optimizer.get_state()
    assert len(state) == len(list(first.parameters())), list(state)
    torch.save(
        {"model": first.state_dict(), "optim": state, "rng": torch.get_rng_state()},
        tmp_path / "checkpoint.pt",
    )

    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    resumed = mlp()
    resumed.load_state_dict(checkpoint["model"])
    optimizer = pyro.optim.Adam({"lr": 1e-2})
    optimizer.set_state(checkpoint["optim"])
    torch.set_rng_state(checkpoint["rng"])
    run(resumed, 5, optimizer)
    assert_same_parameters(uninterrupted, resumed)


# ------------------------------------------------------------ a fresh process
EVALUATE = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[2]))
from tests.test_checkpoints import evaluate, mlp
model = mlp()
model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
print(json.dumps(evaluate(model)))
"""


def evaluate(model: vi.VIModule) -> dict[str, str]:
    """Metrics of a model on fixed data and a fixed seed, as exact float hex."""
    x, y = inputs("mlp", n=60), labels(60)
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=60)
    torch.manual_seed(2024)
    with torch.no_grad():
        output = model(x, samples=8)
        loss = loss_fn(output, y)
    probs = output.softmax(-1).mean(0)
    metrics = {
        "loss": loss.item(),
        "accuracy": (probs.argmax(-1) == y).double().mean().item(),
        "mean_max_prob": probs.max(-1).values.double().mean().item(),
        "log_probs_sum": output.log_probs.double().sum().item(),
    }
    return {key: float(value).hex() for key, value in metrics.items()}


def test_a_saved_model_evaluates_identically_in_a_fresh_process(
    tmp_path: Path,
) -> None:
    model = mlp()
    train(model, inputs("mlp"), steps=5)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    expected = evaluate(model)

    result = subprocess.run(
        [sys.executable, "-c", EVALUATE, str(path), str(torch.get_num_threads())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


# ------------------------------------------------------------- pickle, deepcopy
def pickled(model: vi.VIModule) -> vi.VIModule:
    return pickle.loads(pickle.dumps(model))


def deep_copied(model: vi.VIModule) -> vi.VIModule:
    return copy.deepcopy(model)


@pytest.mark.parametrize("clone", [pickled, deep_copied], ids=["pickle", "deepcopy"])
@pytest.mark.parametrize("name", list(MODELS))
def test_copies_predict_identically_and_are_independent(
    name: str, clone: Callable[[vi.VIModule], vi.VIModule]
) -> None:
    x = inputs(name)
    model = MODELS[name]()
    predict(model, x)  # a forward pass first: no per-call state may leak into copies
    poutine.trace(model).get_trace(x)
    duplicate = clone(model)
    assert duplicate is not model
    assert_same_parameters(model, duplicate)
    assert_same_predictions(model, duplicate, x)
    sites = poutine.trace(model).get_trace(x).stochastic_nodes
    assert poutine.trace(duplicate).get_trace(x).stochastic_nodes == sites

    # Training the copy leaves the original alone.
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(duplicate, x, steps=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    trained = duplicate.state_dict()
    assert all(not torch.equal(trained[k], v) for k, v in before.items() if "mean" in k)
    assert len(pyro.get_param_store().keys()) == 0


def test_a_whole_model_saved_with_torch_save_loads_and_predicts_identically(
    tmp_path: Path,
) -> None:
    x = inputs("transformer")
    model = transformer()
    torch.save(model, tmp_path / "whole.pt")
    restored = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert type(restored) is EncoderClassifier
    assert_same_predictions(model, restored, x)
