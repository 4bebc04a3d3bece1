"""Step time and peak memory of a Bayesian ResNet-18 on CIFAR-shaped data.

What is measured
----------------
``torch_blue_pyro.zoo.resnet18(num_classes=10)`` (torchvision's layout: basic blocks
with downsampling, batch norm everywhere; full width 64 unless ``--width``) on
synthetic CIFAR-shaped data: a batch of ``--batch`` (32) random 3x32x32 images with
random labels of 10 classes, ``--samples`` (4) weight samples.  The cases:

``torch_blue_pyro stacked`` / ``torch_blue_pyro loop``
    The plain network converted in place with ``vi.convert_to_vimodule`` (the batch
    norms stay deterministic), with ``sample_execution = "stacked"`` (the forward
    once per sample under ``torch.vmap``) and ``"loop"`` (one sample after another
    on pre-drawn weights).  ``"auto"`` takes the loop for a convolution network on
    the CPU and the stacked pass elsewhere.
``torch_blue``
    ``torch_blue`` 1.1.0's ``convert_to_vimodule`` of the same plain network.  Its
    training step fails (its vmap meets the batch norms' in-place running-statistics
    update): the table reports how, and its prediction where it runs.
``bayesian-torch``
    ``dnn_to_bnn`` of the same plain network with the ``const_bnn_prior_parameters``
    of its README (prior N(0, 1), posterior mu 0 and rho -3, ``Reparameterization``,
    no MOPED).  Its layers draw one weight sample per call, so its training step
    loops over the samples: the cross-entropy of each forward, averaged, plus
    ``get_kl_loss(model) / batch`` as its README has it.  (Its layers draw the noise
    into one buffer per weight through ``.data``, which autograd does not see: in a
    step over several samples the gradient with respect to ``rho`` takes the last
    sample's noise for every sample.  The step is timed as written; it keeps no
    memory for the earlier samples' noise.)
``floor``
    The deterministic ResNet-18 on the batch repeated ``samples`` times (the work of
    the samples without any sampling), trained with cross-entropy.
``torch_blue_pyro stacked compiled`` / ``torch_blue_pyro loop compiled``
    With ``--compile``: the training step with ``torch.compile(model)`` (inductor),
    compiled during the warm-up.
``noise only``
    ``torch.randn(samples, *shape)`` for every parameter of the network: the weight
    noise that any implementation with independent weight samples draws, a lower
    bound of the difference to the floor (11.7M weights x 4 samples).

*train* is one full optimisation step: forward (``samples=4``), the loss
(``KullbackLeiblerLoss`` with a ``Categorical`` predictive distribution for the
``vi`` libraries), backward, ``torch.optim.Adam`` step and ``zero_grad``, in
``train()`` mode (batch statistics in the batch norms).  *predict* is the forward
alone in ``eval()`` mode under ``torch.no_grad()`` (``return_log_probs = False``;
bayesian-torch: ``samples`` forwards).  The training step of our two paths and of
the floor is also timed under ``torch.autocast`` with ``bfloat16`` and, on CUDA,
with ``float16`` and a ``torch.amp.GradScaler``.  On the stacked path the vmapped
converted model runs in float32 under autocast (torch's vmap applies no autocast to
convolutions), so there only the loop path can gain from it.

How
---
Every case gets its own freshly built network and is warmed up; the cases are then
interleaved round-robin (``--rounds`` rounds of ``--steps`` timed steps each, as in
``step_benchmark.py``, whose helpers this script uses), so that drifts in machine
load hit them alike.  The table gives the median step time in ms, its interquartile
range, the ratio to the floor in the same precision and, for the autocast rows, the
ratio to the same case in float32.  Afterwards the peak memory of one step of every
case is measured as in ``memory_benchmark.py`` (profiler allocation events on CPU,
the caching allocator's peak on CUDA: what the step allocates above what was live
before it), the largest of ``--repeats``, in MiB and as ratios to bayesian-torch's
and to the floor's.
A library that is not installed is skipped with the command that installs it; a
case that fails is reported with its exception, the run goes on.

The goals stated under the tables: a training step at most 1.3 times the floor's,
a peak memory at most bayesian-torch's.

Run
---
    python benchmarks/zoo_benchmark.py                 # a few minutes on 2 CPU cores
    python benchmarks/zoo_benchmark.py --quick         # width 16, 2 rounds: a smoke run
    python benchmarks/zoo_benchmark.py --device cuda   # bf16 and fp16 autocast too

(``--samples``, ``--batch``, ``--width``, ``--rounds``, ``--steps``, ``--warmup``,
``--repeats``, ``--threads`` and ``--seed`` change the defaults.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from memory_benchmark import MIB, peak_bytes
from step_benchmark import (
    LEARNING_RATE,
    NOISE,
    Case,
    import_library,
    library_version,
    noise_step,
    print_environment,
    run_rounds,
    synchronizer,
    warm_up,
)
from torch import Tensor, nn

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
DATASET_SIZE = 50_000
"""CIFAR-10's training set: the scale of the KL term."""
WIDTH = 64
QUICK_WIDTH = 16
TRAIN_GOAL = 1.3
"""A training step at most this many times the floor's."""

