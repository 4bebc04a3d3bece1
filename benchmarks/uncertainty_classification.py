"""Classification uncertainty on digits: calibration and OOD detection, per method.

What is measured
----------------
scikit-learn's ``load_digits`` (1797 images of 8x8 pixels, divided by 16 to lie in
[0, 1]), split per seed into 70 % training and 30 % test digits (stratified,
``train_test_split(..., random_state=seed)``); every pixel standardized with the
training digits' mean and std (at least ``MIN_PIXEL_STD``). Every method runs on
two tasks, i.e. two networks, fed the same standardized 64 pixels:

*mlp*
    64-256-10 with a ReLU: ``Linear(64, 256) -> ReLU -> Linear(256, 10)``;
*cnn*
    ``Unflatten(-1, (1, 8, 8)) -> Conv2d(1, 8, 3, padding=1) -> ReLU ->
    MaxPool2d(2) -> Conv2d(8, 16, 3, padding=1) -> ReLU -> Flatten ->
    Linear(16 * 4 * 4, 10)``; the Bayesian versions of ours use ``vi.VIConv2d``
    and ``vi.VILinear`` in a ``vi.VISequential`` with the same settings as the
    MLP's layers.

Every method trains by minibatches of 128 (a fresh permutation per epoch, fixed by
the seed), with Adam at learning rate 3e-3 for 100 epochs unless said:

*deterministic*
    the plain ``nn.Sequential``, cross-entropy, ``Task.deterministic_epochs``
    epochs (its best NLL on the validation split among 20, 30, 50 and 100: 50 for
    both tasks, see ``TASKS``);
*MC dropout* (Gal & Ghahramani, 2016)
    the plain network with ``nn.Dropout(p)`` before the last layer (the CNN also
    after its first ReLU), cross-entropy, 100 epochs; it predicts with dropout
    on, 32 stochastic forward passes. ``p`` chosen on the validation split among
    0.05, 0.1, 0.2, 0.3 (see ``DROPOUT``: 0.3 for the MLP, 0.1 for the CNN);
*deep ensemble (5)* (Lakshminarayanan et al., 2017)
    five deterministic nets trained as the *deterministic* row, member ``k`` with
    the seed ``seed + 1000 k`` (initialization and minibatch order; member 0 is
    the deterministic row's net); the five softmax outputs are the five "samples"
    of its predictive (their mean) and of its mutual information;
*IVON* (Shen et al., 2024)
    the plain network trained by ``ivon.IVON(net.parameters(), lr=...,
    ess=len(train), hess_init=...)`` (package ``ivon-opt``) as its README shows:
    per step ``mc_samples`` backward passes, each inside
    ``optimizer.sampled_params(train=True)``, then ``optimizer.step()``; it
    predicts with the mean softmax of 32 ``optimizer.sampled_params()`` passes.
    ``lr`` and ``hess_init`` chosen on the validation split (see ``IVON``: lr 1
    for both tasks, hess_init 3 for the MLP and 1 for the CNN); beta1 0.9, beta2
    0.99999, weight_decay 1e-4 (the package's defaults), one MC sample per step;
*last-layer Laplace* (Daxberger et al., 2021)
    laplace-torch's ``Laplace(net, "classification",
    subset_of_weights="last_layer", hessian_structure="kron")`` of the
    *deterministic* row's net (the same training), ``fit`` on the training digits
    (batches of 128), the prior precision by
    ``optimize_prior_precision(method="marglik")``; it predicts with
    ``la.predictive_samples(x, pred_type="glm", n_samples=32)``: 32 draws of the
    linearized network's logits, each through the softmax; their mean is the
    predictive (the MC approximation of ``pred_type="glm", link_approx="mc"``),
    and they are the samples of its mutual information;
*torch_blue defaults*
    what a script migrated from torch_blue gets: ``vi.VISequential`` of
    ``vi.VILinear`` (and ``vi.VIConv2d``) layers with every setting at its
    default (``MeanFieldNormal`` variational distribution with std 1 before the
    Kaiming scaling by 1/sqrt(fan_in), ``MeanFieldNormal(0, 1)`` prior),
    ``vi.KullbackLeiblerLoss(Categorical(), dataset_size=len(train))`` (heat 1),
    ``samples=10`` per step;
*bayesian-torch defaults*
    ``dnn_to_bnn`` of the plain network with the ``const_bnn_prior_parameters`` of
    bayesian-torch's README (prior N(0, 1), posterior mean init 0, rho init -3,
    "Reparameterization", no MOPED), trained as its README shows: cross-entropy of
    one forward pass plus ``get_kl_loss(model) / batch_size``.
    (Its ``kl_div`` returns the *mean* KL per weight, so the KL term is tiny and
    the posterior stays close to its initial std.) It predicts with 32 forward
    passes;
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
    term as ``KullbackLeiblerLoss(heat=...)`` does;
*ours (natural gradient)*, torch_blue and Pyro mode
    as the two recipe rows, with the settings of ``NATURAL_GRADIENT`` and
    ``torch_blue_pyro.optim.VariationalOnlineNewton(net, lr=..., precision_lr=...,
    momentum=..., damping=..., trust_radius=...)`` in place of Adam (Pyro mode:
    ``PyroVariationalOnlineNewton(net, **the same)`` as SVI's optimizer).

Our Bayesian networks predict with 32 weight samples (``net(x, samples=32)``, also
for the networks trained in Pyro mode, which are the same modules); every
predictive is the mean of its samples' softmax. On the test digits: accuracy,
negative log-likelihood (NLL), Brier score and the expected calibration error
(ECE, 15 equal-width bins) of ``torch_blue_pyro.metrics``.

Out-of-distribution (OOD) detection: ``SHIFTS`` makes eight kinds of OOD images
from the test digits' [0, 1] pixels, one image per test digit and kind (each then
standardized as the digits are); in-distribution are the test digits:

``rotated``   rotated by 90 degrees (``torch.rot90`` on the 8x8 grid);
``noisy``     Gaussian noise of std 0.5 added to every pixel, clipped to [0, 1];
``flipped``   mirrored left-right;
``shifted``   moved 2 pixels right and 2 down, the vacated pixels 0;
``blurred``   a 3x3 binomial blur (kernel [1, 2, 1]^T [1, 2, 1] / 16, zero padding);
``inverted``  1 - x;
``permuted``  the 64 pixels in a fixed random order (one permutation per seed);
``uniform``   not a digit: every pixel uniform in [0, 1].

The noise, permutation and uniform images are fixed by the seed. The AUROC
(``metrics.ood_auroc``) of the predictive entropy
(``uncertainty.predictive_entropy``) and, for every method with samples (all but
the deterministic net), of the mutual information
(``uncertainty.mutual_information``) as the score, per kind (row keys
``auroc_{entropy|mi}_{kind}``) and on the combined OOD set of all kinds
(``auroc_entropy``, ``auroc_mi``). The rotated digits are the hard kind: a
deterministic net is *more* confident on many of them than on real digits (an
AUROC below 0.5); mirrored and blurred digits, still digit-like, come next.

How
---
One row per (task, method, mode, seed); ``table()`` gives the mean and standard
error over the seeds. Every random choice is fixed by the seed (split,
initialization, minibatches, weight samples, noise); torch runs on one thread per
process, the (task, method, seed) runs spread over ``--jobs`` processes.
``seconds`` is the wall time of training and predicting one method on one seed.

The recipe changes only public settings (initial variational std, prior, heat,
samples, epochs, learning rate); it was chosen on a validation split carved from the
training part (``--validation``: 20 % of the training digits, stratified; the test
digits unused), see the comment at ``RECIPE``. The peers' settings (dropout rate,
IVON's lr and hess_init, the deterministic epochs) come from the same validation
split: ``--choose`` reruns that grid.

Optional peers: a row whose package is missing is skipped with a message naming
the install command. ``ivon-opt`` is in the ``bench`` extra. bayesian-torch and
laplace-torch are not: their wheels require torchvision, which pins a torch release
(pip would replace the installed torch); install them with ``--no-deps``::

    pip install --no-deps bayesian-torch==0.5.0
    pip install --no-deps laplace-torch==0.5.1 curvlinops-for-pytorch==3.0.1 \\
        backpack-for-pytorch==1.7.1 torchmetrics==1.9.0 lightning-utilities==0.15.3 \\
        einops==0.8.2 einconv==0.1.0 linear_operator==0.6.1

(Every module these packages import is then installed, torch stays as it is;
torchvision and backpack's unfoldNd are not installed, and the code used here
does not import them.)

Run
---
    python benchmarks/uncertainty_classification.py              # 5 seeds, ~15 min
    python benchmarks/uncertainty_classification.py --quick      # 1 seed, 10 epochs
    python benchmarks/uncertainty_classification.py --validation --seeds 10
    python benchmarks/uncertainty_classification.py --choose     # the peers' grid
"""

