"""Peak memory of one training step and one prediction, per library.

What is measured
----------------
The networks, steps and implementations of ``step_benchmark.py`` (MLP, CNN,
transformer; ``torch_blue_pyro``, ``torch_blue``, ``bayesian-torch`` where it has
the layers, and the deterministic floor on ten times the batch), ``samples=10``.
Every case is warmed up (so that Adam's state exists), then the peak of the memory
that torch allocates *during* one step, above what was live before it, is taken:
the sampled weights, activations, saved tensors, gradients and temporaries.  The
parameters, the optimiser state and the inputs, live before and after, are not
counted; they are the same size in every library (two tensors per weight for the
variational parameters), and the floor has half as many parameters.

How
---
On CPU torch has no allocator statistics, so the step runs under
``torch.profiler.profile(profile_memory=True)``: the profiler records every
allocation and free of a torch tensor's storage with its size and time stamp (the
``[memory]`` events).  Sorted by time, the running sum of their sizes is the memory
torch holds above the start, and its maximum is the step's peak.  This is exact and
deterministic (up to the order of events in the same nanosecond), unlike the peak
resident set size of a process, which also counts the allocator's caching, Python
objects and pages that were touched once, and needs a fresh process per case.
Memory that is not a tensor storage (Python objects, Pyro's traces) is not counted:
it is small next to the tensors here.

On CUDA, ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``,
minus ``memory_allocated()`` before the step, gives the same quantity from the
caching allocator's own statistics.

Each case is measured ``--repeats`` times (default 3) and the largest peak is
reported; the table gives it in MiB, and its ratio to ``torch_blue`` and to the
floor.

Run
---
    python benchmarks/memory_benchmark.py                   # the MLP
    python benchmarks/memory_benchmark.py --all             # MLP, CNN, transformer
    python benchmarks/memory_benchmark.py --all --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence

import torch
from step_benchmark import (
    FLOOR,
    IMPLEMENTATIONS,
    MODELS,
    NUM_CLASSES,
    REFERENCE_LIBRARY,
    SAMPLES,
    TASKS,
    ModelSpec,
    display_name,
    implementation_steps,
    library_version,
    print_environment,
)
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

MIB = 2**20

Step = Callable[[], None]


def cpu_peak_bytes(step: Step) -> int:
    """Peak of torch's CPU tensor memory during ``step``, above its start."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda event: event[0])  # stable: same-time events keep order
    running = itertools.accumulate(nbytes for _, nbytes in events)
    return max(running, default=0)


def cuda_peak_bytes(step: Step, device: torch.device) -> int:
    """Peak of the CUDA caching allocator's allocated memory during ``step``."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_bytes(step: Step, device: torch.device, repeats: int) -> int:
    """Largest peak over ``repeats`` measured steps."""
    if device.type == "cuda":
        return max(cuda_peak_bytes(step, device) for _ in range(repeats))
    return max(cpu_peak_bytes(step) for _ in range(repeats))


def measure_model(
    spec: ModelSpec, device: torch.device, warmup: int, repeats: int, seed: int
) -> tuple[dict[tuple[str, str], int], dict[str, str], dict[str, str]]:
    """Peak bytes per (task, implementation), versions, and skipped libraries."""
    torch.manual_seed(seed)
    x = torch.randn(spec.batch_size, *spec.input_shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (spec.batch_size,), device=device)
    peaks: dict[tuple[str, str], int] = {}
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for implementation in IMPLEMENTATIONS:
        try:
            train_predict = implementation_steps(spec, implementation, x, y)
            steps = dict(zip(TASKS, train_predict, strict=True))
            for task, step in steps.items():
                for _ in range(max(warmup, 1)):
                    step()
                peaks[(task, implementation)] = peak_bytes(step, device, repeats)
        except Exception as error:  # report any failure, do not crash the run
            if implementation == FLOOR:
                raise
            skipped[implementation] = f"{type(error).__name__}: {error}"
            continue
        if implementation != FLOOR:
            versions[implementation] = library_version(
                implementation, sys.modules[implementation]
            )
    return peaks, versions, skipped


def format_table(spec: ModelSpec, peaks: dict[tuple[str, str], int]) -> str:
    """Markdown table of the peaks and their ratios to torch_blue and the floor."""
    lines = [
        "| task | implementation | peak MiB | x torch_blue | x floor |",
        "|---|---|---:|---:|---:|",
    ]
    for task in TASKS:
        reference = peaks.get((task, REFERENCE_LIBRARY))
        floor = peaks[(task, FLOOR)]
        for implementation in IMPLEMENTATIONS:
            peak = peaks.get((task, implementation))
            if peak is None:
                continue
            vs_reference = (
                f"{peak / reference:.2f}"
                if reference and implementation not in (REFERENCE_LIBRARY, FLOOR)
                else ""
            )
            vs_floor = f"{peak / floor:.2f}" if floor else ""
            lines.append(
                f"| {task} | {display_name(spec, implementation)} "
                f"| {peak / MIB:.2f} | {vs_reference} | {vs_floor} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--all", action="store_true", help="every network in turn")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="measured steps")
    parser.add_argument("--seed", type=int, default=0, help="torch random seed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the chosen network (or all) and print the tables."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list(MODELS) if args.all else [args.model]
    for index, name in enumerate(names):
        spec = MODELS[name]
        peaks, versions, skipped = measure_model(
            spec, device, args.warmup, args.repeats, args.seed
        )
        if index:
            print()
        print(f"# Memory benchmark: {spec.title}")
        print()
        print_environment(device)
        print(f"- batch {spec.batch_size}, samples {SAMPLES}")
        method = (
            "CUDA max_memory_allocated"
            if device.type == "cuda"
            else "profiler allocation events"
        )
        print(f"- peak above the start of the step ({method}), max of {args.repeats}")
        for library, version in versions.items():
            print(f"- {library} {version}")
        for library, error in skipped.items():
            print(f"- {library}: SKIPPED ({error})")
        print()
        print(format_table(spec, peaks), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
