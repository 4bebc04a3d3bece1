"""Does ``torch.compile`` speed up a training step?  A trial on the MLP.

What is measured
----------------
The training step of ``step_benchmark.py`` for the MLP 64-256-256-10 (batch 128,
``samples=10``) of ``torch_blue_pyro`` (``KullbackLeiblerLoss``, Adam) and of the
deterministic floor (cross-entropy on the batch repeated ten times, Adam), each
in three variants, every variant with a freshly built network:

``eager``
    no compilation;
``compiled model``
    ``torch.compile(model, backend=...)``: the forward is compiled, the loss,
    backward and optimiser step run eagerly;
``compiled step``
    ``torch.compile(step, backend=...)`` of the whole step function (forward,
    loss, ``backward()``, ``optimizer.step()``, ``zero_grad()``): Dynamo splits it
    at what it cannot trace (``backward()`` at least) and compiles the pieces.

For each compiled variant the table gives whether it ran, the compile time (the
first call, which traces and compiles, after ``torch._dynamo.reset()`` and with an
empty inductor cache: a cold start), the number of graphs Dynamo compiled and of
graph breaks (from ``torch._dynamo.utils.counters``, up to the end of the warm-up,
so that recompilations count), and the median step time and its ratio to the eager
step of the same network (all variants interleaved round-robin, after the
warm-up); below the table, the most frequent break reasons.  Graphs compiled during
the timing (recompilations after a failed guard) are counted in the header.  A
variant that fails is reported with its error.

The default backend is ``inductor``, which generates C++ on CPU and needs a C++
compiler (``g++``); ``--backend aot_eager`` traces the same graphs, including the
backward, but runs them with eager kernels (no code generation), which separates
the cost of Dynamo's splitting from the gain of fused kernels.

Run
---
    python benchmarks/compile_benchmark.py                        # inductor
    python benchmarks/compile_benchmark.py --backend aot_eager
    python benchmarks/compile_benchmark.py --device cuda
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A fresh inductor cache, so that the compile times are those of a cold start
# (inductor keeps compiled graphs on disk between runs by default).
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="compile_benchmark_")
)

import torch
import torch._dynamo
from step_benchmark import (
    LAYER_SIZES,
    LEARNING_RATE,
    MODELS,
    NUM_CLASSES,
    PYRO_LIBRARY,
    SAMPLES,
    Case,
    bayesian_mlp,
    floor_train_step,
    import_library,
    library_version,
    print_environment,
    run_rounds,
    synchronizer,
)
from torch import Tensor, nn
from torch._dynamo.utils import counters

BATCH = 128
VARIANTS = ("eager", "compiled model", "compiled step")
FLOOR = "floor (torch MLP)"

Step = Callable[[], None]


@dataclass
class Trial:
    """One network in one variant: its step and what compiling it gave."""

    network: str
    variant: str
    step: Step | None = None
    compile_s: float = 0.0
    graphs: int = 0
    """Graphs Dynamo compiled for this trial (first call and warm-up)."""
    breaks: int = 0
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    case: Case | None = None


def bayesian_step(model: Any, x: Tensor, y: Tensor) -> Step:
    """The torch_blue-mode training step of ``model`` (a compiled one or not)."""
    vi = importlib.import_module(f"{PYRO_LIBRARY}.vi")
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=10_000
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step() -> None:
        loss = loss_fn(model(x, samples=SAMPLES), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def build_step(network: str, variant: str, backend: str, x: Tensor, y: Tensor) -> Step:
    """A fresh network's training step, compiled as ``variant`` says."""
    device = x.device
    if network == FLOOR:
        model: nn.Module = MODELS["mlp"].deterministic().to(device)
        x_floor, y_floor = x.repeat(SAMPLES, 1), y.repeat(SAMPLES)
        if variant == "compiled model":
            model = torch.compile(model, backend=backend)  # type: ignore[assignment]
        step = floor_train_step(model, x_floor, y_floor)
    else:
        vi = importlib.import_module(f"{PYRO_LIBRARY}.vi")
        net = bayesian_mlp(vi).to(device)
        if variant == "compiled model":
            net = torch.compile(net, backend=backend)
        step = bayesian_step(net, x, y)
    if variant == "compiled step":
        return torch.compile(step, backend=backend)
    return step


