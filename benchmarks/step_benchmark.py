"""Time one training step and one prediction of a Bayesian network, per library.

What is measured
----------------
One of four small networks (``--model``), built with the ``vi`` API of

- ``torch_blue_pyro`` (``from torch_blue_pyro import vi``),
- ``torch_blue`` (``from torch_blue import vi``), the library it replaces, and
- ``bayesian-torch`` (``bayesian_torch.layers``: ``LinearReparameterization`` and
  ``Conv2dReparameterization``), for the MLP and the CNN only (it has no attention
  layers):

``mlp`` (default)
    The MLP 64-256-256-10 (``VILinear``, ``ReLU``, ``VILinear``, ``ReLU``,
    ``VILinear`` in a ``VISequential``) on a batch of 128 rows.
``small``
    The same MLP with layers 16-32-32-10 on a batch of 16 rows: about 2k weights,
    so the per-call overhead (Python, Pyro's sample sites, the checks) decides the
    step time, not the arithmetic.
``cnn``
    ``VIConv2d(1, 16, 3, padding=1)``, ``ReLU``, ``VIConv2d(16, 32, 3, padding=1)``,
    ``ReLU``, ``nn.Flatten()``, ``VILinear(2048, 10)`` in a ``VISequential``, on a
    batch of 128 single-channel 8x8 images.  (In both libraries the plain
    ``nn.Flatten()`` sees one sample's ``(128, 32, 8, 8)`` tensor.)
``transformer``
    A ``VITransformerEncoder`` of two ``VITransformerEncoderLayer(d_model=64,
    nhead=4, dim_feedforward=128, batch_first=True)``, the mean over the sequence and
    a ``VILinear(64, 10)`` head, on a batch of 32 sequences of length 16.  Every
    constructor argument is passed explicitly, so that both libraries build the
    same network.

*train* is one full optimisation step: forward with ``samples=10``,
``KullbackLeiblerLoss`` with a ``Categorical`` predictive distribution, backward,
``torch.optim.Adam`` step and ``zero_grad``.  *predict* is one forward with
``samples=10`` under ``torch.no_grad()`` and ``return_log_probs = False``.

bayesian-torch's layers draw one weight sample per call and have no sample
dimension, so its users loop over the samples (repeating the batch would reuse one
weight draw for all copies: not ten samples).  Its *train* step here is ten
forwards with ``return_kl=False``, the cross-entropy averaged over them, plus the
closed-form KL (``kl_loss()`` of each layer, computed once: it does not depend on
the draw) divided by the data set size, then backward, Adam and ``zero_grad``.
Computing the KL once is the cheapest correct use of the library (its README
computes it in each of the ten forwards).  Its *predict* is ten forwards with
``return_kl=False`` under ``torch.no_grad()``.

The *floor* is the deterministic ``torch.nn`` network of the same shape (for the
transformer ``nn.TransformerEncoder`` with ``dropout=0.0``) on 10 times the batch
(the work of 10 weight samples without any sampling), trained with cross-entropy
and Adam, and its plain forward for *predict*.  All models stay in training mode,
as a Bayesian network is used (with dropout 0 this changes no result).

A last row, *noise only*, times what any implementation with independent weight
samples cannot avoid: drawing the standard normal noise, ``torch.randn(10, *shape)``
for every parameter of the floor network (which has the Bayesian network's weight
shapes), nothing else.  Its ratio to the floor is a lower bound of a sampled
network's ratio on this machine (for the MLP on a CPU, close to 1 for *predict*).

The implementations are interleaved round-robin (each round runs ``--steps``
steps of every case, after a warm-up), so that drifts in machine load hit them
alike.  Every step is timed on its own (on CUDA between two
``torch.cuda.synchronize()``); the table reports medians in ms, the ratio to the
floor and the ratio to ``torch_blue``.  A library that cannot be imported (or fails
to run) is reported as skipped.

The step builders here (``implementation_steps``) are shared by the memory,
scaling and compile benchmarks in this folder.

Run
---
    python benchmarks/step_benchmark.py                      # the MLP
    python benchmarks/step_benchmark.py --model small
    python benchmarks/step_benchmark.py --model cnn
    python benchmarks/step_benchmark.py --model transformer
    python benchmarks/step_benchmark.py --all                # all four in turn
    python benchmarks/step_benchmark.py --all --device cuda  # on a GPU

(``--threads``, ``--rounds``, ``--steps`` and ``--warmup`` change the defaults.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

LAYER_SIZES = (64, 256, 256, 10)
SMALL_LAYER_SIZES = (16, 32, 32, 10)
"""The small MLP: a few thousand weights, where the per-call overhead decides."""
NUM_CLASSES = 10
SAMPLES = 10
DATASET_SIZE = 10_000
LEARNING_RATE = 1e-3

# CNN: 8x8 single-channel images, two 3x3 convolutions with padding 1.
IMAGE_SIZE = 8
CONV_CHANNELS = (1, 16, 32)

# Transformer: (batch, sequence, d_model) inputs.
SEQUENCE_LENGTH = 16
D_MODEL = 64
NUM_HEADS = 4
DIM_FEEDFORWARD = 128
NUM_LAYERS = 2
LAYER_NORM_EPS = 1e-5

PYRO_LIBRARY = "torch_blue_pyro"
REFERENCE_LIBRARY = "torch_blue"
BAYESIAN_TORCH = "bayesian_torch"
FLOOR = "floor"
NOISE = "noise only"
"""The weight noise alone (a lower bound, not an implementation)."""
LIBRARIES = (PYRO_LIBRARY, REFERENCE_LIBRARY)
"""The libraries with a torch_blue ``vi`` API."""
IMPLEMENTATIONS = (*LIBRARIES, BAYESIAN_TORCH, FLOOR)
TASKS = ("train", "predict")

REPO_ROOT = Path(__file__).resolve().parents[1]

Step = Callable[[], None]


@dataclass
class Case:
    """One timed (task, implementation) pair and its per-step times."""

    task: str
    implementation: str
    step: Step
    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        """Median step time in milliseconds."""
        return statistics.median(self.times_ms)

    @property
    def quartiles_ms(self) -> tuple[float, float]:
        """First and third quartile of the step times in milliseconds."""
        if len(self.times_ms) < 2:  # a single timed step: no spread to report
            return self.times_ms[0], self.times_ms[0]
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4)
        return q1, q3


# --- the networks ------------------------------------------------------------------
# A Bayesian builder takes a library's ``vi`` module and returns the network built
# with it (a ``VIModule`` of that library, hence typed ``Any``).


def bayesian_mlp(vi: ModuleType, sizes: tuple[int, int, int, int] = LAYER_SIZES) -> Any:
    """Build the Bayesian MLP (64-256-256-10 by default) with the given ``vi``."""
    d_in, h1, h2, d_out = sizes
    return vi.VISequential(
        vi.VILinear(d_in, h1),
        nn.ReLU(),
        vi.VILinear(h1, h2),
        nn.ReLU(),
        vi.VILinear(h2, d_out),
    )


def deterministic_mlp(sizes: tuple[int, int, int, int] = LAYER_SIZES) -> nn.Module:
    """Build the deterministic ``torch.nn`` MLP of the same shape."""
    d_in, h1, h2, d_out = sizes
    return nn.Sequential(
        nn.Linear(d_in, h1),
        nn.ReLU(),
        nn.Linear(h1, h2),
        nn.ReLU(),
        nn.Linear(h2, d_out),
    )


def bayesian_cnn(vi: ModuleType) -> Any:
    """Build the Bayesian CNN with the given ``vi`` module."""
    c_in, c1, c2 = CONV_CHANNELS
    return vi.VISequential(
        vi.VIConv2d(c_in, c1, 3, padding=1),
        nn.ReLU(),
        vi.VIConv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(c2 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES),
    )


def deterministic_cnn() -> nn.Module:
    """Build the deterministic ``torch.nn`` CNN of the same shape."""
    c_in, c1, c2 = CONV_CHANNELS
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES),
    )


class BayesianTorchNet(nn.Module):
    """A sequence of bayesian-torch layers and plain modules.

    bayesian-torch's layers return ``(output, kl)`` unless called with
    ``return_kl=False``; plain modules (``ReLU``, ``Flatten``) take one argument.
    """

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, input_: Tensor) -> Tensor:
        """One forward with one fresh weight draw per layer, without the KL."""
        for layer in self.layers:
            if hasattr(layer, "kl_loss"):
                input_ = layer(input_, return_kl=False)
            else:
                input_ = layer(input_)
        return input_

    def kl_loss(self) -> Tensor:
        """Closed-form KL divergence of all layers from their priors."""
        kls: list[Tensor] = [
            layer.kl_loss()  # type: ignore[operator]
            for layer in self.layers
            if hasattr(layer, "kl_loss")
        ]
        return torch.stack(kls).sum()


def bayesian_torch_mlp(
    layers: ModuleType, sizes: tuple[int, int, int, int] = LAYER_SIZES
) -> BayesianTorchNet:
    """Build the MLP (64-256-256-10 by default) with ``bayesian_torch.layers``."""
    d_in, h1, h2, d_out = sizes
    return BayesianTorchNet(
        layers.LinearReparameterization(d_in, h1),
        nn.ReLU(),
        layers.LinearReparameterization(h1, h2),
        nn.ReLU(),
        layers.LinearReparameterization(h2, d_out),
    )


def bayesian_torch_cnn(layers: ModuleType) -> BayesianTorchNet:
    """Build the CNN with ``bayesian_torch.layers``."""
    c_in, c1, c2 = CONV_CHANNELS
    return BayesianTorchNet(
        layers.Conv2dReparameterization(c_in, c1, 3, padding=1),
        nn.ReLU(),
        layers.Conv2dReparameterization(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        layers.LinearReparameterization(c2 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES),
    )


def mean_pooled(base: type[nn.Module], encoder: nn.Module, head: nn.Module) -> Any:
    """Return ``head(encoder(x).mean(dim=-2))`` as a module derived from ``base``.

    ``base`` is ``nn.Module`` or a library's ``vi.VIModule``.  The mean is over the
    sequence dimension, which is the second last with or without a leading sample
    dimension, so the forward may take that dimension itself
    (``handles_sample_dim``, read by ``torch_blue_pyro`` only; ``torch_blue`` runs
    every forward per sample).
    """

    class MeanPooled(base):  # type: ignore[valid-type, misc]
        handles_sample_dim = True

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head

        def forward(self, input_: Tensor) -> Tensor:
            return self.head(self.encoder(input_).mean(dim=-2))

    return MeanPooled()


def bayesian_transformer(vi: ModuleType, num_layers: int = NUM_LAYERS) -> Any:
    """Build the mean-pooled Bayesian transformer encoder with the given ``vi``."""
    layer = vi.VITransformerEncoderLayer(
        d_model=D_MODEL,
        nhead=NUM_HEADS,
        dim_feedforward=DIM_FEEDFORWARD,
        activation=nn.ReLU(),
        layer_norm_eps=LAYER_NORM_EPS,
        batch_first=True,
        norm_first=False,
        bias=True,
        rescale_prior=True,
        kaiming_initialization=True,
        prior_initialization=False,
        return_log_probs=True,
    )  # no dropout: torch_blue has none, torch_blue_pyro defaults to 0.0
    encoder = vi.VITransformerEncoder(
        layer, num_layers=num_layers, norm=None, return_log_probs=True
    )
    head = vi.VILinear(
        D_MODEL,
        NUM_CLASSES,
        bias=True,
        rescale_prior=False,
        kaiming_initialization=True,
        prior_initialization=False,
        return_log_probs=True,
    )
    return mean_pooled(vi.VIModule, encoder, head)


def deterministic_transformer(num_layers: int = NUM_LAYERS) -> nn.Module:
    """Build the deterministic ``torch.nn`` transformer of the same shape."""
    layer = nn.TransformerEncoderLayer(
        d_model=D_MODEL,
        nhead=NUM_HEADS,
        dim_feedforward=DIM_FEEDFORWARD,
        dropout=0.0,
        activation="relu",
        layer_norm_eps=LAYER_NORM_EPS,
        batch_first=True,
        norm_first=False,
        bias=True,
    )
    encoder = nn.TransformerEncoder(
        layer, num_layers=num_layers, norm=None, enable_nested_tensor=False
    )
    return mean_pooled(nn.Module, encoder, nn.Linear(D_MODEL, NUM_CLASSES))


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked network: its builders, its input and its labels."""

    title: str
    """Title of the printed table."""
    floor: str
    """Name of the floor in the table."""
    batch_size: int
    input_shape: tuple[int, ...]
    """Shape of one input row."""
    bayesian: Callable[[ModuleType], Any]
    deterministic: Callable[[], nn.Module]
    bayesian_torch: Callable[[ModuleType], BayesianTorchNet] | None = None
    """Builder from ``bayesian_torch.layers``; ``None``: bayesian-torch lacks it."""


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(
        title="Bayesian MLP " + "-".join(map(str, LAYER_SIZES)),
        floor="floor (torch MLP)",
        batch_size=128,
        input_shape=(LAYER_SIZES[0],),
        bayesian=bayesian_mlp,
        deterministic=deterministic_mlp,
        bayesian_torch=bayesian_torch_mlp,
    ),
    "small": ModelSpec(
        title=(
            "Bayesian MLP " + "-".join(map(str, SMALL_LAYER_SIZES)) + " (small: the "
            "per-call overhead decides)"
        ),
        floor="floor (torch MLP)",
        batch_size=16,
        input_shape=(SMALL_LAYER_SIZES[0],),
        bayesian=partial(bayesian_mlp, sizes=SMALL_LAYER_SIZES),
        deterministic=partial(deterministic_mlp, sizes=SMALL_LAYER_SIZES),
        bayesian_torch=partial(bayesian_torch_mlp, sizes=SMALL_LAYER_SIZES),
    ),
    "cnn": ModelSpec(
        title=(
            "Bayesian CNN conv(1->16, 3x3)-conv(16->32, 3x3)-linear(2048->10) "
            "on 1x8x8 images"
        ),
        floor="floor (torch CNN)",
        batch_size=128,
        input_shape=(CONV_CHANNELS[0], IMAGE_SIZE, IMAGE_SIZE),
        bayesian=bayesian_cnn,
        deterministic=deterministic_cnn,
        bayesian_torch=bayesian_torch_cnn,
    ),
    "transformer": ModelSpec(
        title=(
            f"Bayesian transformer encoder ({NUM_LAYERS} layers, d_model {D_MODEL}, "
            f"{NUM_HEADS} heads, feed-forward {DIM_FEEDFORWARD}), mean over "
            f"the sequence, linear({D_MODEL}->{NUM_CLASSES}), "
            f"sequence length {SEQUENCE_LENGTH}"
        ),
        floor="floor (torch transformer)",
        batch_size=32,
        input_shape=(SEQUENCE_LENGTH, D_MODEL),
        bayesian=bayesian_transformer,
        deterministic=deterministic_transformer,
    ),
}