PYRO = "torch_blue_pyro"
STACKED = f"{PYRO} stacked"
LOOP = f"{PYRO} loop"
TORCH_BLUE = "torch_blue"
BAYESIAN_TORCH = "bayesian-torch"
FLOOR = "floor"
COMPILED = " compiled"
"""The suffix of our paths under ``torch.compile`` (``--compile``)."""
IMPLEMENTATIONS = (
    STACKED,
    f"{STACKED}{COMPILED}",
    LOOP,
    f"{LOOP}{COMPILED}",
    TORCH_BLUE,
    BAYESIAN_TORCH,
    FLOOR,
    NOISE,
)
INSTALL = {
    TORCH_BLUE: "pip install -e '.[bench]' (torch-blue==1.1.0)",
    BAYESIAN_TORCH: "pip install --no-deps bayesian-torch==0.5.0",
}
FLOAT32 = "float32"
BF16 = "bf16 autocast"
FP16 = "fp16 autocast + GradScaler"
TASKS = ("train", "predict")

BAYESIAN_TORCH_PRIOR = {
    "prior_mu": 0.0,
    "prior_sigma": 1.0,
    "posterior_mu_init": 0.0,
    "posterior_rho_init": -3.0,
    "type": "Reparameterization",
    "moped_enable": False,
    "moped_delta": 0.5,
}
"""bayesian-torch's ``const_bnn_prior_parameters`` (its README)."""

Step = Callable[[], None]


@dataclass(frozen=True)
class Setting:
    """The data and the network size every case runs on."""

    x: Tensor
    y: Tensor
    samples: int
    width: int

    @property
    def device(self) -> torch.device:
        """Device of the data (and of every network)."""
        return self.x.device


@dataclass
class ZooCase(Case):
    """A timed (task, implementation, precision) case."""

    precision: str = FLOAT32


# --- the networks -------------------------------------------------------------------


def plain_resnet(setting: Setting) -> nn.Module:
    """The deterministic ResNet-18 (torchvision's layout), on the CPU."""
    zoo = import_library(f"{PYRO}.zoo")
    return zoo.resnet18(num_classes=NUM_CLASSES, width=setting.width)


def converted_resnet(setting: Setting, library: str, execution: str | None) -> Any:
    """The plain ResNet-18 converted by a library's ``vi.convert_to_vimodule``.

    Converted on the CPU, then moved, as a user converts a network (bayesian-torch
    builds its layers on the CPU whatever the network's device).
    """
    vi = import_library(f"{library}.vi")
    net = plain_resnet(setting)
    vi.convert_to_vimodule(net)
    if execution is not None:
        net.sample_execution = execution
    return net.to(setting.device)


def bayesian_torch_resnet(setting: Setting) -> nn.Module:
    """The plain ResNet-18 converted by bayesian-torch's ``dnn_to_bnn``."""
    models = import_library("bayesian_torch.models.dnn_to_bnn")
    net = plain_resnet(setting)
    models.dnn_to_bnn(net, BAYESIAN_TORCH_PRIOR)
    return net.to(setting.device)


# --- the steps ----------------------------------------------------------------------


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a precision (none for float32)."""
    if precision == FLOAT32:
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == FP16 else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def train_step(model: nn.Module, loss_of: Callable[[], Tensor], precision: str) -> Step:
    """One Adam step on ``loss_of()``, computed under the precision's autocast."""
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scaler = torch.amp.GradScaler(device.type) if precision == FP16 else None

    def step() -> None:
        with autocast(device, precision):
            loss = loss_of()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad()

    return step


def predict_step(model: nn.Module, forward: Callable[[], Any]) -> Step:
    """``forward()`` in eval mode without gradients."""
    model.eval()

    def step() -> None:
        with torch.no_grad():
            forward()

    return step


