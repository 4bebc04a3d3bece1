"""Pyro mode against torch_blue mode: one training step of the same network.

What is measured
----------------
The MLP 64-256-256-10 of ``torch_blue_pyro`` on a batch of 128 digits-like rows
(pixel values in {0, 1/16, ..., 1}, labels in 0..9, a data set of 1797 rows), 10
weight samples per step, trained:

*torch_blue mode*
    ``net(x, samples=10)``, ``vi.KullbackLeiblerLoss`` with a ``Categorical``
    predictive distribution, backward, ``torch.optim.Adam`` step, ``zero_grad``.
*Pyro mode, net.guide*
    ``pyro.infer.SVI(model, net.guide, pyro.optim.Adam,
    Trace_ELBO(num_particles=10, vectorize_particles=True))``, where ``model``
    calls ``net(x)`` inside ``pyro.plate("data", 1797, subsample_size=128)`` with a
    ``Categorical`` likelihood; ``svi.step(x, y)``.

and, as references for what plain Pyro costs:

*Pyro mode, AutoNormal*
    the same ``model`` with ``pyro.infer.autoguide.AutoNormal(model)`` as guide,
    same ELBO (the layers then only declare the prior sites);
*plain Pyro, AutoNormal*
    the MLP written directly in Pyro, without this library: one ``pyro.sample``
    per weight and bias with a ``Normal(0, 1)`` prior, the forward as batched
    ``matmul`` (so that the particle dimension broadcasts), ``AutoNormal`` guide,
    same ELBO.

The objectives differ (``KullbackLeiblerLoss`` scores the sample-averaged
prediction, ``Trace_ELBO`` averages the log-likelihood over the particles), but the
work per step is the same: 10 weight draws, one forward on them, the log densities
of the weights under the guide and the prior, backward and Adam.

The cases are interleaved round-robin as in ``step_benchmark.py``; the table gives
the median step time, the ratio to the torch_blue-mode step, and the peak memory
of one step (as in ``memory_benchmark.py``).

Run
---
    python benchmarks/pyro_mode_benchmark.py
    python benchmarks/pyro_mode_benchmark.py --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from memory_benchmark import MIB, peak_bytes
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam  # type: ignore[attr-defined]
from step_benchmark import (
    LAYER_SIZES,
    LEARNING_RATE,
    NUM_CLASSES,
    SAMPLES,
    Case,
    bayesian_mlp,
    bayesian_train_step,
    import_library,
    print_environment,
    run_rounds,
    synchronizer,
)
from torch import Tensor

BATCH = 128
DATASET_SIZE = 1797  # the size of scikit-learn's digits

TORCH_BLUE_MODE = "torch_blue mode (samples=10, KullbackLeiblerLoss)"
PYRO_MODE = "Pyro mode (SVI, net.guide, 10 vectorized particles)"
AUTONORMAL = "Pyro mode (SVI, AutoNormal, 10 vectorized particles)"
PLAIN_PYRO = "plain Pyro MLP (SVI, AutoNormal, 10 vectorized particles)"

Step = Callable[[], None]


def elbo() -> Trace_ELBO:
    """The ELBO of every Pyro case: 10 vectorized particles, one data plate."""
    return Trace_ELBO(
        num_particles=SAMPLES, vectorize_particles=True, max_plate_nesting=1
    )


def classifier(net: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], None]:
    """A Pyro model calling ``net`` inside a subsampled data plate."""

    def model(x: Tensor, y: Tensor) -> None:
        with pyro.plate("data", DATASET_SIZE, subsample_size=len(x)):
            pyro.sample("obs", dist.Categorical(logits=net(x)), obs=y)

    return model


def svi_step(
    model: Callable[..., None], guide: Callable[..., object], x: Tensor, y: Tensor
) -> Step:
    """A closure running one SVI step, with its own Adam and the 10-particle ELBO."""
    svi = SVI(model, guide, Adam({"lr": LEARNING_RATE}), elbo())

    def step() -> None:
        svi.step(x, y)

    return step


def plain_pyro_model(x: Tensor, y: Tensor) -> None:
    """The MLP written in plain Pyro: sampled weights, batched matmuls.

    The weights are sampled before the data plate (inside it they would be batched
    over the data points).  Under vectorized particles each weight has a leading
    particle dimension, so the layers are ``x @ W^T + b`` with the batch rows
    broadcast against it.
    """
    loc = x.new_zeros(())
    layers = []
    for index, (d_in, d_out) in enumerate(itertools.pairwise(LAYER_SIZES)):
        weight = pyro.sample(
            f"plain.{index}.weight",
            dist.Normal(loc, 1.0).expand([d_out, d_in]).to_event(2),
        )
        bias = pyro.sample(
            f"plain.{index}.bias", dist.Normal(loc, 1.0).expand([d_out]).to_event(1)
        )
        layers.append((weight, bias))
    with pyro.plate("data", DATASET_SIZE, subsample_size=len(x)):
        hidden = x
        for index, (weight, bias) in enumerate(layers):
            hidden = hidden @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
            if index < len(layers) - 1:
                hidden = hidden.relu()
        pyro.sample("obs", dist.Categorical(logits=hidden), obs=y)


def build_cases(x: Tensor, y: Tensor) -> list[Case]:
    """One case per training mode, each with a freshly built network."""
    import_library("torch_blue_pyro")
    from torch_blue_pyro import vi

    device = x.device
    cases = [
        Case(
            "train",
            TORCH_BLUE_MODE,
            bayesian_train_step(bayesian_mlp(vi).to(device), vi, x, y),
        )
    ]
    net = bayesian_mlp(vi).to(device)
    cases.append(
        Case(
            "train",
            PYRO_MODE,
            svi_step(classifier(net), net.guide, x, y),
        )
    )
    auto_net = bayesian_mlp(vi).to(device)
    auto_model = classifier(auto_net)
    cases.append(
        Case(
            "train",
            AUTONORMAL,
            svi_step(auto_model, AutoNormal(auto_model), x, y),
        )
    )
    cases.append(
        Case(
            "train",
            PLAIN_PYRO,
            svi_step(plain_pyro_model, AutoNormal(plain_pyro_model), x, y),
        )
    )
    return cases


def format_table(cases: list[Case], peaks: dict[str, int]) -> str:
    """Markdown table of medians, ratios to the torch_blue-mode step and peaks."""
    reference = cases[0]
    lines = [
        "| step | median ms | IQR ms | x torch_blue mode | peak MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        q1, q3 = case.quartiles_ms
        lines.append(
            f"| {case.implementation} | {case.median_ms:.2f} | {q1:.2f}-{q3:.2f} "
            f"| {case.median_ms / reference.median_ms:.2f} "
            f"| {peaks[case.implementation] / MIB:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=15, help="round-robin rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the interleaved benchmark and print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = synchronizer(device)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    x = torch.randint(0, 17, (BATCH, LAYER_SIZES[0]), device=device) / 16.0
    y = torch.randint(0, NUM_CLASSES, (BATCH,), device=device)
    cases = build_cases(x, y)
    for case in cases:
        for _ in range(max(args.warmup, 1)):
            case.step()
    sync()
    run_rounds(cases, args.rounds, args.steps, sync)
    peaks = {case.implementation: peak_bytes(case.step, device, 1) for case in cases}

    import torch_blue_pyro

    print(
        "# Pyro-mode benchmark: MLP "
        + "-".join(map(str, LAYER_SIZES))
        + f", batch {BATCH}, {SAMPLES} samples"
    )
    print()
    print_environment(device)
    print(f"- pyro {pyro.__version__}, torch_blue_pyro {torch_blue_pyro.__version__}")
    print(
        f"- {args.rounds} rounds x {args.steps} steps per case "
        f"after {args.warmup} warm-up steps"
    )
    print()
    print(format_table(cases, peaks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
