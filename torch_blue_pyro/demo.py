"""Train a Bayesian and a deterministic MLP on digits, then show them shifted digits.

The demo trains two networks of the same shape (64-``HIDDEN_UNITS``-10 with a ReLU)
on scikit-learn's digits:

*deterministic*
    a plain ``nn.Sequential``, cross-entropy, Adam;
*Bayesian*
    a ``VISequential`` of ``VILinear`` layers with the settings of
    :data:`RECOMMENDED`, trained on the negative ELBO of
    ``KullbackLeiblerLoss`` (a ``Categorical`` predictive distribution) by
    :class:`~torch_blue_pyro.optim.VariationalOnlineNewton`, natural-gradient
    steps on the layers' Gaussian factors.

Both are scored on the held-out digits (accuracy, the negative log-likelihood of
the predictive probabilities, the expected calibration error over 15 bins) and on
how well their uncertainty detects *shifted* test digits that neither net has seen
in training: the test images rotated by 90 degrees, with Gaussian noise, flipped
left-right and inverted. The detection is scored by the AUROC
(:func:`~torch_blue_pyro.metrics.ood_auroc`): the chance that a shifted digit
gets a higher uncertainty score than an ordinary test digit, 0.5 for a score that
cannot tell them apart, 1 for one that always can. The score is the predictive
entropy for both nets and, for the Bayesian net, also the mutual information of
the label and the weights (:mod:`torch_blue_pyro.uncertainty`), the part of the
uncertainty that comes from not knowing the weights.

What it shows: the two nets are about equally accurate, but the deterministic net
is confident on inputs unlike its training data (a rotated digit still looks like
*some* digit to it; it is even surer of rotated digits than of real ones, an AUROC
well below 0.5), while the Bayesian net's weight samples disagree there. Its
mutual information detects the rotated digits clearly better than the
deterministic net's entropy does: the Bayesian net knows what it has not seen.

Run it with::

    python -m torch_blue_pyro.demo

It takes well under a minute on one CPU thread (10-20 s on a shared 2-core
machine). scikit-learn provides the data set (bundled with it, no download); it is
an optional dependency (``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torch_blue_pyro import metrics, uncertainty, vi
from torch_blue_pyro.optim import VariationalOnlineNewton

# The recommended settings of a Bayesian MLP trained by VariationalOnlineNewton
# (see build_model, recommended_training and train_bayesian for where each goes).
RECOMMENDED: dict[str, Any] = {
    "variational_std": 0.1,  # MeanFieldNormal(std=...), times 1/sqrt(fan_in)
    "prior_std": 8.0,  # MeanFieldNormal(std=...) with rescale_prior=True
    "heat": 0.01,  # KullbackLeiblerLoss(heat=...) and the optimizer's heat
    "lr": 0.003,  # VariationalOnlineNewton(lr=...)
    "precision_lr": 0.01,  # VariationalOnlineNewton(precision_lr=...)
    "trust_radius": 0.3,  # VariationalOnlineNewton(trust_radius=...)
    "samples": 10,  # weight samples per training step
    "epochs": 100,
    "batch_size": 128,
}

HIDDEN_UNITS = 256
DETERMINISTIC_EPOCHS = 50
DETERMINISTIC_LR = 3e-3
EVALUATION_SAMPLES = 32
TEST_FRACTION = 0.25
SIDE = 8  # the digits are SIDE x SIDE images
MAX_PIXEL = 16.0  # scikit-learn's digits have pixels 0..16
MIN_PIXEL_STD = 0.1  # standardization: a (nearly) blank border pixel's std
NOISE_STD = 0.5  # the noisy digits' Gaussian noise (pixels in [0, 1])
ECE_BINS = 15

# A shift maps (N, 8, 8) images with pixels in [0, 1] and a generator to shifted
# (N, 8, 8) images in [0, 1].
Shift = Callable[[Tensor, torch.Generator], Tensor]


def _noisy(images: Tensor, generator: torch.Generator) -> Tensor:
    """Add Gaussian noise of ``NOISE_STD`` to every pixel, clipped to [0, 1]."""
    noise = NOISE_STD * torch.randn(images.shape, generator=generator)
    return (images + noise).clamp(0.0, 1.0)


SHIFTS: dict[str, Shift] = {
    "rotated": lambda x, g: torch.rot90(x, 1, dims=(1, 2)),
    "noisy": _noisy,
    "flipped": lambda x, g: torch.flip(x, dims=(2,)),
    "inverted": lambda x, g: 1.0 - x,
}


@dataclass(frozen=True)
class Digits:
    """The split digits, standardized with the training part's statistics.

    Attributes
    ----------
    x_train, y_train : Tensor
        Training features (N, 64) and labels (N,).
    x_test, y_test : Tensor
        Test features and labels.
    x_shifted : dict of str to Tensor
        The test digits shifted by each of :data:`SHIFTS`, in its order, as
        features of shape (N_test, 64).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_shifted: dict[str, Tensor]