def vi_steps(
    setting: Setting,
    library: str,
    execution: str | None,
    precision: str,
    compiled: bool = False,
) -> tuple[Step, Step]:
    """Train and predict of a converted network of a library with a ``vi`` API.

    ``compiled``: the training step's forward runs ``torch.compile(model)``
    (inductor; the warm-up compiles it).
    """
    vi = import_library(f"{library}.vi")
    x, y, samples = setting.x, setting.y, setting.samples
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=DATASET_SIZE
    )
    trained = converted_resnet(setting, library, execution)
    forward = torch.compile(trained) if compiled else trained
    train = train_step(
        trained, lambda: loss_fn(forward(x, samples=samples), y), precision
    )
    predicting = converted_resnet(setting, library, execution)
    predicting.return_log_probs = False
    return train, predict_step(predicting, lambda: predicting(x, samples=samples))


def bayesian_torch_steps(setting: Setting, precision: str) -> tuple[Step, Step]:
    """Train and predict of bayesian-torch: one forward per sample."""
    models = import_library("bayesian_torch.models.dnn_to_bnn")
    x, y, samples = setting.x, setting.y, setting.samples
    trained = bayesian_torch_resnet(setting)

    def loss() -> Tensor:
        nll = torch.stack(
            [nn.functional.cross_entropy(trained(x), y) for _ in range(samples)]
        ).mean()
        return nll + models.get_kl_loss(trained) / len(x)

    predicting = bayesian_torch_resnet(setting)
    return (
        train_step(trained, loss, precision),
        predict_step(
            predicting, lambda: torch.stack([predicting(x) for _ in range(samples)])
        ),
    )


def floor_steps(setting: Setting, precision: str) -> tuple[Step, Step]:
    """Train and predict of the deterministic network on ``samples`` x the batch."""
    x = setting.x.repeat(setting.samples, 1, 1, 1)
    y = setting.y.repeat(setting.samples)
    trained = plain_resnet(setting).to(setting.device)
    predicting = plain_resnet(setting).to(setting.device)
    return (
        train_step(
            trained, lambda: nn.functional.cross_entropy(trained(x), y), precision
        ),
        predict_step(predicting, lambda: predicting(x)),
    )


def implementation_steps(
    setting: Setting, implementation: str, precision: str
) -> tuple[Step, Step]:
    """Fresh ``(train, predict)`` closures of an implementation in a precision."""
    if implementation == FLOOR:
        return floor_steps(setting, precision)
    if implementation == NOISE:
        draw = noise_step(plain_resnet(setting).to(setting.device), setting.samples)
        return draw, draw
    if implementation == BAYESIAN_TORCH:
        return bayesian_torch_steps(setting, precision)
    if implementation == TORCH_BLUE:
        return vi_steps(setting, TORCH_BLUE, None, precision)
    execution = implementation.removesuffix(COMPILED).rsplit(" ", 1)[1]
    compiled = implementation.endswith(COMPILED)
    return vi_steps(setting, PYRO, execution, precision, compiled)


