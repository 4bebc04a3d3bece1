"""Classification uncertainty on digits: calibration and OOD detection, per method.

What is measured
----------------
scikit-learn's ``load_digits`` (1797 images of 8x8 pixels, divided by 16 to lie in
[0, 1]), split per seed into 70 % training and 30 % test digits (stratified,
``train_test_split(..., random_state=seed)``); every pixel standardized with the
training digits' mean and std (at least ``MIN_PIXEL_STD``). Every method trains the
same MLP, 64-256-10 with a ReLU, by Adam with learning rate 3e-3 on minibatches of
128 (a fresh permutation per epoch, fixed by the seed), 100 epochs unless said:

*deterministic*
    the plain ``nn.Sequential`` MLP, cross-entropy, 50 epochs (its best NLL on the
    validation split among 20, 30, 50 and 100);
*torch_blue defaults*
    what a script migrated from torch_blue gets: ``vi.VISequential`` of
    ``vi.VILinear`` layers with every setting at its default (``MeanFieldNormal``
    variational distribution with std 1 before the Kaiming scaling by
    1/sqrt(fan_in), ``MeanFieldNormal(0, 1)`` prior),
    ``vi.KullbackLeiblerLoss(Categorical(), dataset_size=len(train))`` (heat 1),
    ``samples=10`` per step;
*bayesian-torch defaults*
    ``dnn_to_bnn`` of the plain MLP with the ``const_bnn_prior_parameters`` of
    bayesian-torch's README (prior N(0, 1), posterior mean init 0, rho init -3,
    "Reparameterization", no MOPED), trained as its README shows: cross-entropy of
    one forward pass plus ``get_kl_loss(model) / batch_size``.
    (Its ``kl_div`` returns the *mean* KL per weight, so the KL term is tiny and
    the posterior stays close to its initial std.) Skipped when bayesian-torch is
    not installed (``pip install --no-deps bayesian-torch==0.5.0``);
*ours (recipe)*, torch_blue mode
    ``recipe_model()`` trained with ``vi.KullbackLeiblerLoss`` with the settings of
    ``RECIPE``;
*ours (recipe)*, Pyro mode
    the same network and settings trained by ``pyro.infer.SVI`` with
    ``Trace_ELBO(num_particles=RECIPE["particles"], vectorize_particles=True)`` and
    the network's own guide ``net.guide``; the model calls the network inside
    ``pyro.plate("data", N, subsample=batch)`` and observes
    ``pyro.sample("obs", Categorical(logits=...))``. The heat scales the weight
    sites in the model and the guide (``pyro.poutine.scale``), which scales the KL
    term as ``KullbackLeiblerLoss(heat=...)`` does.

The Bayesian networks predict with 32 weight samples (``net(x, samples=32)``, also
for the network trained in Pyro mode, which is the same module; bayesian-torch: 32
forward passes); the predictive probabilities are the mean of the samples' softmax.
On the test digits: accuracy, negative log-likelihood (NLL), Brier score and the
expected calibration error (ECE, 15 equal-width bins) of ``torch_blue_pyro.metrics``.

Out-of-distribution (OOD) detection: one combined OOD set made from the test
digits, each image once rotated by 90 degrees (``torch.rot90`` on the 8x8 grid) and
once with Gaussian noise of std 0.5 added (clipped to [0, 1]), then standardized as
the digits are; in-distribution are
the test digits. The table gives the AUROC (``metrics.ood_auroc``) of the
predictive entropy (``uncertainty.predictive_entropy``) and, for the Bayesian
networks, of the mutual information (``uncertainty.mutual_information``) as the
score; a second table gives them per kind. The rotated digits are the hard half: a
deterministic net is *more* confident on many of them than on real digits (an
AUROC below 0.5).

How
---
One row per (method, mode, seed); ``table()`` gives the mean and standard error
over the seeds. Every random choice is fixed by the seed (split, initialization,
minibatches, weight samples, noise); torch runs on one thread. ``seconds`` is the
wall time of training and predicting one method on one seed.

The recipe changes only public settings (initial variational std, prior, heat,
samples, epochs, learning rate); it was chosen on a validation split carved from the
training part (``--validation``: 20 % of the training digits, stratified; the test
digits unused), see the comment at ``RECIPE``.

Run
---
    python benchmarks/uncertainty_classification.py              # 5 seeds, ~1-2 min
    python benchmarks/uncertainty_classification.py --quick      # 1 seed, 10 epochs
    python benchmarks/uncertainty_classification.py --validation --seeds 10
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.nn import functional as F
from zoo_benchmark import BAYESIAN_TORCH_PRIOR

from torch_blue_pyro import metrics, uncertainty, vi

FEATURES, HIDDEN, CLASSES = 64, 256, 10
TEST_FRACTION = 0.3
VALIDATION_FRACTION = 0.2  # of the training part, for choosing the recipe only
BATCH_SIZE = 128
EPOCHS = 100  # torch_blue and bayesian-torch defaults (and the recipe)
DETERMINISTIC_EPOCHS = 50  # its best validation NLL among 20, 30, 50 and 100
MIN_PIXEL_STD = 0.1
LEARNING_RATE = 3e-3
DEFAULT_SAMPLES = 10  # torch_blue's default samples per step
PREDICT_SAMPLES = 32
ECE_BINS = 15
NOISE_STD = 0.5  # the Gaussian noise of the noisy OOD digits (pixels in [0, 1])
QUICK_EPOCHS = 10

# The settings of "ours (recipe)"; all public API (see recipe_model and run_method).
# Chosen on the validation split (--validation, test digits unused), 5 seeds for
# the screening, 10 for the finalists: initial stds 0.01-0.2, priors N(0, 0.1^2)
# to N(0, 1), heats 0.03-1, 20-200 epochs, lr 1e-3 to 5e-3, cosine learning-rate
# decay, batches of 32-128, local reparameterization, raw or standardized pixels,
# and the MLP itself (64-128-10, 64-256-10, 64-512-10, 64-128-128-10,
# 64-256-256-10); the pixels, the MLP, the lr and the batch size then apply to
# every method alike. Validation NLL / ECE, standardized pixels, 10 seeds:
#   std 0.01, heat 0.1, 100 epochs    0.058 / 0.014   <- chosen
#   std 0.01, heat 0.03, 100 epochs   0.062 / 0.014
#   std 0.01, heat 0.3, 100 epochs    0.057 / 0.016
#   std 0.03, heat 0.1, 100 epochs    0.059 / 0.015
#   std 0.01, heat 0.1, 50 epochs     0.062 / 0.016
#   deterministic, 20/30/50/100 epochs: 0.069 / 0.065 / 0.064 / 0.065
# What the screening showed: under Adam every log-std grows at about the learning
# rate per step (the KL term's gradient dominates theirs), so the final spread is
# set by the initial std, the learning rate and the number of steps; at heat 1, or
# with more steps (smaller batches, more epochs), the predictions end
# underconfident (ECE .03-.13); a prior narrower than N(0, 1) underfits or
# collapses to the prior; standardized pixels lower every method's NLL.
RECIPE: dict[str, Any] = {
    "variational_std": 0.01,  # MeanFieldNormal(std=...), times 1/sqrt(fan_in)
    "prior_std": 1.0,  # prior=MeanFieldNormal(std=...): the default
    "heat": 0.1,  # KullbackLeiblerLoss(heat=...); Pyro mode: poutine.scale(heat)
    "samples": 10,  # torch_blue mode: samples per step (the default)
    "particles": 4,  # Pyro mode: Trace_ELBO(num_particles=..., vectorized)
    "epochs": 100,
    "learning_rate": 3e-3,
}


# ----------------------------------------------------------------------- data
class Data:
    """One seed's split: train and test digits, and the OOD images."""

    def __init__(
        self, seed: int, validation: bool = False, noise_std: float = NOISE_STD
    ) -> None:
        features, labels = load_digits(return_X_y=True)
        x = torch.tensor(features, dtype=torch.float32) / 16.0
        y = torch.tensor(labels, dtype=torch.long)
        train, test = train_test_split(
            torch.arange(len(y)).numpy(),
            test_size=TEST_FRACTION,
            random_state=seed,
            stratify=labels,
        )
        if validation:  # tune on a split of the training part; the test part unused
            train, test = train_test_split(
                train,
                test_size=VALIDATION_FRACTION,
                random_state=seed,
                stratify=labels[train],
            )
        generator = torch.Generator().manual_seed(10_000 + seed)
        images = x[test].reshape(-1, 8, 8)
        rotated = torch.rot90(images, 1, dims=(1, 2)).reshape(-1, FEATURES)
        noise = torch.randn(x[test].shape, generator=generator) * noise_std
        noisy = (x[test] + noise).clamp(0.0, 1.0)
        # Every pixel standardized with the training digits' statistics; a border
        # pixel that is (almost) always blank has a std below MIN_PIXEL_STD.
        mean = x[train].mean(dim=0)
        std = x[train].std(dim=0).clamp_min(MIN_PIXEL_STD)

        def standardize(images: Tensor) -> Tensor:
            return (images - mean) / std

        self.x_train, self.y_train = standardize(x[train]), y[train]
        self.x_test, self.y_test = standardize(x[test]), y[test]
        self.x_ood = {  # the OOD set, by kind
            "rotated": standardize(rotated),
            "noisy": standardize(noisy),
        }

    def batches(self, epochs: int, seed: int) -> list[Tensor]:
        """Minibatch indices, a fresh permutation per epoch (fixed by the seed)."""
        generator = torch.Generator().manual_seed(20_000 + seed)
        n = len(self.y_train)
        return [
            batch
            for _ in range(epochs)
            for batch in torch.randperm(n, generator=generator).split(BATCH_SIZE)
        ]