def _positive_int(text: str) -> int:
    """An ``argparse`` type: a positive integer."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line options.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments; ``None`` reads ``sys.argv``.

    Returns
    -------
    argparse.Namespace
        The options ``epochs``, ``deterministic_epochs``, ``samples``,
        ``train_samples``, ``seed`` and ``threads``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m torch_blue_pyro.demo",
        description="Train a Bayesian and a deterministic MLP on scikit-learn's "
        "digits; compare their accuracy, calibration and detection of shifted "
        "digits.",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=RECOMMENDED["epochs"],
        help="training epochs of the Bayesian net (default: %(default)s)",
    )
    parser.add_argument(
        "--deterministic-epochs",
        type=_positive_int,
        default=DETERMINISTIC_EPOCHS,
        help="training epochs of the deterministic net (default: %(default)s)",
    )
    parser.add_argument(
        "--samples",
        type=_positive_int,
        default=EVALUATION_SAMPLES,
        help="weight samples of the Bayesian net's predictions (default: %(default)s)",
    )
    parser.add_argument(
        "--train-samples",
        type=_positive_int,
        default=RECOMMENDED["samples"],
        help="weight samples per training step (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="split, noise and torch seed (default: 0)"
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch threads (default: 1; the model is too small to gain from more, "
        "and extra threads stall when another process holds a core)",
    )
    return parser.parse_args(argv)


def load_digits_split(seed: int) -> Digits:
    """Load the digits, split them, make the shifted test digits and standardize.

    The split is stratified and fixed by ``seed``. The pixels are scaled from
    0..16 to [0, 1]; the shifts of :data:`SHIFTS` are applied to the test images
    (the noise drawn from a generator fixed by ``seed``); then every set is
    standardized with the training digits' per-pixel mean and standard deviation,
    the latter at least ``MIN_PIXEL_STD`` (a border pixel that is almost always
    blank has a std near 0), as in ``benchmarks/uncertainty_classification.py``.

    Parameters
    ----------
    seed : int
        Random state of the train/test split and of the noise.

    Returns
    -------
    Digits
        float32 features of shape (N, 64) and int64 labels of shape (N,).

    Raises
    ------
    SystemExit
        If scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise SystemExit(
            "The demo needs scikit-learn for its data set: pip install scikit-learn"
        ) from error

    features, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(features, dtype=torch.float32) / MAX_PIXEL
    y = torch.as_tensor(labels, dtype=torch.int64)
    train, test = train_test_split(
        torch.arange(len(y)).numpy(),
        test_size=TEST_FRACTION,
        random_state=seed,
        stratify=labels,
    )
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    images = x[test].reshape(-1, SIDE, SIDE)
    shifted = {}
    for offset, (kind, shift) in enumerate(SHIFTS.items()):
        # One generator per kind: adding a kind leaves the others unchanged.
        generator = torch.Generator().manual_seed(10_000 + 100 * seed + offset)
        shifted[kind] = shift(images, generator).reshape(len(test), -1)

    mean = x[train].mean(dim=0)
    std = x[train].std(dim=0).clamp_min(MIN_PIXEL_STD)

    def standardize(pixels: Tensor) -> Tensor:
        return (pixels - mean) / std

    return Digits(
        x_train=standardize(x[train]),
        y_train=y[train],
        x_test=standardize(x[test]),
        y_test=y[test],
        x_shifted={kind: standardize(pixels) for kind, pixels in shifted.items()},
    )


