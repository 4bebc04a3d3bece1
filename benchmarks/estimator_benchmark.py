"""Gradient variance and step cost of the estimators, against plain reparameterization.

For the MLP 64-256-256-10 (batch 128, samples=1 per step so that the estimator's own
variance shows), estimates the variance of the gradient of ``KullbackLeiblerLoss``
with respect to the variational means and log-stds over repeated draws, and times a
training step with ``samples=10``, for the plain estimator,
``local_reparameterization()`` and ``flipout()``, in one run::

    python benchmarks/estimator_benchmark.py
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torch_blue_pyro import vi
from torch_blue_pyro.poutine import flipout, local_reparameterization

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "plain": contextlib.nullcontext,
    "local reparameterization": local_reparameterization,
    "flipout": flipout,
}


def mlp() -> vi.VISequential:
    """The benchmark network."""
    return vi.VISequential(
        vi.VILinear(64, 256),
        nn.ReLU(),
        vi.VILinear(256, 256),
        nn.ReLU(),
        vi.VILinear(256, 10),
    )


def gradient_variance(
    model: vi.VISequential, estimator: Callable[[], Any], draws: int
) -> dict[str, float]:
    """Summed per-element gradient variance of the means and of the log-stds."""
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=1000)
    gradients: dict[str, list[torch.Tensor]] = {"mean": [], "log_std": []}
    for _ in range(draws):
        model.zero_grad()
        with estimator():
            loss_fn(model(x, samples=1), y).backward()
        for kind in gradients:
            gradients[kind].append(
                torch.cat(
                    [
                        p.grad.flatten()
                        for n, p in model.named_parameters()
                        if n.endswith(kind) and p.grad is not None
                    ]
                )
            )
    return {k: torch.stack(v).var(0).sum().item() for k, v in gradients.items()}


def step_time(estimator: Callable[[], Any], rounds: int, steps: int) -> float:
    """Median ms of one training step with samples=10."""
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=1000)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            with estimator():
                loss_fn(model(x, samples=10), y).backward()
            optimizer.step()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times) * 1e3


def main() -> None:
    """Print the variance ratios and step times as a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mlp()
    variances = {
        n: gradient_variance(model, e, args.draws) for n, e in ESTIMATORS.items()
    }
    times = {n: step_time(e, args.rounds, args.steps) for n, e in ESTIMATORS.items()}
    plain = variances["plain"]
    print(f"torch {torch.__version__}, threads {args.threads}, {args.draws} draws")
    print(
        "| estimator | var ratio (means) | var ratio (log-stds) | step ms | x plain |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in ESTIMATORS:
        v = variances[name]
        print(
            f"| {name} | {v['mean'] / plain['mean']:.3f} | "
            f"{v['log_std'] / plain['log_std']:.3f} | {times[name]:.1f} | "
            f"{times[name] / times['plain']:.2f} |"
        )


if __name__ == "__main__":
    main()