from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
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
SIDE = 8  # the digits are SIDE x SIDE images
CHANNELS = (8, 16)  # the CNN's two convolutions
TEST_FRACTION = 0.3
VALIDATION_FRACTION = 0.2  # of the training part, for choosing settings only
BATCH_SIZE = 128
EPOCHS = 100  # every method but the deterministic nets (and the ensemble's)
MIN_PIXEL_STD = 0.1
LEARNING_RATE = 3e-3
DEFAULT_SAMPLES = 10  # torch_blue's default samples per step
PREDICT_SAMPLES = 32
ENSEMBLE_SIZE = 5
ECE_BINS = 15
NOISE_STD = 0.5  # the Gaussian noise of the noisy OOD digits (pixels in [0, 1])
SHIFT_PIXELS = 2  # the shifted OOD digits: right and down by this many pixels
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
# The CNN task uses the same settings (not tuned for it).
RECIPE: dict[str, Any] = {
    "variational_std": 0.01,  # MeanFieldNormal(std=...), times 1/sqrt(fan_in)
    "prior_std": 1.0,  # prior=MeanFieldNormal(std=...): the default
    "heat": 0.1,  # KullbackLeiblerLoss(heat=...); Pyro mode: poutine.scale(heat)
    "samples": 10,  # torch_blue mode: samples per step (the default)
    "particles": 4,  # Pyro mode: Trace_ELBO(num_particles=..., vectorized)
    "epochs": 100,
    "learning_rate": 3e-3,
}