def build_model(
    n_features: int, n_classes: int, hidden: int = HIDDEN_UNITS
) -> vi.VISequential:
    r"""Build the Bayesian MLP ``n_features``-``hidden``-``n_classes``.

    Both ``VILinear`` layers get the variational distribution
    ``MeanFieldNormal(std=variational_std)`` (the initial stds, times the Kaiming
    factor :math:`1/\sqrt{\text{fan\_in}}`) and the prior
    ``MeanFieldNormal(std=prior_std)`` with ``rescale_prior=True``: a prior std of
    :math:`\text{prior\_std}/\sqrt{3\,\text{fan\_in}}`. The values come from
    :data:`RECOMMENDED`.

    Parameters
    ----------
    n_features : int
        Number of input features.
    n_classes : int
        Number of classes (output logits).
    hidden : int, default: HIDDEN_UNITS
        Width of the hidden layer.

    Returns
    -------
    vi.VISequential
        The model, returning log probabilities for training.
    """
    settings: dict[str, Any] = {
        "variational_distribution": vi.distributions.MeanFieldNormal(
            std=RECOMMENDED["variational_std"]
        ),
        "prior": vi.distributions.MeanFieldNormal(std=RECOMMENDED["prior_std"]),
        "rescale_prior": True,
    }
    return vi.VISequential(
        vi.VILinear(n_features, hidden, **settings),
        nn.ReLU(),
        vi.VILinear(hidden, n_classes, **settings),
    )


def build_deterministic(
    n_features: int, n_classes: int, hidden: int = HIDDEN_UNITS
) -> nn.Sequential:
    """Build the plain MLP of the same shape as :func:`build_model`'s.

    Parameters
    ----------
    n_features : int
        Number of input features.
    n_classes : int
        Number of classes (output logits).
    hidden : int, default: HIDDEN_UNITS
        Width of the hidden layer.

    Returns
    -------
    nn.Sequential
        ``Linear -> ReLU -> Linear``, returning logits.
    """
    return nn.Sequential(
        nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
    )


def recommended_training(
    model: vi.VISequential, dataset_size: int
) -> tuple[vi.KullbackLeiblerLoss, VariationalOnlineNewton]:
    """The loss and the optimizer of the recommended settings for ``model``.

    Parameters
    ----------
    model : vi.VISequential
        The model from :func:`build_model`.
    dataset_size : int
        The number of training examples, the loss's ``dataset_size``.

    Returns
    -------
    tuple of vi.KullbackLeiblerLoss and VariationalOnlineNewton
        ``KullbackLeiblerLoss(Categorical(), dataset_size, heat=RECOMMENDED["heat"])``
        and ``VariationalOnlineNewton`` with the ``lr``, ``precision_lr``,
        ``trust_radius`` and ``heat`` of :data:`RECOMMENDED`.
    """
    heat = RECOMMENDED["heat"]
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=dataset_size, heat=heat
    )
    optimizer = VariationalOnlineNewton(
        model,
        lr=RECOMMENDED["lr"],
        precision_lr=RECOMMENDED["precision_lr"],
        trust_radius=RECOMMENDED["trust_radius"],
        heat=heat,
    )
    return loss_fn, optimizer


def _fit(
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[Tensor], Tensor],
    n: int,
    epochs: int,
    generator: torch.Generator,
) -> float:
    """Minimize ``batch_loss`` over minibatches of a fresh permutation per epoch.

    Returns the mean of the last epoch's batch losses.
    """
    size = RECOMMENDED["batch_size"]
    batches = [
        batch
        for _ in range(epochs)
        for batch in torch.randperm(n, generator=generator).split(size)
    ]
    per_epoch = len(batches) // max(epochs, 1)
    last_losses: list[float] = []
    for step, batch in enumerate(batches):
        loss = batch_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= len(batches) - per_epoch:
            last_losses.append(loss.item())
    return sum(last_losses) / max(len(last_losses), 1)


def train_bayesian(
    model: vi.VISequential,
    x: Tensor,
    y: Tensor,
    epochs: int,
    samples: int,
    generator: torch.Generator,
) -> float:
    """Train the Bayesian net by natural-gradient steps on the negative ELBO.

    With the loss and optimizer of :func:`recommended_training`, on minibatches of
    ``RECOMMENDED["batch_size"]``.

    Parameters
    ----------
    model : vi.VISequential
        The model from :func:`build_model`, with ``return_log_probs`` enabled.
    x, y : Tensor
        Training features (N, D) and labels (N,).
    epochs : int
        Passes over the training set.
    samples : int
        Weight samples per step.
    generator : torch.Generator
        Draws the minibatch order.

    Returns
    -------
    float
        The last epoch's mean loss per training example (the negative ELBO
        divided by ``len(x)``).
    """
    loss_fn, optimizer = recommended_training(model, len(x))

    def batch_loss(batch: Tensor) -> Tensor:
        return loss_fn(model(x[batch], samples=samples), y[batch])

    return _fit(optimizer, batch_loss, len(x), epochs, generator) / len(x)