# --- command line and environment ---------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="mlp", help="network to time"
    )
    parser.add_argument("--all", action="store_true", help="time every network in turn")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=15, help="round-robin rounds")
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per case and round"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed steps per case before timing"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch random seed")
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)"
    )
    return parser.parse_args(argv)


def device_name(device: torch.device) -> str:
    """Describe the device the benchmark runs on."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_name()} ({os.cpu_count()} CPUs)"


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Return a function that waits for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def cpu_name() -> str:
    """Return a readable name of the CPU (``platform.processor`` is often empty)."""
    name = platform.processor()
    if not name and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return name or platform.machine()


def library_version(package: str, module: ModuleType) -> str:
    """Return the version of an imported library, or ``"unknown"``."""
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version)


def import_library(library: str) -> ModuleType:
    """Import a library, preferring the checkout this script lives in.

    The repository root goes first on ``sys.path``, so that the working tree's
    ``torch_blue_pyro`` is benchmarked even when it is not installed.
    """
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(library)


# --- the timed steps ----------------------------------------------------------------


def bayesian_train_step(
    model: Any, vi: ModuleType, x: Tensor, y: Tensor, samples: int = SAMPLES
) -> Step:
    """Return a closure running one variational-inference training step."""
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=DATASET_SIZE
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> None:
        output = model(x, samples=samples)
        loss = loss_fn(output, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def bayesian_predict_step(model: Any, x: Tensor, samples: int = SAMPLES) -> Step:
    """Return a closure running one sampled prediction without log probs."""
    model.return_log_probs = False

    def step() -> None:
        with torch.no_grad():
            model(x, samples=samples)

    return step


def bayesian_torch_train_step(
    model: BayesianTorchNet, x: Tensor, y: Tensor, samples: int = SAMPLES
) -> Step:
    """Return a closure running one bayesian-torch training step.

    ``samples`` forwards (one weight draw each), the cross-entropy averaged over
    them, plus the closed-form KL once, divided by the data set size.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> None:
        nll = torch.stack(
            [nn.functional.cross_entropy(model(x), y) for _ in range(samples)]
        ).mean()
        loss = nll + model.kl_loss() / DATASET_SIZE
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def bayesian_torch_predict_step(
    model: BayesianTorchNet, x: Tensor, samples: int = SAMPLES
) -> Step:
    """Return a closure running ``samples`` forwards without the KL."""

    def step() -> None:
        with torch.no_grad():
            torch.stack([model(x) for _ in range(samples)])

    return step


