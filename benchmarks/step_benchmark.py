"""Time one training step and one prediction of a Bayesian MLP, per library.

What is measured
----------------
The model is the MLP 64-256-256-10 (``VILinear``, ``ReLU``, ``VILinear``, ``ReLU``,
``VILinear`` in a ``VISequential``) on a batch of 128 rows, built with the
``vi`` API of

- ``torch_blue_pyro`` (``from torch_blue_pyro import vi``), and
- ``torch_blue`` (``from torch_blue import vi``), the library it replaces.

*train* is one full optimisation step: forward with ``samples=10``,
``KullbackLeiblerLoss`` with a ``Categorical`` predictive distribution, backward,
``torch.optim.Adam`` step and ``zero_grad``.  *predict* is one forward with
``samples=10`` under ``torch.no_grad()`` and ``return_log_probs = False``.

The *floor* is the deterministic ``torch.nn`` MLP of the same shape on
10 * 128 = 1280 rows (the work of 10 weight samples without any sampling),
trained with cross-entropy and Adam, and its plain forward for *predict*.

The implementations are interleaved round-robin (each round runs ``--steps``
steps of every case, after a warm-up), so that drifts in machine load hit them
alike.  Every step is timed on its own; the table reports medians in ms, the
ratio to the floor and the ratio of ``torch_blue_pyro`` to ``torch_blue``.  A
library that cannot be imported (or fails to run) is reported as skipped.

Run
---
    python benchmarks/step_benchmark.py

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
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

LAYER_SIZES = (64, 256, 256, 10)
BATCH_SIZE = 128
SAMPLES = 10
DATASET_SIZE = 10_000
LEARNING_RATE = 1e-3

PYRO_LIBRARY = "torch_blue_pyro"
REFERENCE_LIBRARY = "torch_blue"
LIBRARIES = (PYRO_LIBRARY, REFERENCE_LIBRARY)
FLOOR = "floor (torch MLP)"
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
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4)
        return q1, q3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=15, help="round-robin rounds")
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per case and round"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed steps per case before timing"
    )
    parser.add_argument("--seed", type=int, default=0, help="torch random seed")
    return parser.parse_args(argv)


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


def bayesian_mlp(vi: ModuleType) -> Any:
    """Build the Bayesian MLP 64-256-256-10 with the given ``vi`` module.

    The result is a ``vi.VISequential`` of whichever library ``vi`` belongs to,
    hence typed ``Any``.
    """
    d_in, h1, h2, d_out = LAYER_SIZES
    return vi.VISequential(
        vi.VILinear(d_in, h1),
        nn.ReLU(),
        vi.VILinear(h1, h2),
        nn.ReLU(),
        vi.VILinear(h2, d_out),
    )


def deterministic_mlp() -> nn.Sequential:
    """Build the deterministic ``torch.nn`` MLP of the same shape."""
    d_in, h1, h2, d_out = LAYER_SIZES
    return nn.Sequential(
        nn.Linear(d_in, h1),
        nn.ReLU(),
        nn.Linear(h1, h2),
        nn.ReLU(),
        nn.Linear(h2, d_out),
    )


def bayesian_train_step(vi: ModuleType, x: Tensor, y: Tensor) -> Step:
    """Return a closure running one variational-inference training step."""
    model = bayesian_mlp(vi)
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=DATASET_SIZE
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> None:
        output = model(x, samples=SAMPLES)
        loss = loss_fn(output, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def bayesian_predict_step(vi: ModuleType, x: Tensor) -> Step:
    """Return a closure running one sampled prediction without log probs."""
    model = bayesian_mlp(vi)
    model.return_log_probs = False

    def step() -> None:
        with torch.no_grad():
            model(x, samples=SAMPLES)

    return step


def floor_train_step(x: Tensor, y: Tensor) -> Step:
    """Return a closure running one cross-entropy step of the deterministic MLP."""
    model = deterministic_mlp()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> None:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def floor_predict_step(x: Tensor) -> Step:
    """Return a closure running one forward of the deterministic MLP."""
    model = deterministic_mlp()

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def warm_up(case: Case, steps: int) -> None:
    """Run ``steps`` untimed steps of a case."""
    for _ in range(steps):
        case.step()


def build_cases(
    x: Tensor, y: Tensor, warmup: int
) -> tuple[list[Case], dict[str, str], dict[str, str]]:
    """Build and warm up every case whose library can be imported and run.

    Returns
    -------
    cases : list of Case
        The runnable cases, floor included.
    versions : dict
        Version string per library that was loaded.
    skipped : dict
        Error message per library that was skipped.
    """
    x_floor, y_floor = x.repeat(SAMPLES, 1), y.repeat(SAMPLES)
    cases = [
        Case("train", FLOOR, floor_train_step(x_floor, y_floor)),
        Case("predict", FLOOR, floor_predict_step(x_floor)),
    ]
    for case in cases:
        warm_up(case, warmup)
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for library in LIBRARIES:
        try:
            package = import_library(library)
            vi = importlib.import_module(f"{library}.vi")
            library_cases = [
                Case("train", library, bayesian_train_step(vi, x, y)),
                Case("predict", library, bayesian_predict_step(vi, x)),
            ]
            for case in library_cases:
                warm_up(case, max(warmup, 1))  # at least one step: does it run?
        except Exception as error:  # report any failure, do not crash the run
            skipped[library] = f"{type(error).__name__}: {error}"
            continue
        versions[library] = library_version(library, package)
        cases.extend(library_cases)
    return cases, versions, skipped


def run_rounds(cases: list[Case], rounds: int, steps: int) -> None:
    """Time ``steps`` steps of every case per round, cycling through the cases."""
    for _ in range(rounds):
        for case in cases:
            for _ in range(steps):
                start = time.perf_counter()
                case.step()
                case.times_ms.append((time.perf_counter() - start) * 1e3)


def format_table(cases: list[Case]) -> str:
    """Format the medians and ratios of all cases as a markdown table."""
    by_key = {(case.task, case.implementation): case for case in cases}
    lines = [
        "| task | implementation | median ms | IQR ms | x floor | x torch_blue |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task in TASKS:
        floor = by_key[(task, FLOOR)]
        reference = by_key.get((task, REFERENCE_LIBRARY))
        for implementation in (*LIBRARIES, FLOOR):
            case = by_key.get((task, implementation))
            if case is None:
                continue
            q1, q3 = case.quartiles_ms
            vs_reference = (
                f"{case.median_ms / reference.median_ms:.2f}"
                if reference is not None and implementation == PYRO_LIBRARY
                else ""
            )
            lines.append(
                f"| {task} | {implementation} | {case.median_ms:.3f} "
                f"| {q1:.3f}-{q3:.3f} | {case.median_ms / floor.median_ms:.2f} "
                f"| {vs_reference} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the header and the result table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x = torch.randn(BATCH_SIZE, LAYER_SIZES[0])
    y = torch.randint(0, LAYER_SIZES[-1], (BATCH_SIZE,))
    cases, versions, skipped = build_cases(x, y, args.warmup)

    print("# Step benchmark: Bayesian MLP " + "-".join(map(str, LAYER_SIZES)))
    print()
    print(f"- machine: {cpu_name()} ({os.cpu_count()} CPUs), {platform.platform()}")
    print(f"- python {platform.python_version()}, torch {torch.__version__}")
    print(f"- torch threads: {torch.get_num_threads()}")
    print(
        f"- batch {BATCH_SIZE}, samples {SAMPLES}, floor batch {SAMPLES * BATCH_SIZE}"
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

    run_rounds(cases, args.rounds, args.steps)
    print(format_table(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