# -------------------------------------------------------------------- methods
def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES)
    )


def default_model() -> vi.VISequential:
    """What a migrating torch_blue script builds: every setting at its default."""
    return vi.VISequential(
        vi.VILinear(FEATURES, HIDDEN), nn.ReLU(), vi.VILinear(HIDDEN, CLASSES)
    )


def recipe_model(recipe: dict[str, Any] = RECIPE) -> vi.VISequential:
    """The MLP of ``default_model`` with the recipe's initial std and prior."""

    def layer(n_in: int, n_out: int) -> vi.VILinear:
        return vi.VILinear(
            n_in,
            n_out,
            variational_distribution=vi.distributions.MeanFieldNormal(
                std=recipe["variational_std"]
            ),
            prior=vi.distributions.MeanFieldNormal(std=recipe["prior_std"]),
        )

    return vi.VISequential(layer(FEATURES, HIDDEN), nn.ReLU(), layer(HIDDEN, CLASSES))


# A predictor maps inputs (N, 64) to sampled logits (S, N, 10).
Predictor = Callable[[Tensor], Tensor]


def train_deterministic(data: Data, seed: int, epochs: int) -> Predictor:
    torch.manual_seed(seed)
    net = mlp()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    for batch in data.batches(epochs, seed):
        loss = F.cross_entropy(net(data.x_train[batch]), data.y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda x: net(x).unsqueeze(0)


def train_torch_blue(
    data: Data,
    seed: int,
    net: vi.VISequential,
    epochs: int,
    samples: int,
    learning_rate: float,
    heat: float = 1.0,
) -> Predictor:
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=len(data.y_train), heat=heat
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    for batch in data.batches(epochs, seed):
        output = net(data.x_train[batch], samples=samples)
        loss = loss_fn(output, data.y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda x: uncertainty.sample_tensor(net(x, samples=PREDICT_SAMPLES))


def train_pyro(
    data: Data,
    seed: int,
    net: vi.VISequential,
    epochs: int,
    particles: int,
    learning_rate: float,
    heat: float = 1.0,
) -> Predictor:
    x_train, y_train = data.x_train, data.y_train

    def model(index: Tensor) -> None:
        with pyro.plate("data", len(y_train), subsample=index):
            with pyro.poutine.scale(scale=heat):  # the weight sites only
                logits = net(x_train[index])
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y_train[index])

    def guide(index: Tensor) -> None:
        with pyro.poutine.scale(scale=heat):
            net.guide(index)

    pyro.clear_param_store()  # stays empty: net.guide trains the layers' parameters
    pyro.set_rng_seed(seed)
    elbo = Trace_ELBO(
        num_particles=particles, vectorize_particles=True, max_plate_nesting=1
    )
    svi = SVI(model, guide, pyro.optim.Adam({"lr": learning_rate}), elbo)
    for batch in data.batches(epochs, seed):
        svi.step(batch)
    return lambda x: uncertainty.sample_tensor(net(x, samples=PREDICT_SAMPLES))


def train_bayesian_torch(data: Data, seed: int, epochs: int) -> Predictor:
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss

    torch.manual_seed(seed)
    net = mlp()
    dnn_to_bnn(net, BAYESIAN_TORCH_PRIOR)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    for batch in data.batches(epochs, seed):
        output = net(data.x_train[batch])
        loss = F.cross_entropy(output, data.y_train[batch])
        loss = loss + get_kl_loss(net) / len(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lambda x: torch.stack([net(x) for _ in range(PREDICT_SAMPLES)])


def bayesian_torch_available() -> bool:
    try:
        import bayesian_torch.models.dnn_to_bnn  # noqa: F401
    except ImportError:
        return False
    return True


# -------------------------------------------------------------------- scoring
def evaluate(predict: Predictor, data: Data, bayesian: bool) -> dict[str, object]:
    """Test metrics, and OOD AUROCs on the combined OOD set and per kind."""
    with torch.no_grad():
        logits_in = predict(data.x_test)
        logits_out = {kind: predict(x) for kind, x in data.x_ood.items()}
    probabilities = uncertainty.predictive_probabilities(logits_in)
    labels = data.y_test
    scores: dict[str, object] = {
        "accuracy": metrics.accuracy(probabilities, labels).item(),
        "nll": metrics.negative_log_likelihood(probabilities, labels).item(),
        "brier": metrics.brier_score(probabilities, labels).item(),
        "ece": metrics.expected_calibration_error(
            probabilities, labels, n_bins=ECE_BINS
        ).item(),
    }
    measures = {"entropy": uncertainty.predictive_entropy}
    if bayesian:
        measures["mi"] = uncertainty.mutual_information
    for name in ("entropy", "mi"):
        measure = measures.get(name)
        score_in = None if measure is None else measure(logits_in)
        score_out = {
            kind: None if measure is None else measure(logits)
            for kind, logits in logits_out.items()
        }
        for kind in ("", *score_out):
            key = f"auroc_{name}_{kind}" if kind else f"auroc_{name}"
            if measure is None:
                scores[key] = None
                continue
            out = score_out[kind] if kind else torch.cat(list(score_out.values()))
            scores[key] = metrics.ood_auroc(score_in, out).item()
    return scores


def run_method(
    method: str, mode: str, seed: int, data: Data, quick: bool
) -> dict[str, object]:
    epochs = QUICK_EPOCHS if quick else EPOCHS
    recipe_epochs = QUICK_EPOCHS if quick else RECIPE["epochs"]
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    if method == "deterministic":
        predict = train_deterministic(
            data, seed, QUICK_EPOCHS if quick else DETERMINISTIC_EPOCHS
        )
    elif method == "torch_blue defaults":
        predict = train_torch_blue(
            data, seed, default_model(), epochs, DEFAULT_SAMPLES, LEARNING_RATE
        )
    elif method == "bayesian-torch defaults":
        predict = train_bayesian_torch(data, seed, epochs)
    elif mode == "torch_blue":
        predict = train_torch_blue(
            data,
            seed,
            recipe_model(),
            recipe_epochs,
            RECIPE["samples"],
            RECIPE["learning_rate"],
            RECIPE["heat"],
        )
    else:
        predict = train_pyro(
            data,
            seed,
            recipe_model(),
            recipe_epochs,
            RECIPE["particles"],
            RECIPE["learning_rate"],
            RECIPE["heat"],
        )
    scores = evaluate(predict, data, bayesian=method != "deterministic")
    seconds = time.perf_counter() - start
    return {"method": method, "mode": mode, "seed": seed, **scores, "seconds": seconds}


METHODS = [
    ("deterministic", "-"),
    ("torch_blue defaults", "torch_blue"),
    ("bayesian-torch defaults", "-"),
    ("ours (recipe)", "torch_blue"),
    ("ours (recipe)", "pyro"),
]


def run(
    seeds: int = 5, quick: bool = False, validation: bool = False
) -> list[dict[str, object]]:
    """One row per (method, mode, seed): the metrics of ``evaluate`` and seconds.

    ``quick``: one seed, 10 epochs (a smoke run). ``validation``: train on 80 % of
    the training digits and score on the other 20 % (the OOD images made from
    them); the test digits stay unused.
    """
    torch.set_num_threads(1)
    if quick:
        seeds = 1
    methods = list(METHODS)
    if not bayesian_torch_available():
        print(
            "bayesian-torch is not importable; skipping it "
            "(pip install --no-deps bayesian-torch==0.5.0)",
            file=sys.stderr,
        )
        methods.remove(("bayesian-torch defaults", "-"))
    rows = []
    for seed in range(seeds):
        data = Data(seed, validation=validation)
        for method, mode in methods:
            rows.append(run_method(method, mode, seed, data, quick))
    return rows


# ---------------------------------------------------------------------- table
COLUMNS = [
    ("accuracy", "accuracy"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("ece", "ECE"),
    ("auroc_entropy", "OOD AUROC entropy"),
    ("auroc_mi", "OOD AUROC mutual information"),
]


def mean_stderr(values: Sequence[float]) -> str:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return f"{mean:.4f}"
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return f"{mean:.4f} ± {math.sqrt(variance / n):.4f}"


def _groups(
    rows: Sequence[dict[str, object]],
) -> dict[tuple[object, object], list[dict[str, object]]]:
    groups: dict[tuple[object, object], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["mode"]), []).append(row)
    return groups


def _markdown(
    rows: Sequence[dict[str, object]], columns: Sequence[tuple[str, str]]
) -> str:
    header = ["method", "mode", *(title for _, title in columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(columns)) + "|",
    ]
    for (method, mode), group in _groups(rows).items():
        cells = [str(method), str(mode)]
        for key, _ in columns:
            values = [float(row[key]) for row in group if row.get(key) is not None]
            if key == "seconds":
                cells.append(f"{sum(values) / len(values):.1f}")
            else:
                cells.append(mean_stderr(values) if values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: Sequence[dict[str, object]]) -> str:
    """Markdown table: mean ± standard error over the seeds, per method and mode."""
    return _markdown(rows, COLUMNS)


def details(rows: Sequence[dict[str, object]]) -> str:
    """Markdown table: OOD AUROC per kind of OOD image, and seconds per seed."""
    columns = [
        ("auroc_entropy_rotated", "AUROC entropy, rotated"),
        ("auroc_entropy_noisy", "AUROC entropy, noisy"),
        ("auroc_mi_rotated", "AUROC MI, rotated"),
        ("auroc_mi_noisy", "AUROC MI, noisy"),
        ("seconds", "seconds"),
    ]
    return _markdown(rows, columns)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=5, help="default: 5")
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 10 epochs: a smoke run"
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="score on a validation split of the training digits (for tuning)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.seeds, args.quick, args.validation)
    total = time.perf_counter() - start
    print(f"recipe: {RECIPE}\n")
    print(table(rows))
    print()
    print(details(rows))
    seeds = len({row["seed"] for row in rows})
    print(f"\n{seeds} seed(s), {total:.0f} s in total")


if __name__ == "__main__":
    main()
