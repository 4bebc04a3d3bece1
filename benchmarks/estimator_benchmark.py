"""Gradient variance and step cost of the estimators, against plain reparameterization.

For one network (``--model``), estimates the variance of the gradient of
``KullbackLeiblerLoss`` with respect to the variational means and log-stds over
repeated draws (``samples=1`` per draw, so that the estimator's own variance shows,
on one fixed batch), and times a training step with ``samples=10``, for the plain
estimator, ``local_reparameterization()`` and ``flipout()``, in one run:

``mlp`` (default)
    The MLP 64-256-256-10 on a batch of 128 rows.
``cnn``
    ``VIConv2d(1, 16, 3, padding=1)``, ``ReLU``, ``VIConv2d(16, 32, 3, padding=1)``,
    ``ReLU``, ``nn.Flatten()``, ``VILinear(2048, 10)`` (the CNN of
    ``step_benchmark.py``) on a batch of 128 single-channel 8x8 images. The
    variance is also reported for the convolutions' parameters alone.

The variance ratio is the summed per-element gradient variance under the estimator
divided by that under plain sampling; the step times are medians over rounds in
which the estimators take turns, so that drifts in machine load hit them alike::

    python benchmarks/estimator_benchmark.py
    python benchmarks/estimator_benchmark.py --model cnn
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.poutine import flipout, local_reparameterization

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,
    "local reparameterization": local_reparameterization,
    "flipout": flipout,
}
BATCH = 128
NUM_CLASSES = 10
DATASET_SIZE = 1000
KINDS = ("mean", "log_std")


def mlp() -> vi.VISequential:
    """The MLP 64-256-256-10."""
    return vi.VISequential(
        vi.VILinear(64, 256),
        nn.ReLU(),
        vi.VILinear(256, 256),
        nn.ReLU(),
        vi.VILinear(256, NUM_CLASSES),
    )


def cnn() -> vi.VISequential:
    """Two 3x3 convolutions and a linear head, for 8x8 single-channel images."""
    return vi.VISequential(
        vi.VIConv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        vi.VIConv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(32 * 8 * 8, NUM_CLASSES),
    )


MODELS: dict[str, tuple[Callable[[], vi.VISequential], tuple[int, ...]]] = {
    "mlp": (mlp, (64,)),
    "cnn": (cnn, (1, 8, 8)),
}


def batch(model: str) -> tuple[Tensor, Tensor]:
    """A random batch of inputs and labels for ``model``."""
    shape = MODELS[model][1]
    return torch.randn(BATCH, *shape), torch.randint(0, NUM_CLASSES, (BATCH,))


def gradient_variance(
    model: vi.VISequential,
    data: tuple[Tensor, Tensor],
    estimator: Callable[[], Any],
    draws: int,
) -> dict[tuple[str, str], float]:
    """Summed per-element gradient variance, by (scope, kind).

    ``scope`` is ``"all"`` or ``"conv"`` (the convolutions' parameters), ``kind``
    ``"mean"`` or ``"log_std"``.
    """
    x, y = data
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=DATASET_SIZE
    )
    parameters = dict(model.named_parameters())
    scopes = {"all": set(parameters)}
    convolutions = {
        f"{path}.{name}"
        for path, module in model.named_modules()
        if isinstance(module, vi.VIConv2d)
        for name, _ in module.named_parameters()
    }
    if convolutions:
        scopes["conv"] = convolutions
    gradients: dict[tuple[str, str], list[Tensor]] = {
        (scope, kind): [] for scope in scopes for kind in KINDS
    }
    for _ in range(draws):
        model.zero_grad()
        with estimator():
            loss_fn(model(x, samples=1), y).backward()
        for scope, kind in gradients:
            gradients[scope, kind].append(
                torch.cat(
                    [
                        parameter.grad.flatten()
                        for name, parameter in parameters.items()
                        if name in scopes[scope]
                        and name.endswith(kind)
                        and parameter.grad is not None
                    ]
                )
            )
    return {key: torch.stack(v).var(0).sum().item() for key, v in gradients.items()}


def step_times(model: str, rounds: int, steps: int) -> dict[str, float]:
    """Median ms of one training step with samples=10, per estimator."""
    build = MODELS[model][0]
    x, y = batch(model)
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=DATASET_SIZE
    )
    cases = {}
    for name in ESTIMATORS:
        network = build()
        cases[name] = (network, torch.optim.Adam(network.parameters(), lr=1e-3))

    def step(name: str) -> None:
        network, optimizer = cases[name]
        optimizer.zero_grad()
        with ESTIMATORS[name]():
            loss_fn(network(x, samples=10), y).backward()
        optimizer.step()

    for name in ESTIMATORS:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    for _ in range(rounds):
        for name in ESTIMATORS:
            start = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    """Print the variance ratios and step times as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="mlp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = MODELS[args.model][0]()
    data = batch(args.model)
    variances = {
        name: gradient_variance(network, data, estimator, args.draws)
        for name, estimator in ESTIMATORS.items()
    }
    times = step_times(args.model, args.rounds, args.steps)
    plain = variances["plain"]
    columns = list(plain)
    labels = [
        f"var ratio ({'means' if kind == 'mean' else 'log-stds'}"
        f"{', conv' if scope == 'conv' else ''})"
        for scope, kind in columns
    ]
    print(
        f"{args.model}: torch {torch.__version__}, threads {args.threads}, "
        f"{args.draws} draws"
    )
    print(f"| estimator | {' | '.join(labels)} | step ms | x plain |")
    print(f"|---|{'---:|' * len(labels)}---:|---:|")
    for name in ESTIMATORS:
        ratios = " | ".join(
            f"{variances[name][key] / plain[key]:.3f}" for key in columns
        )
        print(
            f"| {name} | {ratios} | {times[name]:.1f} | "
            f"{times[name] / times['plain']:.2f} |"
        )


if __name__ == "__main__":
    main()