def snapshot() -> tuple[int, collections.Counter[str]]:
    """Dynamo's count of compiled graphs and its graph-break reasons so far."""
    breaks: collections.Counter[str] = collections.Counter()
    for reason, count in counters["graph_break"].items():
        breaks[reason.splitlines()[0][:110]] += count
    return counters["stats"]["unique_graphs"], breaks


def prepare(trial: Trial, backend: str, x: Tensor, y: Tensor, warmup: int) -> None:
    """Build, compile (timing the first call) and warm up a trial's step."""
    sync = synchronizer(x.device)
    torch._dynamo.reset()  # no reuse of another trial's compiled frames
    graphs_before, breaks_before = snapshot()
    try:
        step = build_step(trial.network, trial.variant, backend, x, y)
        sync()
        start = time.perf_counter()
        step()
        sync()
        trial.compile_s = time.perf_counter() - start
        for _ in range(warmup):
            step()
        sync()
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        message = str(error).strip().splitlines()[0][:200] if str(error) else ""
        trial.error = f"{type(error).__name__}: {message}{where}"
        return
    trial.step = step
    trial.case = Case("train", f"{trial.network}, {trial.variant}", step)
    graphs_after, breaks_after = snapshot()
    trial.graphs = graphs_after - graphs_before
    breaks = breaks_after - breaks_before
    trial.breaks = sum(breaks.values())
    trial.reasons = [f"{n}x {reason}" for reason, n in breaks.most_common(3)]


def format_table(trials: list[Trial]) -> str:
    """Markdown table of the trials."""
    eager = {t.network: t.case for t in trials if t.variant == "eager"}
    lines = [
        "| network | variant | runs | compile s | graphs | graph breaks "
        "| median ms | x eager |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for trial in trials:
        case, reference = trial.case, eager.get(trial.network)
        compiled = trial.variant != "eager"
        if case is None:
            lines.append(f"| {trial.network} | {trial.variant} | no | | | | | |")
            continue
        ratio = (
            f"{case.median_ms / reference.median_ms:.2f}"
            if reference is not None and reference.times_ms
            else ""
        )
        lines.append(
            f"| {trial.network} | {trial.variant} | yes "
            f"| {trial.compile_s:.1f} | {trial.graphs if compiled else ''} "
            f"| {trial.breaks if compiled else ''} | {case.median_ms:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", default="inductor", help="torch.compile backend (inductor)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=10, help="round-robin rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps after compiling")
    parser.add_argument("--seed", type=int, default=0, help="torch random seed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Compile, time and print the table and the break reasons."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    x = torch.randn(BATCH, LAYER_SIZES[0], device=device)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), device=device)
    package = import_library(PYRO_LIBRARY)

    trials = [
        Trial(network, variant)
        for network in (PYRO_LIBRARY, FLOOR)
        for variant in VARIANTS
    ]
    for trial in trials:
        prepare(trial, args.backend, x, y, args.warmup)
    # Each prepare reset Dynamo, so the earlier trials compile again on their next
    # call (from inductor's now warm cache): warm them all up once more.
    runnable = [trial.case for trial in trials if trial.case is not None]
    for case in runnable:
        for _ in range(max(args.warmup, 1)):
            case.step()
    # Graphs compiled while timing: recompilations after a failed guard.
    graphs_before, _ = snapshot()
    run_rounds(runnable, args.rounds, args.steps, synchronizer(device))
    recompiled = snapshot()[0] - graphs_before

    compiler = shutil.which("g++") or shutil.which("c++") or "none found"
    print(f"# torch.compile trial: MLP {'-'.join(map(str, LAYER_SIZES))}")
    print()
    print_environment(device)
    print(f"- {PYRO_LIBRARY} {library_version(PYRO_LIBRARY, package)}")
    print(f"- backend {args.backend}; C++ compiler: {compiler}")
    print(
        f"- batch {BATCH}, samples {SAMPLES}; {args.rounds} rounds x {args.steps} "
        f"steps per variant after {args.warmup} warm-up steps"
    )
    print(f"- graphs compiled while timing (recompilations): {recompiled}")
    print()
    print(format_table(trials))
    for trial in trials:
        if trial.error:
            print(f"\n- {trial.network}, {trial.variant}: FAILED: {trial.error}")
        elif trial.reasons:
            print(f"\n- {trial.network}, {trial.variant}: top graph-break reasons:")
            for reason in trial.reasons:
                print(f"  - {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