def precisions(device: torch.device) -> tuple[str, ...]:
    """The precisions of the training step on a device."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return (FLOAT32, BF16, FP16)
        return (FLOAT32, FP16)
    return (FLOAT32, BF16)


def case_plan(
    device: torch.device, compiled: bool
) -> list[tuple[str, str, tuple[str, ...]]]:
    """(implementation, precision, tasks) of every case, in the order of the rounds."""
    plan: list[tuple[str, str, tuple[str, ...]]] = []
    for precision in precisions(device):
        for implementation in (FLOOR, STACKED, LOOP):
            tasks = TASKS if precision == FLOAT32 else ("train",)
            plan.append((implementation, precision, tasks))
    if compiled:
        plan += [(f"{path}{COMPILED}", FLOAT32, ("train",)) for path in (STACKED, LOOP)]
    plan += [
        (TORCH_BLUE, FLOAT32, TASKS),
        (BAYESIAN_TORCH, FLOAT32, TASKS),
        (NOISE, FLOAT32, ("train",)),
    ]
    return plan


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


@dataclass
class Results:
    """The cases that ran, the ones that failed, and the libraries found."""

    cases: list[ZooCase]
    failed: dict[tuple[str, str, str], str]
    """Error per (task, implementation, precision)."""
    missing: dict[str, str]
    """Install hint per library that is not installed."""
    versions: dict[str, str]


def build_cases(setting: Setting, warmup: int, compiled: bool) -> Results:
    """Build and warm up every case; record what fails or is missing."""
    sync = synchronizer(setting.device)
    results = Results([], {}, {}, {})
    for implementation, precision, tasks in case_plan(setting.device, compiled):
        library = (
            implementation
            if implementation in (FLOOR, NOISE)
            else implementation.split(" ")[0]
        )
        if library in results.missing:
            continue
        try:
            train, predict = implementation_steps(setting, implementation, precision)
        except ImportError as error:
            if library in INSTALL:
                results.missing[library] = f"{first_line(error)}; {INSTALL[library]}"
                continue
            raise
        for task in tasks:
            step = train if task == "train" else predict
            case = ZooCase(task, implementation, step, precision=precision)
            try:
                warm_up(case, max(warmup, 1), sync)  # at least one: does it run?
            except Exception as error:  # report any failure, do not crash the run
                if implementation in (FLOOR, NOISE):
                    raise
                results.failed[(task, implementation, precision)] = first_line(error)
                continue
            results.cases.append(case)
        if library not in (FLOOR, NOISE) and library not in results.versions:
            module = sys.modules[library.replace("-", "_")]
            results.versions[library] = library_version(library, module)
    return results


# --- the tables ---------------------------------------------------------------------

Key = tuple[str, str, str]


def key(case: ZooCase) -> Key:
    """(task, implementation, precision) of a case."""
    return case.task, case.implementation, case.precision


def row_order(results: Results) -> list[Key]:
    """Every measured or failed case, by task, implementation and precision."""
    keys = {key(case) for case in results.cases} | set(results.failed)
    order = {name: index for index, name in enumerate(IMPLEMENTATIONS)}
    ranks = {name: index for index, name in enumerate((FLOAT32, BF16, FP16))}
    return sorted(keys, key=lambda k: (TASKS.index(k[0]), order[k[1]], ranks[k[2]]))


def display(implementation: str, setting: Setting) -> str:
    """Name in the tables (the floor says how many rows it runs on)."""
    if implementation == FLOOR:
        rows = setting.samples * len(setting.x)
        return f"floor (torch ResNet-18, {rows} rows)"
    return implementation


def time_table(results: Results, setting: Setting) -> str:
    """Median times, their IQR, the ratio to the floor and to float32."""
    by_key = {key(case): case for case in results.cases}
    lines = [
        "| task | implementation | precision | median ms | IQR ms | x floor "
        "| x float32 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for task, implementation, precision in row_order(results):
        name = display(implementation, setting)
        case = by_key.get((task, implementation, precision))
        if case is None:
            error = results.failed[(task, implementation, precision)]
            lines.append(f"| {task} | {name} | {precision} | fails: {error} | | | |")
            continue
        floor = by_key[(task, FLOOR, precision)]
        same32 = by_key.get((task, implementation, FLOAT32))
        vs32 = (
            f"{case.median_ms / same32.median_ms:.2f}"
            if same32 is not None and precision != FLOAT32
            else ""
        )
        q1, q3 = case.quartiles_ms
        lines.append(
            f"| {task} | {name} | {precision} | {case.median_ms:.1f} "
            f"| {q1:.1f}-{q3:.1f} | {case.median_ms / floor.median_ms:.2f} | {vs32} |"
        )
    return "\n".join(lines)


def memory_table(results: Results, peaks: dict[Key, int], setting: Setting) -> str:
    """Peak MiB per case, its ratio to bayesian-torch's and to the floor's."""
    lines = [
        "| task | implementation | precision | peak MiB | x bayesian-torch | x floor |",
        "|---|---|---|---:|---:|---:|",
    ]
    for task, implementation, precision in row_order(results):
        name = display(implementation, setting)
        peak = peaks.get((task, implementation, precision))
        if peak is None:
            lines.append(f"| {task} | {name} | {precision} | fails | | |")
            continue
        reference = peaks.get((task, BAYESIAN_TORCH, FLOAT32))
        floor = peaks.get((task, FLOOR, precision))
        vs_reference = (
            f"{peak / reference:.2f}"
            if reference and implementation != BAYESIAN_TORCH
            else ""
        )
        vs_floor = f"{peak / floor:.2f}" if floor and implementation != FLOOR else ""
        lines.append(
            f"| {task} | {name} | {precision} | {peak / MIB:.1f} | {vs_reference} "
            f"| {vs_floor} |"
        )
    return "\n".join(lines)


def goals(results: Results, peaks: dict[Key, int], device: torch.device) -> list[str]:
    """One line per goal and case of ours: the figure and whether it is met."""
    by_key = {key(case): case for case in results.cases}
    lines = []
    for implementation in (STACKED, LOOP):
        for precision in precisions(device):
            case = by_key.get(("train", implementation, precision))
            floor = by_key.get(("train", FLOOR, precision))
            if case is None or floor is None:
                continue
            ratio = case.median_ms / floor.median_ms
            verdict = "met" if ratio <= TRAIN_GOAL else "NOT met"
            lines.append(
                f"- training step <= {TRAIN_GOAL}x the floor, {implementation}, "
                f"{precision}: {ratio:.2f}x, {verdict}"
            )
    for task in TASKS:
        reference = peaks.get((task, BAYESIAN_TORCH, FLOAT32))
        if not reference:
            lines.append(f"- peak memory of {task} <= bayesian-torch's: no reference")
            continue
        for implementation in (STACKED, LOOP):
            peak = peaks.get((task, implementation, FLOAT32))
            if peak is None:
                continue
            verdict = "met" if peak <= reference else "NOT met"
            lines.append(
                f"- peak memory of {task} <= bayesian-torch's, {implementation}, "
                f"float32: {peak / MIB:.1f} MiB vs {reference / MIB:.1f} MiB "
                f"({peak / reference:.2f}x), {verdict}"
            )
    return lines


# --- command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options (``None``: the device's default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: width {QUICK_WIDTH}, 2 rounds of 1 step, 1 repeat",
    )
    parser.add_argument("--samples", type=int, default=4, help="weight samples")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument(
        "--width", type=int, help=f"ResNet base width (default {WIDTH})"
    )
    parser.add_argument(
        "--rounds", type=int, help="round-robin rounds (default 5; cuda 10)"
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps per case and round (default 2; cuda 5)"
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per case (default 2; cuda 5)"
    )
    parser.add_argument(
        "--repeats", type=int, help="measured steps per memory peak (default 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time our training steps with torch.compile(model) (inductor; "
        "compiling the loop path takes minutes on a CPU)",
    )
    parser.add_argument("--seed", type=int, default=0, help="torch random seed")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    defaults = {
        "width": QUICK_WIDTH if args.quick else WIDTH,
        "rounds": 2 if args.quick else (10 if cuda else 5),
        "steps": 1 if args.quick else (5 if cuda else 2),
        "warmup": 1 if args.quick else (5 if cuda else 2),
        "repeats": 1 if args.quick else 2,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Build, time and measure every case and print the tables."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    setting = Setting(
        x=torch.randn(args.batch, *IMAGE_SHAPE, device=device),
        y=torch.randint(0, NUM_CLASSES, (args.batch,), device=device),
        samples=args.samples,
        width=args.width,
    )
    results = build_cases(setting, args.warmup, args.compile)

    print(
        f"# Zoo benchmark: Bayesian ResNet-18 (width {args.width}) on "
        f"{'x'.join(map(str, IMAGE_SHAPE))} images, {NUM_CLASSES} classes"
    )
    print()
    print_environment(device)
    print(
        f"- batch {args.batch}, samples {args.samples}, floor batch "
        f"{args.samples * args.batch}{' (--quick)' if args.quick else ''}"
    )
    print(
        f"- {args.rounds} rounds x {args.steps} steps per case after "
        f"{args.warmup} warm-up steps; memory: max of {args.repeats}"
    )
    for library, version in results.versions.items():
        print(f"- {library} {version}")
    for library, hint in results.missing.items():
        print(f"- {library}: SKIPPED, not installed ({hint})")
    print(
        "- autocast: the stacked path runs its vmapped forward in float32 (torch's "
        "vmap applies no autocast to convolutions)"
    )
    print(flush=True)

    sync = synchronizer(device)
    timed: list[Case] = [*results.cases]
    run_rounds(timed, args.rounds, args.steps, sync)
    print("## Step time")
    print()
    print(time_table(results, setting))
    print(flush=True)

    peaks = {
        key(case): peak_bytes(case.step, device, args.repeats) for case in results.cases
    }
    method = (
        "CUDA max_memory_allocated"
        if device.type == "cuda"
        else "profiler allocation events"
    )
    print(f"## Peak memory above the start of the step ({method})")
    print()
    print(memory_table(results, peaks, setting))
    print()
    print("## Goals")
    print()
    print("\n".join(goals(results, peaks, device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