def train_deterministic(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int, generator: torch.Generator
) -> float:
    """Train the plain net with cross-entropy and Adam (learning rate 3e-3).

    Parameters
    ----------
    model : nn.Module
        The model from :func:`build_deterministic`.
    x, y : Tensor
        Training features (N, D) and labels (N,).
    epochs : int
        Passes over the training set, in minibatches of
        ``RECOMMENDED["batch_size"]``.
    generator : torch.Generator
        Draws the minibatch order.

    Returns
    -------
    float
        The last epoch's mean cross-entropy.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=DETERMINISTIC_LR)

    def batch_loss(batch: Tensor) -> Tensor:
        return nn.functional.cross_entropy(model(x[batch]), y[batch])

    return _fit(optimizer, batch_loss, len(x), epochs, generator)


def sampled_logits(model: nn.Module, x: Tensor, samples: int) -> Tensor:
    """The model's logits of ``x`` with a leading sample dimension.

    Parameters
    ----------
    model : nn.Module
        A ``VISequential`` (``return_log_probs`` is turned off for the prediction
        and restored afterwards) or a plain module (one "sample").
    x : Tensor
        Features of shape (N, D).
    samples : int
        Number of weight samples of a ``VISequential``.

    Returns
    -------
    Tensor
        Logits of shape (S, N, C), a plain ``Tensor``; ``S`` is 1 for a plain
        module.
    """
    with torch.no_grad():
        if not isinstance(model, vi.VISequential):
            return model(x).unsqueeze(0)
        return_log_probs = model.return_log_probs
        model.return_log_probs = False
        try:
            logits = model(x, samples=samples)
        finally:
            model.return_log_probs = return_log_probs
    return logits.as_subclass(Tensor)


def evaluate(
    model: nn.Module, data: Digits, samples: int, mutual_information: bool
) -> dict[str, float]:
    """Score a trained net on the test digits and on detecting the shifted ones.

    Parameters
    ----------
    model : nn.Module
        The trained Bayesian or deterministic net.
    data : Digits
        The split digits.
    samples : int
        Weight samples of a Bayesian net.
    mutual_information : bool
        Also score the detection by the mutual information (meaningful for the
        Bayesian net only: a single deterministic "sample" has none).

    Returns
    -------
    dict of str to float
        ``accuracy``, ``nll`` and ``ece`` on the test digits; per shift kind
        ``auroc_entropy_<kind>`` and, if ``mutual_information``,
        ``auroc_mi_<kind>``.
    """
    test = uncertainty.classification_uncertainty(
        sampled_logits(model, data.x_test, samples)
    )
    results = {
        "accuracy": metrics.accuracy(test.probabilities, data.y_test).item(),
        "nll": metrics.negative_log_likelihood(test.probabilities, data.y_test).item(),
        "ece": metrics.expected_calibration_error(
            test.probabilities, data.y_test, n_bins=ECE_BINS
        ).item(),
    }
    for kind, x in data.x_shifted.items():
        shifted = uncertainty.classification_uncertainty(
            sampled_logits(model, x, samples)
        )
        results[f"auroc_entropy_{kind}"] = metrics.ood_auroc(
            test.total, shifted.total
        ).item()
        if mutual_information:
            results[f"auroc_mi_{kind}"] = metrics.ood_auroc(
                test.epistemic, shifted.epistemic
            ).item()
    return results


def print_table(results: dict[str, dict[str, float]], kinds: Sequence[str]) -> None:
    """Print one row per model and the AUROC of each shift kind.

    Parameters
    ----------
    results : dict of str to dict of str to float
        As :func:`main` returns them.
    kinds : sequence of str
        The shift kinds, in column order.
    """
    head = f"{'model':<14}{'accuracy':>9}{'NLL':>7}{'ECE':>7}{'train s':>9}   "
    print(head + f"{'AUROC by':<10}" + "".join(f"{kind:>10}" for kind in kinds))
    rows = [  # (model, its name in the first column, score, key prefix)
        ("deterministic", "deterministic", "entropy", "auroc_entropy"),
        ("bayesian", "Bayesian", "entropy", "auroc_entropy"),
        ("bayesian", "", "mut. info", "auroc_mi"),
    ]
    for key, name, score, prefix in rows:
        model = results[key]
        left = " " * len(head)
        if name:
            left = (
                f"{name:<14}{model['accuracy']:>9.3f}{model['nll']:>7.3f}"
                f"{model['ece']:>7.3f}{model['train_seconds']:>9.1f}   "
            )
        aurocs = "".join(f"{model[f'{prefix}_{kind}']:>10.3f}" for kind in kinds)
        print(left + f"{score:<10}" + aurocs)
    print(
        "AUROC: the chance that a shifted digit gets a higher uncertainty score than "
        "a test digit (0.5: chance, 1: perfect detection)."
    )


def train_and_evaluate(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train both nets on the digits, evaluate them and print the table.

    Parameters
    ----------
    args : argparse.Namespace
        The options from :func:`parse_args`; ``threads`` is applied by :func:`main`.

    Returns
    -------
    dict of str to dict of str to float
        The metrics described in :func:`main`.
    """
    data = load_digits_split(args.seed)
    n_features = data.x_train.shape[1]
    n_classes = int(data.y_train.max()) + 1
    print(
        f"digits: {len(data.x_train)} train / {len(data.x_test)} test, shifted test "
        f"digits: {', '.join(data.x_shifted)}; torch threads: "
        f"{torch.get_num_threads()}"
    )

    results: dict[str, dict[str, float]] = {}
    torch.manual_seed(args.seed)
    deterministic = build_deterministic(n_features, n_classes)
    start = time.perf_counter()
    loss = train_deterministic(
        deterministic,
        data.x_train,
        data.y_train,
        args.deterministic_epochs,
        torch.Generator().manual_seed(20_000 + args.seed),
    )
    seconds = time.perf_counter() - start
    print(
        f"deterministic: {args.deterministic_epochs} epochs of Adam in {seconds:.1f} "
        f"s, final cross-entropy {loss:.4f}"
    )
    results["deterministic"] = {
        **evaluate(deterministic, data, 1, mutual_information=False),
        "train_seconds": seconds,
        "final_loss": loss,
    }

    torch.manual_seed(args.seed)
    bayesian = build_model(n_features, n_classes)
    start = time.perf_counter()
    loss = train_bayesian(
        bayesian,
        data.x_train,
        data.y_train,
        args.epochs,
        args.train_samples,
        torch.Generator().manual_seed(20_000 + args.seed),
    )
    seconds = time.perf_counter() - start
    print(
        f"Bayesian: {args.epochs} epochs of VariationalOnlineNewton "
        f"({args.train_samples} samples per step) in {seconds:.1f} s, final "
        f"negative ELBO per example {loss:.4f}"
    )
    results["bayesian"] = {
        **evaluate(bayesian, data, args.samples, mutual_information=True),
        "train_seconds": seconds,
        "final_loss": loss,
    }

    print(f"test digits ({args.samples} weight samples for the Bayesian net):")
    print_table(results, list(data.x_shifted))
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the demo: train both nets, evaluate them and print the table.

    The torch thread count is set to ``--threads`` for the run and restored
    afterwards, so that a caller (e.g. a test) keeps its own setting.

    Parameters
    ----------
    argv : sequence of str, optional
        Command line arguments, e.g. ``["--epochs", "2"]``; ``None`` reads
        ``sys.argv``.

    Returns
    -------
    dict of str to dict of str to float
        ``{"deterministic": {...}, "bayesian": {...}}``, each with ``accuracy``,
        ``nll`` and ``ece`` on the test digits, ``auroc_entropy_<kind>`` for each
        shift kind of :data:`SHIFTS` (``rotated``, ``noisy``, ``flipped``,
        ``inverted``: the AUROC of detecting those digits by the predictive
        entropy), ``train_seconds`` and ``final_loss`` (the last epoch's mean
        cross-entropy, or negative ELBO per training example); the Bayesian net's
        also ``auroc_mi_<kind>`` (detection by the mutual information).
    """
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return train_and_evaluate(args)
    finally:
        torch.set_num_threads(previous_threads)


if __name__ == "__main__":
    main()
