"""Which running variance gives the better predictive: batch norm under sampled weights.

In training each weight sample's activations are normalized with their own batch
statistics, and the running statistics move once per step (see
``torch_blue_pyro/vi/normalization.py``). The running mean moves towards the mean of
the ``S`` batch means; for the running variance there are two candidates:

* **within** (what the library does): the mean of the ``S`` per-sample batch
  variances, i.e. the average of the ``S`` per-sample updates. In eval() each
  sample then sees the spread it was normalized with in training.
* **pooled**: the variance of all ``S x B`` rows, i.e. the within-sample variance
  plus the variance of the ``S`` batch means across samples. In eval() the samples'
  outputs together then have unit variance, as in training.

Both are trained identically (the running statistics do not enter training), so
one training run per seed serves both: the network is trained with the library's
semantics while a copy of each batch norm's running variance is kept the pooled
way, and eval() is scored with each.

Data: scikit-learn's digits (8x8), 70/30 split per seed. Model: a LeNet-style CNN
with ``BatchNorm2d`` after each convolution and ``BatchNorm1d`` in the head,
trained with ``KullbackLeiblerLoss`` (``samples=4``, Adam). A deterministic network
of the same layout is the reference. Metrics on the test split, predictive of 32
samples: accuracy, NLL, ECE (15 bins).

Run
---
    python benchmarks/batchnorm_semantics.py            # 5 seeds, about a minute
    python benchmarks/batchnorm_semantics.py --seeds 2 --epochs 5
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torch_blue_pyro import metrics, vi
from torch_blue_pyro.vi import normalization

SAMPLES = 4
EVAL_SAMPLES = 32


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--std",
        type=float,
        default=1.0,
        help="initial variational std (MeanFieldNormal)",
    )
    return parser.parse_args(argv)


def digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("scikit-learn is missing: pip install -e '.[dev]'") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.7 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def network(bayesian: bool, std: float) -> nn.Module:
    if bayesian:
        kwargs = {"variational_distribution": vi.distributions.MeanFieldNormal(std=std)}
        conv, linear, container = (
            lambda *a: vi.VIConv2d(*a, padding=1, **kwargs),
            lambda *a: vi.VILinear(*a, **kwargs),
            vi.VISequential,
        )
    else:
        conv, linear, container = (
            lambda *a: nn.Conv2d(*a, padding=1),
            nn.Linear,
            nn.Sequential,
        )
    return container(
        conv(1, 16, 3),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(16, 32, 3),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        linear(32 * 2 * 2, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        linear(64, 10),
    )


class PooledVariance:
    """Keeps, next to each batch norm's running variance, the pooled alternative.

    Installed around the library's commit of the running statistics: from the
    per-sample rows ``(1 - m) r + m b_s`` it recovers the samples' batch means and
    variances and moves the pooled copy towards the mean variance plus the variance
    of the means across samples.
    """

    def __init__(self) -> None:
        self.pooled: dict[int, Tensor] = {}
        self._commit = normalization._Tracked.commit
        keeper = self

        def commit(tracked: normalization._Tracked) -> None:
            module = tracked.module
            before = keeper.pooled.get(id(module), module.running_var.clone())
            counter = int(tracked.counter) if tracked.counter is not None else 0
            momentum = module.momentum if module.momentum is not None else 1 / counter
            means, variances = (
                tracked.stacks["running_mean"],
                tracked.stacks["running_var"],
            )
            batch_variance = (
                variances.mean(0) - (1 - momentum) * module.running_var
            ) / momentum
            spread = means.var(0, unbiased=False) / momentum**2
            keeper.pooled[id(module)] = (1 - momentum) * before + momentum * (
                batch_variance + spread
            )
            keeper._commit(tracked)

        normalization._Tracked.commit = commit  # type: ignore[method-assign]

    def __enter__(self) -> PooledVariance:
        return self

    def __exit__(self, *exc: object) -> None:
        normalization._Tracked.commit = self._commit  # type: ignore[method-assign]

    def swap_into(self, model: nn.Module) -> None:
        """Replace each running variance by its pooled copy."""
        for module in model.modules():
            if id(module) in self.pooled:
                module.running_var.copy_(self.pooled[id(module)])


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, bayesian: bool) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=len(y)
    )
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(64):
            if bayesian:
                loss = loss_fn(model(x[batch], samples=SAMPLES), y[batch])
            else:
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def scores(model: nn.Module, x: Tensor, y: Tensor, bayesian: bool) -> dict[str, float]:
    model.eval()
    if bayesian:
        torch.manual_seed(123)
        probabilities = model(x, samples=EVAL_SAMPLES).softmax(-1).mean(0)
    else:
        probabilities = model(x).softmax(-1)
    return {
        "accuracy": float(metrics.accuracy(probabilities, y)),
        "NLL": float(metrics.negative_log_likelihood(probabilities, y)),
        "ECE": float(metrics.expected_calibration_error(probabilities, y)),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, list[dict[str, float]]] = {
        "deterministic": [],
        "within (library)": [],
        "pooled": [],
    }
    for seed in range(args.seeds):
        x, y, x_test, y_test = digits(seed)
        torch.manual_seed(seed)
        deterministic = network(bayesian=False, std=args.std)
        train(deterministic, x, y, args.epochs, bayesian=False)
        results["deterministic"].append(scores(deterministic, x_test, y_test, False))
        torch.manual_seed(seed)
        bayesian = network(bayesian=True, std=args.std)
        with PooledVariance() as pooled:
            train(bayesian, x, y, args.epochs, bayesian=True)
        results["within (library)"].append(scores(bayesian, x_test, y_test, True))
        pooled.swap_into(bayesian)
        results["pooled"].append(scores(bayesian, x_test, y_test, True))
    print(
        f"digits, {args.seeds} seeds, {args.epochs} epochs, samples={SAMPLES}, "
        f"initial std {args.std}; mean (std) over seeds\n"
    )
    print("| running variance | accuracy | NLL | ECE |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        cells = []
        for metric in ("accuracy", "NLL", "ECE"):
            values = [run[metric] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ({spread:.4f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