def floor_train_step(model: nn.Module, x: Tensor, y: Tensor) -> Step:
    """Return a closure running one cross-entropy step of a deterministic network."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> None:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def floor_predict_step(model: nn.Module, x: Tensor) -> Step:
    """Return a closure running one forward of a deterministic network."""

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def noise_step(model: nn.Module, samples: int = SAMPLES) -> Step:
    """Return a closure drawing ``samples`` standard normals per parameter element."""
    shapes = [(samples, *parameter.shape) for parameter in model.parameters()]
    device = next(model.parameters()).device

    def step() -> None:
        for shape in shapes:
            torch.randn(shape, device=device)

    return step


def implementation_steps(
    spec: ModelSpec,
    implementation: str,
    x: Tensor,
    y: Tensor,
    samples: int = SAMPLES,
) -> tuple[Step, Step]:
    """Return fresh ``(train, predict)`` closures of one implementation.

    Each closure gets its own freshly built network on the device of ``x``.  The
    floor runs on ``x`` and ``y`` repeated ``samples`` times.  Raises if the
    implementation cannot be imported or does not have the network.
    """
    device = x.device
    if implementation == NOISE:
        draw = noise_step(spec.deterministic().to(device), samples)
        return draw, draw
    if implementation == FLOOR:
        x_floor = x.repeat(samples, *(1,) * (x.dim() - 1))
        y_floor = y.repeat(samples)
        return (
            floor_train_step(spec.deterministic().to(device), x_floor, y_floor),
            floor_predict_step(spec.deterministic().to(device), x_floor),
        )
    if implementation == BAYESIAN_TORCH:
        if spec.bayesian_torch is None:
            raise NotImplementedError("bayesian-torch has no layers for this network")
        layers = import_library("bayesian_torch.layers")
        return (
            bayesian_torch_train_step(
                spec.bayesian_torch(layers).to(device), x, y, samples
            ),
            bayesian_torch_predict_step(
                spec.bayesian_torch(layers).to(device), x, samples
            ),
        )
    import_library(implementation)
    vi = importlib.import_module(f"{implementation}.vi")
    return (
        bayesian_train_step(spec.bayesian(vi).to(device), vi, x, y, samples),
        bayesian_predict_step(spec.bayesian(vi).to(device), x, samples),
    )


def display_name(spec: ModelSpec, implementation: str) -> str:
    """Name of an implementation in the tables (the floor names its network)."""
    return spec.floor if implementation == FLOOR else implementation


def warm_up(case: Case, steps: int, sync: Callable[[], None]) -> None:
    """Run ``steps`` untimed steps of a case."""
    for _ in range(steps):
        case.step()
    sync()


def build_cases(
    spec: ModelSpec, x: Tensor, y: Tensor, warmup: int
) -> tuple[list[Case], dict[str, str], dict[str, str]]:
    """Build and warm up every case whose library can be imported and run.

    Every case gets a freshly built network.

    Returns
    -------
    cases : list of Case
        The runnable cases, floor included.
    versions : dict
        Version string per library that was loaded.
    skipped : dict
        Error message per library that was skipped.
    """
    sync = synchronizer(x.device)
    cases: list[Case] = []
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for implementation in (FLOOR, *LIBRARIES, BAYESIAN_TORCH, NOISE):
        name = display_name(spec, implementation)
        try:
            train, predict = implementation_steps(spec, implementation, x, y)
            implementation_cases = [
                Case("train", name, train),
                Case("predict", name, predict),
            ]
            for case in implementation_cases:
                warm_up(case, max(warmup, 1), sync)  # at least one step: does it run?
        except Exception as error:  # report any failure, do not crash the run
            if implementation == FLOOR:
                raise
            skipped[implementation] = f"{type(error).__name__}: {error}"
            continue
        if implementation not in (FLOOR, NOISE):
            versions[implementation] = library_version(
                implementation, sys.modules[implementation.split(".")[0]]
            )
        cases.extend(implementation_cases)
    return cases, versions, skipped


def run_rounds(
    cases: list[Case], rounds: int, steps: int, sync: Callable[[], None]
) -> None:
    """Time ``steps`` steps of every case per round, cycling through the cases."""
    for _ in range(rounds):
        for case in cases:
            for _ in range(steps):
                sync()
                start = time.perf_counter()
                case.step()
                sync()
                case.times_ms.append((time.perf_counter() - start) * 1e3)


def format_table(cases: list[Case], floor_name: str) -> str:
    """Format the medians and ratios of all cases as a markdown table."""
    by_key = {(case.task, case.implementation): case for case in cases}
    lines = [
        "| task | implementation | median ms | IQR ms | x floor | x torch_blue |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task in TASKS:
        floor = by_key[(task, floor_name)]
        reference = by_key.get((task, REFERENCE_LIBRARY))
        for implementation in (*LIBRARIES, BAYESIAN_TORCH, floor_name, NOISE):
            case = by_key.get((task, implementation))
            if case is None:
                continue
            q1, q3 = case.quartiles_ms
            vs_reference = (
                f"{case.median_ms / reference.median_ms:.2f}"
                if reference is not None
                and implementation not in (REFERENCE_LIBRARY, floor_name, NOISE)
                else ""
            )
            lines.append(
                f"| {task} | {implementation} | {case.median_ms:.3f} "
                f"| {q1:.3f}-{q3:.3f} | {case.median_ms / floor.median_ms:.2f} "
                f"| {vs_reference} |"
            )
    return "\n".join(lines)


def print_environment(device: torch.device) -> None:
    """Print the machine, the device and the torch version as list items."""
    print(f"- machine: {cpu_name()} ({os.cpu_count()} CPUs), {platform.platform()}")
    if device.type != "cpu":
        print(f"- device: {device_name(device)}")
    print(f"- python {platform.python_version()}, torch {torch.__version__}")
    print(f"- torch threads: {torch.get_num_threads()}")


def run_model(spec: ModelSpec, args: argparse.Namespace) -> None:
    """Benchmark one network and print the header and the result table."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    x = torch.randn(spec.batch_size, *spec.input_shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (spec.batch_size,), device=device)
    cases, versions, skipped = build_cases(spec, x, y, args.warmup)

    print(f"# Step benchmark: {spec.title}")
    print()
    print_environment(device)
    print(
        f"- batch {spec.batch_size}, samples {SAMPLES}, "
        f"floor batch {SAMPLES * spec.batch_size}"
    )
    print(
        f"- {args.rounds} rounds x {args.steps} steps per case "
        f"after {args.warmup} warm-up steps"
    )
    for library, version in versions.items():
        print(f"- {library} {version}")
    for library, error in skipped.items():
        print(f"- {library}: SKIPPED ({error})")
    print()

    run_rounds(cases, args.rounds, args.steps, synchronizer(device))
    print(format_table(cases, spec.floor), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark of the chosen network (or of all) and print the tables."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(MODELS) if args.all else [args.model]
    for index, name in enumerate(names):
        if index:
            print()
        run_model(MODELS[name], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