# The settings of "ours (natural gradient)": the network of recipe_model() with a
# narrow initial std and a wide prior scaled to each layer's width
# (MeanFieldNormal(std=8), rescale_prior=True: std 8 / sqrt(3 fan_in), 0.58 in the
# first layer, 0.29 in the second), trained by
# torch_blue_pyro.optim.VariationalOnlineNewton in place of Adam (Pyro mode:
# PyroVariationalOnlineNewton), KL term at heat 0.01. Chosen on the validation
# split (--validation, test digits unused), 2-5 seeds per setting, MLP: heats 1 to
# 0.003, priors N(0, 1) to rescaled std 12, initial stds 0.1-1, lr 0.002-0.1,
# precision_lr 0.005-0.05, trust radii 0.1-1, 100-300 epochs. Validation
# accuracy / NLL / ECE / AUROC(MI) rotated, 5 seeds:
#   heat 0.01, prior 8, lr 0.003, precision_lr 0.01, radius 0.3
#                                   0.983 / 0.065 / 0.024 / 0.94   <- chosen
#   the same, lr 0.002              0.978 / 0.068 / 0.025 / 0.97
#   prior 4, lr 0.01, precision_lr 0.02, radius 1
#                                   0.986 / 0.060 / 0.024 / 0.81
#   heat 0.03, prior 2, lr 0.02 (2 seeds)   0.986 / 0.075 / 0.043 / 0.77
#   heat 0.1, prior 2, lr 0.05 (2 seeds)    0.968 / 0.132 / 0.061 / 0.89
#   heat 1, prior N(0, 1) or rescaled 2: collapse to the prior (accuracy .2-.9)
# What the screening showed: at heat 1 the mean-field optimum of this MLP prunes
# most hidden units and is underconfident (prior std 2: accuracy .92, NLL .60);
# colder is better calibrated; the means' Newton steps amplify minibatch noise by
# about 1 / heat, so lr has to shrink with the heat (lr 0.05 at heat 0.01
# diverged) and a radius of 0.3 std per step kept 300-epoch runs stable where 1
# did not; starting wide (std 1) overshoots, starting narrow does not.
NATURAL_GRADIENT: dict[str, Any] = {
    "variational_std": 0.1,  # MeanFieldNormal(std=...), times 1/sqrt(fan_in)
    "prior_std": 8.0,  # prior=MeanFieldNormal(std=...), with rescale_prior
    "rescale_prior": True,
    "heat": 0.01,  # KullbackLeiblerLoss(heat=...), and the optimizer's heat
    "samples": 10,  # torch_blue mode
    "particles": 10,  # Pyro mode (4 particles: NLL 0.12 on validation, 10: 0.075)
    "epochs": 100,
    "lr": 0.003,
    "precision_lr": 0.01,
    "momentum": 0.9,
    "trust_radius": 0.3,
    "damping": 0.0,
}
OPTIMIZER_KEYS = (
    "lr",
    "precision_lr",
    "momentum",
    "damping",
    "trust_radius",
    "heat",
)

# MC dropout's rate per task, chosen on the validation split (--choose: 3 seeds,
# test digits unused) among 0.05, 0.1, 0.2, 0.3, by NLL (100 epochs). Validation
# NLL / ECE:
#   mlp: p 0.05 0.061 / 0.013, 0.1 0.060 / 0.010, 0.2 0.058 / 0.015,
#        0.3 0.057 / 0.011   <- chosen
#   cnn: p 0.05 0.056 / 0.017, 0.1 0.043 / 0.014   <- chosen,
#        0.2 0.050 / 0.025, 0.3 0.059 / 0.029
DROPOUT: dict[str, float] = {"mlp": 0.3, "cnn": 0.1}

# IVON's settings per task: ivon.IVON(net.parameters(), ess=len(train), lr=...,
# hess_init=..., **IVON_FIXED) (beta1, beta2, weight_decay: the package's defaults;
# one MC sample per step), 100 epochs. lr and hess_init chosen on the validation
# split (--choose: 3 seeds, test digits unused) by NLL among lr 0.03, 0.1, 0.3 x
# hess_init 0.1, 0.3, 1, then (the best being at the grid's edge) lr 0.3 x
# hess_init 3 and lr 1 x hess_init 0.3, 1, 3 (IVON_GRID). Validation NLL / ECE:
#                       mlp              cnn
#   lr 0.03, h 0.1-1    0.17-0.13        0.19-0.10   (underfit: too few steps)
#   lr 0.1,  h 0.1      0.092 / 0.034    0.077 / 0.030
#   lr 0.1,  h 1        0.074 / 0.028    0.061 / 0.016
#   lr 0.3,  h 0.1      0.067 / 0.017    0.070 / 0.025
#   lr 0.3,  h 0.3      0.063 / 0.019    0.059 / 0.014
#   lr 0.3,  h 1        0.061 / 0.018    0.054 / 0.011
#   lr 0.3,  h 3        0.061 / 0.018    0.057 / 0.013
#   lr 1,    h 0.3      0.066 / 0.015    0.061 / 0.015
#   lr 1,    h 1        0.062 / 0.016    0.051 / 0.016   <- chosen (cnn)
#   lr 1,    h 3        0.061 / 0.013    0.055 / 0.012   <- chosen (mlp)
# Near the optimum the NLL is flat (within a standard error, about 0.008).
IVON: dict[str, dict[str, float]] = {
    "mlp": {"lr": 1.0, "hess_init": 3.0},
    "cnn": {"lr": 1.0, "hess_init": 1.0},
}
IVON_FIXED: dict[str, Any] = {
    "beta1": 0.9,
    "beta2": 0.99999,
    "weight_decay": 1e-4,
    "mc_samples": 1,
}

DROPOUT_GRID = (0.05, 0.1, 0.2, 0.3)
IVON_GRID = [
    {"lr": lr, "hess_init": hess_init}
    for lr, hess_init in (
        *((lr, h) for lr in (0.03, 0.1, 0.3) for h in (0.1, 0.3, 1.0)),
        (0.3, 3.0),
        (1.0, 0.3),
        (1.0, 1.0),
        (1.0, 3.0),
    )
]
DETERMINISTIC_EPOCHS_GRID = (20, 30, 50, 100)


