"""Pyro's ELBO with K particles: vectorized (one stacked forward) against sequential.

Times one SVI step of the MLP 64-256-256-10 (batch 128) with ``model.guide`` and
``Trace_ELBO(num_particles=K)``, with and without ``vectorize_particles=True``,
interleaved in one run, and prints medians and the speed-up::

    python benchmarks/particles_benchmark.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from torch_blue_pyro import vi


def svi_step(num_particles: int, vectorize: bool) -> SVI:
    """One SVI object for the MLP with the given particle setting."""
    net = vi.VISequential(
        vi.VILinear(64, 256),
        nn.ReLU(),
        vi.VILinear(256, 256),
        nn.ReLU(),
        vi.VILinear(256, 10),
    )

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        logits = net(x)
        with pyro.plate("data", 60000, subsample_size=len(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize)
    return SVI(model, net.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)


def main() -> None:
    """Run the interleaved benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, threads {args.threads}")
    print("| particles | sequential ms | vectorized ms | speed-up |")
    print("|---:|---:|---:|---:|")
    for particles in (1, 4, 10):
        cases = {v: svi_step(particles, v) for v in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        for svi in cases.values():
            svi.step(x, y)
        for _ in range(args.rounds):
            for vectorize, svi in cases.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    svi.step(x, y)
                times[vectorize].append((time.perf_counter() - start) / args.steps)
        sequential = statistics.median(times[False]) * 1e3
        vectorized = statistics.median(times[True]) * 1e3
        print(
            f"| {particles} | {sequential:.1f} | {vectorized:.1f} | "
            f"{sequential / vectorized:.2f}x |"
        )


if __name__ == "__main__":
    main()
