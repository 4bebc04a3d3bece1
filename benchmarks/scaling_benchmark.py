"""How the training step's time and peak memory grow with samples and batch size.

What is measured
----------------
The training step of ``step_benchmark.py`` (forward with ``samples=S``,
``KullbackLeiblerLoss`` with a ``Categorical`` predictive distribution, backward,
Adam, ``zero_grad``) of ``torch_blue_pyro`` and, for reference, ``torch_blue`` and
the deterministic floor (the ``torch.nn`` network of the same shape trained with
cross-entropy on the batch repeated ``S`` times, as in the step benchmark):

- the MLP 64-256-256-10 over ``S`` in {1, 10, 32, 100} and batch in
  {32, 128, 1024};
- a ``VITransformerEncoder`` of one ``VITransformerEncoderLayer(d_model=64,
  nhead=4, dim_feedforward=128, batch_first=True)`` (every other constructor
  argument explicit, as in the step benchmark), followed by the mean over the
  sequence and a ``VILinear(64, 10)`` head, on a batch of 32 sequences of length 16,
  over ``S`` in {1, 10, 32, 100}.

For each setting the three are interleaved round-robin (``--rounds`` rounds
of ``--steps`` timed steps each, after a warm-up), and the median step time is
reported.  The peak memory of one step is measured afterwards as in
``memory_benchmark.py`` (profiler allocation events on CPU, the caching allocator's
peak on CUDA): the memory allocated during the step above what was live before.

Besides the absolute figures the table shows the growth per sample relative to
``S = 1`` at the same batch size, ``t(S) / (S * t(1))`` for time and
``m(S) / (S * m(1))`` for memory.  A step whose cost is linear in ``S`` with no
fixed part gives 1; fixed per-step costs (Python, the optimiser, the
parameter-sized terms) make it fall below 1 as ``S`` grows; a value that rises with
``S`` would show super-linear growth.  The floor shows how much of that growth
the hardware alone causes (caches: at batch 1024 the activations of ten samples no
longer fit).  ``x torch_blue`` is the ratio to ``torch_blue`` at the same setting.

Run
---
    python benchmarks/scaling_benchmark.py              # the full grid
    python benchmarks/scaling_benchmark.py --quick      # S 1, 10; batch 32, 128
    python benchmarks/scaling_benchmark.py --device cuda

(``--threads``, ``--rounds``, ``--steps``, ``--warmup`` change the defaults;
``--only mlp`` or ``--only transformer`` runs one of the two tables.)
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from memory_benchmark import MIB, peak_bytes
from step_benchmark import (
    D_MODEL,
    DIM_FEEDFORWARD,
    FLOOR,
    LIBRARIES,
    MODELS,
    NUM_CLASSES,
    NUM_HEADS,
    PYRO_LIBRARY,
    REFERENCE_LIBRARY,
    SEQUENCE_LENGTH,
    bayesian_train_step,
    bayesian_transformer,
    deterministic_transformer,
    floor_train_step,
    import_library,
    library_version,
    print_environment,
    synchronizer,
)
from torch import nn

SAMPLES = (1, 10, 32, 100)
BATCHES = (32, 128, 1024)
QUICK_SAMPLES = (1, 10)
QUICK_BATCHES = (32, 128)
TRANSFORMER_BATCH = 32

Builder = Callable[[ModuleType], Any]
IMPLEMENTATIONS = (*LIBRARIES, FLOOR)


def transformer_layer(vi: ModuleType) -> Any:
    """One Bayesian encoder layer, the mean over the sequence and a linear head."""
    return bayesian_transformer(vi, num_layers=1)


def deterministic_transformer_layer() -> nn.Module:
    """The ``torch.nn`` network of the same shape as ``transformer_layer``."""
    return deterministic_transformer(num_layers=1)


@dataclass
class Point:
    """One library at one (samples, batch) setting."""

    library: str
    samples: int
    batch: int
    step: Callable[[], None]
    times_ms: list[float] = field(default_factory=list)
    peak: int = 0

    @property
    def median_ms(self) -> float:
        """Median step time in milliseconds."""
        return statistics.median(self.times_ms)


def measure(
    build: Builder,
    deterministic: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    samples: int,
    batch: int,
    libraries: dict[str, ModuleType],
    args: argparse.Namespace,
) -> list[Point]:
    """Time (interleaved) and measure the peak memory of each implementation."""
    device = torch.device(args.device)
    sync = synchronizer(device)
    torch.manual_seed(args.seed)
    x = torch.randn(batch, *input_shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    points = []
    for library in IMPLEMENTATIONS:
        if library == FLOOR:
            x_floor = x.repeat(samples, *(1,) * (x.dim() - 1))
            model = deterministic().to(device)
            step = floor_train_step(model, x_floor, y.repeat(samples))
        elif library in libraries:
            vi = libraries[library]
            model = build(vi).to(device)
            step = bayesian_train_step(model, vi, x, y, samples)
        else:
            continue
        for _ in range(max(args.warmup, 1)):
            step()
        points.append(Point(library, samples, batch, step))
    sync()
    for _ in range(args.rounds):
        for point in points:
            for _ in range(args.steps):
                sync()
                start = time.perf_counter()
                point.step()
                sync()
                point.times_ms.append((time.perf_counter() - start) * 1e3)
    for point in points:
        point.peak = peak_bytes(point.step, device, repeats=1)
    return points


def format_table(points: list[Point], with_batch: bool) -> str:
    """Markdown table: times, peaks, per-sample growth and ratio to torch_blue."""
    by_key = {(p.library, p.samples, p.batch): p for p in points}
    header = "| samples | " + ("batch | " if with_batch else "")
    lines = [
        header + "library | median ms | t(S)/(S t(1)) | peak MiB | m(S)/(S m(1)) "
        "| time x torch_blue | memory x torch_blue |",
        "|---:|"
        + ("---:|" if with_batch else "")
        + "---|---:|---:|---:|---:|---:|---:|",
    ]
    batches = sorted({p.batch for p in points})
    samples = sorted({p.samples for p in points})
    for batch in batches:
        for s in samples:
            for library in IMPLEMENTATIONS:
                point = by_key.get((library, s, batch))
                if point is None:
                    continue
                one = by_key.get((library, 1, batch))
                time_growth = (
                    f"{point.median_ms / (s * one.median_ms):.2f}" if one else ""
                )
                memory_growth = (
                    f"{point.peak / (s * one.peak):.2f}" if one and one.peak else ""
                )
                reference = by_key.get((REFERENCE_LIBRARY, s, batch))
                vs_time = vs_memory = ""
                if reference is not None and library == PYRO_LIBRARY:
                    vs_time = f"{point.median_ms / reference.median_ms:.2f}"
                    if reference.peak:
                        vs_memory = f"{point.peak / reference.peak:.2f}"
                lines.append(
                    f"| {s} | "
                    + (f"{batch} | " if with_batch else "")
                    + f"{library} | {point.median_ms:.2f} | {time_growth} "
                    f"| {point.peak / MIB:.2f} | {memory_growth} "
                    f"| {vs_time} | {vs_memory} |"
                )
    return "\n".join(lines)


def load_libraries() -> tuple[dict[str, ModuleType], dict[str, str]]:
    """Import the ``vi`` module of each library that is installed."""
    libraries: dict[str, ModuleType] = {}
    skipped: dict[str, str] = {}
    for library in LIBRARIES:
        try:
            import_library(library)
            libraries[library] = importlib.import_module(f"{library}.vi")
        except Exception as error:
            skipped[library] = f"{type(error).__name__}: {error}"
    if PYRO_LIBRARY not in libraries:
        raise SystemExit(f"cannot import {PYRO_LIBRARY}: {skipped[PYRO_LIBRARY]}")
    return libraries, skipped


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--only", choices=("mlp", "transformer"), help="one table")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0, help="torch random seed")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 2, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grids and print the two tables."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    libraries, skipped = load_libraries()
    all_samples = QUICK_SAMPLES if args.quick else SAMPLES
    batches = QUICK_BATCHES if args.quick else BATCHES

    print("# Scaling benchmark: training step over samples and batch size")
    print()
    print_environment(device)
    print(
        f"- {args.rounds} rounds x {args.steps} timed steps per setting and library "
        f"after {args.warmup} warm-up steps{' (--quick)' if args.quick else ''}"
    )
    for library in libraries:
        print(f"- {library} {library_version(library, sys.modules[library])}")
    for library, error in skipped.items():
        print(f"- {library}: SKIPPED ({error})")

    if args.only in (None, "mlp"):
        mlp = MODELS["mlp"]
        points = [
            point
            for batch in batches
            for samples in all_samples
            for point in measure(
                mlp.bayesian,
                mlp.deterministic,
                mlp.input_shape,
                samples,
                batch,
                libraries,
                args,
            )
        ]
        print()
        print(f"## {mlp.title}")
        print()
        print(format_table(points, with_batch=True), flush=True)

    if args.only in (None, "transformer"):
        points = [
            point
            for samples in all_samples
            for point in measure(
                transformer_layer,
                deterministic_transformer_layer,
                (SEQUENCE_LENGTH, D_MODEL),
                samples,
                TRANSFORMER_BATCH,
                libraries,
                args,
            )
        ]
        print()
        print(
            f"## One VITransformerEncoderLayer (d_model {D_MODEL}, {NUM_HEADS} heads, "
            f"feed-forward {DIM_FEEDFORWARD}), mean over the sequence, "
            f"linear({D_MODEL}->{NUM_CLASSES}); batch {TRANSFORMER_BATCH}, "
            f"sequence length {SEQUENCE_LENGTH}"
        )
        print()
        print(format_table(points, with_batch=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