# ----------------------------------------------------------------------- data
def _blur(images: Tensor) -> Tensor:
    """3x3 binomial blur of (N, 8, 8) images, zero padding."""
    row = torch.tensor([1.0, 2.0, 1.0])
    kernel = (row[:, None] * row[None, :] / 16.0).reshape(1, 1, 3, 3)
    return F.conv2d(images[:, None], kernel, padding=1)[:, 0]


def _shift(images: Tensor) -> Tensor:
    """(N, 8, 8) images moved SHIFT_PIXELS right and down, the vacated pixels 0."""
    shifted = torch.zeros_like(images)
    shifted[:, SHIFT_PIXELS:, SHIFT_PIXELS:] = images[:, :-SHIFT_PIXELS, :-SHIFT_PIXELS]
    return shifted


def _noisy(
    images: Tensor, generator: torch.Generator, std: float = NOISE_STD
) -> Tensor:
    """Gaussian noise of ``std`` added to every pixel, clipped to [0, 1]."""
    noise = std * torch.randn(images.shape, generator=generator)
    return (images + noise).clamp(0.0, 1.0)


# A shift maps the test digits' (N, 8, 8) images in [0, 1] and a generator (fixed
# by the seed) to (N, 8, 8) OOD images in [0, 1].
Shift = Callable[[Tensor, torch.Generator], Tensor]

SHIFTS: dict[str, Shift] = {
    "rotated": lambda x, g: torch.rot90(x, 1, dims=(1, 2)),
    "noisy": _noisy,
    "flipped": lambda x, g: torch.flip(x, dims=(2,)),
    "shifted": lambda x, g: _shift(x),
    "blurred": lambda x, g: _blur(x),
    "inverted": lambda x, g: 1.0 - x,
    "permuted": lambda x, g: x.reshape(len(x), -1)[
        :, torch.randperm(FEATURES, generator=g)
    ].reshape(x.shape),
    "uniform": lambda x, g: torch.rand(x.shape, generator=g),
}


class Data:
    """One seed's split: train and test digits, and the OOD images by kind."""

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
        images = x[test].reshape(-1, SIDE, SIDE)
        shifts = {**SHIFTS, "noisy": partial(_noisy, std=noise_std)}
        ood = {}
        for offset, (kind, shift) in enumerate(shifts.items()):
            # One generator per kind: adding a kind leaves the others unchanged.
            generator = torch.Generator().manual_seed(10_000 + 100 * seed + offset)
            ood[kind] = shift(images, generator).reshape(-1, FEATURES)
        # Every pixel standardized with the training digits' statistics; a border
        # pixel that is (almost) always blank has a std below MIN_PIXEL_STD.
        mean = x[train].mean(dim=0)
        std = x[train].std(dim=0).clamp_min(MIN_PIXEL_STD)

        def standardize(images: Tensor) -> Tensor:
            return (images - mean) / std

        self.x_train, self.y_train = standardize(x[train]), y[train]
        self.x_test, self.y_test = standardize(x[test]), y[test]
        self.x_ood = {kind: standardize(images) for kind, images in ood.items()}

    def batches(self, epochs: int, seed: int) -> list[Tensor]:
        """Minibatch indices, a fresh permutation per epoch (fixed by the seed)."""
        generator = torch.Generator().manual_seed(20_000 + seed)
        n = len(self.y_train)
        return [
            batch
            for _ in range(epochs)
            for batch in torch.randperm(n, generator=generator).split(BATCH_SIZE)
        ]


# --------------------------------------------------------------------- tasks
def _variational_kwargs(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The layers' keyword arguments: defaults (None) or the settings' std, prior."""
    if settings is None:
        return {}
    return {
        "variational_distribution": vi.distributions.MeanFieldNormal(
            std=settings["variational_std"]
        ),
        "prior": vi.distributions.MeanFieldNormal(std=settings["prior_std"]),
        "rescale_prior": settings.get("rescale_prior", False),
    }


def _mlp_layers(dropout: float | None = None) -> list[nn.Module]:
    drop = [] if dropout is None else [nn.Dropout(dropout)]
    return [nn.Linear(FEATURES, HIDDEN), nn.ReLU(), *drop, nn.Linear(HIDDEN, CLASSES)]


def _cnn_layers(dropout: float | None = None) -> list[nn.Module]:
    a, b = CHANNELS
    drop = [] if dropout is None else [nn.Dropout(dropout)]
    return [
        nn.Unflatten(-1, (1, SIDE, SIDE)),
        nn.Conv2d(1, a, 3, padding=1),
        nn.ReLU(),
        *drop,
        nn.MaxPool2d(2),
        nn.Conv2d(a, b, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        *drop,
        nn.Linear(b * (SIDE // 2) ** 2, CLASSES),
    ]


def mlp(dropout: float | None = None) -> nn.Sequential:
    """The MLP task's plain network (``nn.Dropout`` before the last layer)."""
    return nn.Sequential(*_mlp_layers(dropout))


def cnn(dropout: float | None = None) -> nn.Sequential:
    """The CNN task's plain network (dropout after the first ReLU and before
    the last layer)."""
    return nn.Sequential(*_cnn_layers(dropout))


def bayesian_mlp(settings: dict[str, Any] | None = None) -> vi.VISequential:
    """The MLP of VILinear layers: defaults (None), or the settings' std and prior."""
    kwargs = _variational_kwargs(settings)
    return vi.VISequential(
        vi.VILinear(FEATURES, HIDDEN, **kwargs),
        nn.ReLU(),
        vi.VILinear(HIDDEN, CLASSES, **kwargs),
    )


def bayesian_cnn(settings: dict[str, Any] | None = None) -> vi.VISequential:
    """The CNN of VIConv2d and VILinear layers, as ``bayesian_mlp``."""
    kwargs = _variational_kwargs(settings)
    a, b = CHANNELS
    return vi.VISequential(
        nn.Unflatten(-1, (1, SIDE, SIDE)),
        vi.VIConv2d(1, a, 3, padding=1, **kwargs),
        nn.ReLU(),
        nn.MaxPool2d(2),
        vi.VIConv2d(a, b, 3, padding=1, **kwargs),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(b * (SIDE // 2) ** 2, CLASSES, **kwargs),
    )


@dataclass(frozen=True)
class Task:
    """A network shape: its plain, dropout and Bayesian builders."""

    name: str
    plain: Callable[[float | None], nn.Sequential]  # dropout rate or None
    bayesian: Callable[[dict[str, Any] | None], vi.VISequential]
    deterministic_epochs: int  # its best validation NLL among 20, 30, 50, 100


TASKS: dict[str, Task] = {
    # The deterministic epochs: validation NLL / ECE for 20, 30, 50, 100 epochs
    #   mlp: 10 seeds (see RECIPE): 0.069 / 0.065 / 0.064 / 0.065 (NLL); --choose,
    #        3 seeds: 0.066 / 0.062 / 0.061 / 0.062
    #   cnn: --choose, 3 seeds: 0.075 / 0.066 / 0.062 / 0.064 (NLL), ECE 0.016 /
    #        0.015 / 0.011 / 0.015
    "mlp": Task("mlp", mlp, bayesian_mlp, 50),
    "cnn": Task("cnn", cnn, bayesian_cnn, 50),
}


def default_model(task: str = "mlp") -> vi.VISequential:
    """What a migrating torch_blue script builds: every setting at its default."""
    return TASKS[task].bayesian(None)


def recipe_model(recipe: dict[str, Any] = RECIPE, task: str = "mlp") -> vi.VISequential:
    """The network of ``default_model`` with the settings' initial std and prior."""
    return TASKS[task].bayesian(recipe)


# ------------------------------------------------------------------- methods
# A predictor maps inputs (N, 64) to sampled logits (S, N, 10).
Predictor = Callable[[Tensor], Tensor]


def _train_plain(
    net: nn.Module, data: Data, seed: int, epochs: int, learning_rate: float
) -> nn.Module:
    """Cross-entropy and Adam; ``net`` is returned in training mode."""
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    net.train()
    for batch in data.batches(epochs, seed):
        loss = F.cross_entropy(net(data.x_train[batch]), data.y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def deterministic_net(data: Data, seed: int, task: str, epochs: int) -> nn.Module:
    """The deterministic row's network, trained (seeded by ``seed``)."""
    torch.manual_seed(seed)
    net = _train_plain(TASKS[task].plain(None), data, seed, epochs, LEARNING_RATE)
    return net.eval()


def train_deterministic(
    data: Data, seed: int, epochs: int, task: str = "mlp"
) -> Predictor:
    net = deterministic_net(data, seed, task, epochs)
    return lambda x: net(x).unsqueeze(0)


def mc_dropout_predictor(net: nn.Module, samples: int = PREDICT_SAMPLES) -> Predictor:
    """``samples`` forward passes with dropout on: (S, N, 10)."""

    def predict(x: Tensor) -> Tensor:
        net.train()  # dropout on at test time
        return torch.stack([net(x) for _ in range(samples)])

    return predict


def train_mc_dropout(
    data: Data, seed: int, epochs: int, task: str = "mlp", p: float | None = None
) -> Predictor:
    torch.manual_seed(seed)
    rate = DROPOUT[task] if p is None else p
    net = _train_plain(TASKS[task].plain(rate), data, seed, epochs, LEARNING_RATE)
    return mc_dropout_predictor(net)


def ensemble_predictor(nets: Sequence[nn.Module]) -> Predictor:
    """The members' logits, one "sample" per member: (M, N, 10)."""
    return lambda x: torch.stack([net(x) for net in nets])


def train_ensemble(
    data: Data, seed: int, epochs: int, task: str = "mlp", size: int = ENSEMBLE_SIZE
) -> Predictor:
    nets = [deterministic_net(data, seed + 1000 * k, task, epochs) for k in range(size)]
    return ensemble_predictor(nets)


def train_ivon(
    data: Data,
    seed: int,
    epochs: int,
    task: str = "mlp",
    settings: dict[str, float] | None = None,
) -> Predictor:
    import ivon

    torch.manual_seed(seed)
    net = TASKS[task].plain(None)
    hyper = {**IVON_FIXED, **(IVON[task] if settings is None else settings)}
    optimizer = ivon.IVON(net.parameters(), ess=len(data.y_train), **hyper)
    for batch in data.batches(epochs, seed):
        for _ in range(hyper["mc_samples"]):
            with optimizer.sampled_params(train=True):
                optimizer.zero_grad()
                loss = F.cross_entropy(net(data.x_train[batch]), data.y_train[batch])
                loss.backward()
        optimizer.step()
    net.eval()

    def predict(x: Tensor) -> Tensor:
        outputs = []
        for _ in range(PREDICT_SAMPLES):
            with optimizer.sampled_params():
                outputs.append(net(x))
        return torch.stack(outputs)

    return predict


def train_laplace(data: Data, seed: int, epochs: int, task: str = "mlp") -> Predictor:
    from laplace import Laplace

    net = deterministic_net(data, seed, task, epochs)
    dataset = torch.utils.data.TensorDataset(data.x_train, data.y_train)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE)
    la = Laplace(
        net, "classification", subset_of_weights="last_layer", hessian_structure="kron"
    )
    with warnings.catch_warnings():  # "by default link_approx is probit": not used
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script
        la.fit(loader)
        la.optimize_prior_precision(method="marglik", pred_type="glm", link_approx="mc")

    def predict(x: Tensor) -> Tensor:
        # (S, N, 10) softmax outputs of the sampled linearized logits; their log
        # is a valid logit (softmax(log p) = p).
        probabilities = la.predictive_samples(
            x, pred_type="glm", n_samples=PREDICT_SAMPLES
        )
        return probabilities.clamp_min(1e-30).log()

    return predict


def _optimizer_hyperparameters(settings: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of VariationalOnlineNewton among the settings."""
    return {key: settings[key] for key in OPTIMIZER_KEYS if key in settings}


def adam(learning_rate: float) -> Callable[[nn.Module], list[torch.optim.Optimizer]]:
    return lambda net: [torch.optim.Adam(net.parameters(), lr=learning_rate)]


def natural_gradient(
    settings: dict[str, Any],
) -> Callable[[nn.Module], list[torch.optim.Optimizer]]:
    """VariationalOnlineNewton on the factors; Adam on the rest (none here)."""

    def build(net: nn.Module) -> list[torch.optim.Optimizer]:
        from torch_blue_pyro.optim import VariationalOnlineNewton, point_parameters

        optimizers: list[torch.optim.Optimizer] = [
            VariationalOnlineNewton(net, **_optimizer_hyperparameters(settings))
        ]
        others = point_parameters(net)
        if others:
            optimizers.append(torch.optim.Adam(others, lr=LEARNING_RATE))
        return optimizers

    return build


def train_torch_blue(
    data: Data,
    seed: int,
    net: vi.VISequential,
    epochs: int,
    samples: int,
    learning_rate: float,
    heat: float = 1.0,
    optimizers: Callable[[nn.Module], list[torch.optim.Optimizer]] | None = None,
) -> Predictor:
    """KullbackLeiblerLoss; Adam at ``learning_rate`` unless ``optimizers``."""
    loss_fn = vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=len(data.y_train), heat=heat
    )
    steppers = (optimizers or adam(learning_rate))(net)
    for batch in data.batches(epochs, seed):
        output = net(data.x_train[batch], samples=samples)
        loss = loss_fn(output, data.y_train[batch])
        for optimizer in steppers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in steppers:
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
    optimizer: Callable[[nn.Module], pyro.optim.PyroOptim] | None = None,
) -> Predictor:
    """SVI with Trace_ELBO; Pyro's Adam at ``learning_rate`` unless ``optimizer``."""
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
    optim = (
        pyro.optim.Adam({"lr": learning_rate}) if optimizer is None else optimizer(net)
    )
    svi = SVI(model, guide, optim, elbo)
    for batch in data.batches(epochs, seed):
        svi.step(batch)
    return lambda x: uncertainty.sample_tensor(net(x, samples=PREDICT_SAMPLES))


def pyro_natural_gradient(
    settings: dict[str, Any],
) -> Callable[[nn.Module], pyro.optim.PyroOptim]:
    def build(net: nn.Module) -> pyro.optim.PyroOptim:
        from torch_blue_pyro.optim import PyroVariationalOnlineNewton

        return PyroVariationalOnlineNewton(
            net,
            others=pyro.optim.Adam({"lr": LEARNING_RATE}),
            **_optimizer_hyperparameters(settings),
        )

    return build


def train_bayesian_torch(
    data: Data, seed: int, epochs: int, task: str = "mlp"
) -> Predictor:
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss

    torch.manual_seed(seed)
    net = TASKS[task].plain(None)
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


# ------------------------------------------------------- optional peers
LAPLACE_INSTALL = (
    "pip install --no-deps laplace-torch==0.5.1 curvlinops-for-pytorch==3.0.1 "
    "backpack-for-pytorch==1.7.1 torchmetrics==1.9.0 lightning-utilities==0.15.3 "
    "einops==0.8.2 einconv==0.1.0 linear_operator==0.6.1"
)

#: The module each optional method imports, and how to install it.
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "bayesian-torch defaults": (
        "bayesian_torch.models.dnn_to_bnn",
        "pip install --no-deps bayesian-torch==0.5.0",
    ),
    "IVON": ("ivon", "pip install ivon-opt (in the bench extra)"),
    "last-layer Laplace": ("laplace", LAPLACE_INSTALL),
    "ours (natural gradient)": (
        "torch_blue_pyro.optim",
        "torch_blue_pyro.optim.VariationalOnlineNewton is part of this library",
    ),
}


def missing(method: str) -> str | None:
    """Why ``method`` cannot run here (its import fails), or None if it can."""
    requirement = REQUIREMENTS.get(method)
    if requirement is None:
        return None
    module, install = requirement
    try:
        with warnings.catch_warnings():  # laplace's imports: torch.jit.script
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken install of a peer
        return (
            f"{method}: skipped, `import {module}` fails "
            f"({type(error).__name__}: {error}); install with: {install}"
        )
    return None


def bayesian_torch_available() -> bool:
    return missing("bayesian-torch defaults") is None


# -------------------------------------------------------------------- scoring
MEASURES: dict[str, Callable[[Tensor], Tensor]] = {
    "entropy": uncertainty.predictive_entropy,
    "mi": uncertainty.mutual_information,
}


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
    for name, measure in MEASURES.items():
        usable = bayesian or name == "entropy"
        score_in = measure(logits_in) if usable else None
        score_out = {
            kind: measure(logits) if usable else None
            for kind, logits in logits_out.items()
        }
        for kind in ("", *score_out):
            key = f"auroc_{name}_{kind}" if kind else f"auroc_{name}"
            if not usable:
                scores[key] = None
                continue
            out = score_out[kind] if kind else torch.cat(list(score_out.values()))
            scores[key] = metrics.ood_auroc(score_in, out).item()
    return scores


def train(
    method: str, mode: str, task: str, seed: int, data: Data, quick: bool
) -> Predictor:
    """Train ``method`` (in ``mode``) on ``task``: its predictor."""
    epochs = QUICK_EPOCHS if quick else EPOCHS
    deterministic_epochs = QUICK_EPOCHS if quick else TASKS[task].deterministic_epochs
    if method == "deterministic":
        return train_deterministic(data, seed, deterministic_epochs, task)
    if method == "MC dropout":
        return train_mc_dropout(data, seed, epochs, task)
    if method == "deep ensemble (5)":
        return train_ensemble(data, seed, deterministic_epochs, task)
    if method == "IVON":
        return train_ivon(data, seed, epochs, task)
    if method == "last-layer Laplace":
        return train_laplace(data, seed, deterministic_epochs, task)
    if method == "torch_blue defaults":
        return train_torch_blue(
            data, seed, default_model(task), epochs, DEFAULT_SAMPLES, LEARNING_RATE
        )
    if method == "bayesian-torch defaults":
        return train_bayesian_torch(data, seed, epochs, task)
    if method == "ours (recipe)":
        settings = RECIPE
        lr = settings["learning_rate"]
        torch_blue_optimizers, pyro_optimizer = None, None
    elif method == "ours (natural gradient)":
        settings = NATURAL_GRADIENT
        lr = LEARNING_RATE  # unused: the natural-gradient optimizers replace Adam
        torch_blue_optimizers = natural_gradient(settings)
        pyro_optimizer = pyro_natural_gradient(settings)
    else:
        raise ValueError(f"unknown method {method!r}")
    net = recipe_model(settings, task)
    ours_epochs = QUICK_EPOCHS if quick else settings["epochs"]
    if mode == "torch_blue":
        return train_torch_blue(
            data,
            seed,
            net,
            ours_epochs,
            settings["samples"],
            lr,
            settings["heat"],
            torch_blue_optimizers,
        )
    return train_pyro(
        data,
        seed,
        net,
        ours_epochs,
        settings["particles"],
        lr,
        settings["heat"],
        pyro_optimizer,
    )


def run_method(
    method: str,
    mode: str,
    seed: int,
    data: Data,
    quick: bool,
    task: str = "mlp",
) -> dict[str, object]:
    """One row: ``method`` trained and scored on one seed of ``task``."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    predict = train(method, mode, task, seed, data, quick)
    scores = evaluate(predict, data, bayesian=method != "deterministic")
    seconds = time.perf_counter() - start
    return {
        "task": task,
        "method": method,
        "mode": mode,
        "seed": seed,
        **scores,
        "seconds": seconds,
    }


METHODS = [
    ("deterministic", "-"),
    ("MC dropout", "-"),
    ("deep ensemble (5)", "-"),
    ("IVON", "-"),
    ("last-layer Laplace", "-"),
    ("torch_blue defaults", "torch_blue"),
    ("bayesian-torch defaults", "-"),
    ("ours (recipe)", "torch_blue"),
    ("ours (recipe)", "pyro"),
    ("ours (natural gradient)", "torch_blue"),
    ("ours (natural gradient)", "pyro"),
]


def available_methods(
    methods: Sequence[tuple[str, str]] = METHODS, report: bool = True
) -> list[tuple[str, str]]:
    """The methods whose packages import; each missing one named on stderr."""
    kept = []
    reasons: dict[str, str | None] = {}
    for method, mode in methods:
        if method not in reasons:
            reasons[method] = missing(method)
            if reasons[method] is not None and report:
                print(reasons[method], file=sys.stderr)
        if reasons[method] is None:
            kept.append((method, mode))
    return kept


# One job of run(): (task, method, mode, seed, quick, validation).
Job = tuple[str, str, str, int, bool, bool]


def _run_job(job: Job) -> dict[str, object]:
    task, method, mode, seed, quick, validation = job
    torch.set_num_threads(1)
    return run_method(
        method, mode, seed, Data(seed, validation=validation), quick, task
    )


def _map(function: Callable[[Any], Any], jobs: Sequence[Any], processes: int) -> list:
    """``function`` over ``jobs`` in order, in ``processes`` spawned processes."""
    if processes <= 1 or len(jobs) <= 1:
        return [function(job) for job in jobs]
    pool = multiprocessing.get_context("spawn").Pool(processes)
    try:
        return pool.map(function, jobs, chunksize=1)
    finally:  # close and join, not terminate: the workers exit cleanly
        pool.close()
        pool.join()


def run(
    seeds: int = 5,
    quick: bool = False,
    validation: bool = False,
    jobs: int = 1,
    tasks: Sequence[str] = tuple(TASKS),
    methods: Sequence[tuple[str, str]] = METHODS,
) -> list[dict[str, object]]:
    """One row per (task, method, mode, seed): the metrics of ``evaluate``, seconds.

    ``quick``: one seed, 10 epochs (a smoke run). ``validation``: train on 80 % of
    the training digits and score on the other 20 % (the OOD images made from
    them); the test digits stay unused. ``jobs``: processes. A method whose
    package is missing is skipped, named on stderr.
    """
    torch.set_num_threads(1)
    if quick:
        seeds = 1
    kept = available_methods(methods)
    # The slow runs first, so that the processes finish together.
    work: list[Job] = [
        (task, method, mode, seed, quick, validation)
        for task in sorted(tasks, key=lambda name: name != "cnn")
        for seed in range(seeds)
        for method, mode in kept
    ]
    rows = _map(_run_job, work, jobs)
    order = {(method, mode): i for i, (method, mode) in enumerate(kept)}
    task_order = {task: i for i, task in enumerate(tasks)}
    rows.sort(
        key=lambda row: (
            task_order[row["task"]],
            order[row["method"], row["mode"]],
            row["seed"],
        )
    )
    return rows


# ----------------------------------------------------------- choosing peers
def _choose_job(job: tuple[str, str, Any, int]) -> dict[str, object]:
    """One validation run of the peers' grid: (task, method, setting, seed)."""
    task, method, setting, seed = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    data = Data(seed, validation=True)
    if method == "MC dropout":
        predict = train_mc_dropout(data, seed, EPOCHS, task, p=setting)
    elif method == "IVON":
        predict = train_ivon(data, seed, EPOCHS, task, settings=setting)
    else:
        predict = train_deterministic(data, seed, setting, task)
    scores = evaluate(predict, data, bayesian=method != "deterministic")
    return {"task": task, "method": method, "setting": str(setting), **scores}


def choose(seeds: int = 5, jobs: int = 2) -> str:
    """The peers' validation grid (test digits unused): mean NLL / ECE per setting."""
    grid: list[tuple[str, Any]] = [("MC dropout", p) for p in DROPOUT_GRID]
    grid += [("IVON", setting) for setting in IVON_GRID]
    grid += [("deterministic", epochs) for epochs in DETERMINISTIC_EPOCHS_GRID]
    work = [
        (task, method, setting, seed)
        for task in TASKS
        for method, setting in grid
        for seed in range(seeds)
    ]
    if missing("IVON") is not None:
        work = [job for job in work if job[1] != "IVON"]
    rows = _map(_choose_job, work, jobs)
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["method"], row["setting"]), []).append(row)
    lines = [
        "| task | method | setting | NLL | ECE | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for (task, method, setting), group in groups.items():
        cells = [
            mean_stderr([float(row[key]) for row in group])  # type: ignore[arg-type]
            for key in ("nll", "ece", "accuracy")
        ]
        lines.append(f"| {task} | {method} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
) -> dict[tuple[object, object, object], list[dict[str, object]]]:
    groups: dict[tuple[object, object, object], list[dict[str, object]]] = {}
    for row in rows:
        key = (row.get("task", "mlp"), row["method"], row["mode"])
        groups.setdefault(key, []).append(row)
    return groups


def _markdown(
    rows: Sequence[dict[str, object]],
    columns: Sequence[tuple[str, str]],
    digits: int = 4,
) -> str:
    header = ["task", "method", "mode", *(title for _, title in columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|",
    ]
    for (task, method, mode), group in _groups(rows).items():
        cells = [str(task), str(method), str(mode)]
        for key, _ in columns:
            values = [float(row[key]) for row in group if row.get(key) is not None]
            if not values:
                cells.append("-")
            elif key == "seconds":
                cells.append(f"{sum(values) / len(values):.1f}")
            elif digits == 4:
                cells.append(mean_stderr(values))
            else:
                cells.append(f"{sum(values) / len(values):.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: Sequence[dict[str, object]]) -> str:
    """Markdown table: mean ± standard error over the seeds, per task, method, mode."""
    return _markdown(rows, COLUMNS)


def per_kind(rows: Sequence[dict[str, object]], measure: str = "mi") -> str:
    """Markdown table: mean OOD AUROC of ``measure`` per kind, and seconds per seed."""
    columns = [(f"auroc_{measure}_{kind}", kind) for kind in SHIFTS]
    return _markdown(rows, [*columns, ("seconds", "seconds")], digits=3)


def details(rows: Sequence[dict[str, object]]) -> str:
    """Markdown: OOD AUROC per kind (MI, then entropy; means), seconds per seed."""
    return "\n".join(
        [
            "OOD AUROC of the mutual information per kind of OOD image (mean over "
            "the seeds), and seconds per seed:",
            "",
            per_kind(rows, "mi"),
            "",
            "OOD AUROC of the predictive entropy per kind of OOD image:",
            "",
            per_kind(rows, "entropy"),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=5, help="default: 5")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="networks"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 10 epochs: a smoke run"
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help="score on a validation split of the training digits (for tuning)",
    )
    parser.add_argument(
        "--choose",
        action="store_true",
        help="the peers' validation grid (dropout rate, IVON, deterministic epochs)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.choose:
        print(choose(args.seeds, args.jobs))
        print(f"\n{time.perf_counter() - start:.0f} s in total")
        return
    rows = run(args.seeds, args.quick, args.validation, args.jobs, args.tasks)
    total = time.perf_counter() - start
    print(f"recipe: {RECIPE}\nnatural gradient: {NATURAL_GRADIENT}\n")
    print(table(rows))
    print()
    print(details(rows))
    seeds = len({row["seed"] for row in rows})
    print(f"\n{seeds} seed(s), {total:.0f} s in total")


if __name__ == "__main__":
    main()
