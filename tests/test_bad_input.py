"""Bad input: every case of the table in docs/reliability.md, with its error.

Each case asserts the exception type and that the message names the argument and
what was expected. The cases in ``PROPOSED`` were found giving unclear errors or
silently proceeding; fixes F1-F7 of docs/reliability.md made them raise these.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.optim import PyroVariationalOnlineNewton, VariationalOnlineNewton
from torch_blue_pyro.vi.distributions import (
    BasicQuietPrior,
    Categorical,
    Horseshoe,
    MeanFieldNormal,
    MeanFieldStudentT,
    PyroPrior,
    UniformPrior,
)
from torch_blue_pyro.vi.utils import NoVariablesError, UnsupportedDistributionError


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models: one thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def linear() -> vi.VILinear:
    return vi.VILinear(4, 3)


def mlp() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 8), nn.ReLU(), vi.VILinear(8, 3))


def x() -> Tensor:
    return torch.randn(5, 4)


def classification_loss() -> vi.KullbackLeiblerLoss:
    return vi.KullbackLeiblerLoss(Categorical(), dataset_size=100)


def regression_loss() -> vi.KullbackLeiblerLoss:
    return vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=100)


def labels(*values: float) -> Tensor:
    """Class labels as floats (integral ones are accepted); ``.long()`` for ints."""
    return torch.tensor(values, dtype=torch.float32)


def with_first_element(tensor: Tensor, value: float = float("nan")) -> Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = value
    return tensor


def classify(target: Tensor, inputs: Tensor | None = None) -> Tensor:
    return classification_loss()(linear()(x() if inputs is None else inputs), target)


def regress(target: Tensor, inputs: Tensor | None = None, samples: int = 4) -> Tensor:
    output = linear()(x() if inputs is None else inputs, samples=samples)
    return regression_loss()(output, target)


def attention(*shapes: tuple[int, ...], **kwargs: Any) -> Any:
    query, key, value = (torch.randn(shape) for shape in shapes)
    return vi.VIMultiheadAttention(8, 2)(query, key, value, samples=2, **kwargs)


def pyro_step(inputs: Tensor, target: Tensor) -> float:
    """One SVI step of a classifier built from an MLP, with the MLP's guide."""
    net = mlp()

    def model(inputs: Tensor, target: Tensor) -> None:
        logits = net(inputs)
        with pyro.plate("data", len(inputs)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=target)

    svi = SVI(model, net.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pyro.validation_enabled(True):  # Pyro's default; the errors below are its
        return svi.step(inputs, target)


def prior_set_later() -> Tensor:
    """A prior of the wrong shape, set after the layer was built (unchecked)."""
    net = vi.VISequential(linear())
    net[0].prior["bias"] = PyroPrior(dist.Normal(torch.zeros(5), 1.0))
    return net(x(), samples=2)


def vectorized_loss(outer: bool, max_plate_nesting: int) -> float:
    """A vectorized ELBO of an MLP inside a data plate (and an outer one at -2)."""
    net = mlp()

    def model(inputs: Tensor) -> None:
        with ExitStack() as plates:
            if outer:
                plates.enter_context(pyro.plate("outer", 1, dim=-2))
            plates.enter_context(pyro.plate("data", 5))
            logits = net(inputs)
            pyro.sample("obs", dist.Categorical(logits=logits))

    elbo = Trace_ELBO(
        num_particles=3,
        vectorize_particles=True,
        max_plate_nesting=max_plate_nesting,
    )
    return elbo.loss(model, net.guide, x())


def load(model: nn.Module, state: dict[str, Tensor], strict: bool = True) -> Any:
    return model.load_state_dict(state, strict=strict)


def natural_gradient(**hyperparameters: Any) -> VariationalOnlineNewton:
    return VariationalOnlineNewton(linear(), **hyperparameters)


def step_with_a_nan_gradient() -> None:
    model = vi.VISequential(vi.VILinear(4, 3), vi.VILinear(3, 1))
    optimizer = VariationalOnlineNewton(model)
    model(x(), samples=2).sum().backward()
    model[1]._weight_log_std.grad[0, 0] = float("nan")
    optimizer.step()


def svi_step_with_a_pyro_param() -> None:
    net = vi.VILinear(4, 1)

    def model(data: Tensor) -> None:
        scale = pyro.param(
            "noise_scale", torch.tensor(1.0), constraint=dist.constraints.positive
        )
        with pyro.plate("data", len(data)):
            mean = net(data)[..., 0]
            pyro.sample("obs", dist.Normal(mean, scale), obs=torch.zeros(len(data)))

    pyro.clear_param_store()
    optim = PyroVariationalOnlineNewton(net)
    SVI(model, lambda data: net.guide(), optim, Trace_ELBO()).step(x())


# id -> (thunk, exception type, pattern the message must contain). The pattern names
# the argument and what was expected.
CASES: dict[str, tuple[Callable[[], Any], type[BaseException], str]] = {
    # --- samples
    "samples-zero": (
        lambda: linear()(x(), samples=0),
        ValueError,
        "samples must be a positive int, got 0",
    ),
    "samples-negative": (
        lambda: linear()(x(), samples=-3),
        ValueError,
        "samples must be a positive int, got -3",
    ),
    "samples-float": (
        lambda: linear()(x(), samples=2.5),
        ValueError,
        "samples must be a positive int, got 2.5",
    ),
    "samples-integral-float": (
        lambda: linear()(x(), samples=2.0),
        ValueError,
        "samples must be a positive int, got 2.0",
    ),
    "samples-bool": (
        lambda: linear()(x(), samples=True),
        ValueError,
        "samples must be a positive int, got True",
    ),
    "samples-string": (
        lambda: linear()(x(), samples="3"),
        ValueError,
        "samples must be a positive int, got '3'",
    ),
    "samples-tensor": (
        lambda: linear()(x(), samples=torch.tensor(3)),
        ValueError,
        r"samples must be a positive int, got tensor\(3\)",
    ),
    "samples-under-pyro": (
        lambda: poutine.trace(linear()).get_trace(x(), samples=3),
        TypeError,
        "samples is for torch_blue's autosampling; .*num_particles",
    ),
    "sampled-input-sizes-disagree": (
        lambda: vi.VIMultiheadAttention(8, 2)(
            torch.randn(2, 1, 3, 8),
            torch.randn(3, 1, 3, 8),
            torch.randn(2, 1, 3, 8),
            sampled_input=True,
        ),
        ValueError,
        r"sampled_input=True needs the same leading sample dimension on every "
        r"input, got sizes \[2, 3\]",
    ),
    "sampled-input-scalar": (
        lambda: linear()(torch.tensor(1.0), sampled_input=True),
        ValueError,
        "sampled_input=True needs inputs with a leading sample dimension",
    ),
    # --- dataset_size and heat
    "dataset-size-zero": (
        lambda: vi.KullbackLeiblerLoss(Categorical(), dataset_size=0),
        ValueError,
        "dataset_size must be a positive int, got 0",
    ),
    "dataset-size-negative": (
        lambda: vi.KullbackLeiblerLoss(Categorical(), dataset_size=-10),
        ValueError,
        "dataset_size must be a positive int, got -10",
    ),
    "dataset-size-float": (
        lambda: vi.KullbackLeiblerLoss(Categorical(), dataset_size=1e9),
        ValueError,
        "dataset_size must be a positive int, got 1000000000.0",
    ),
    "dataset-size-bool": (
        lambda: vi.KullbackLeiblerLoss(Categorical(), dataset_size=True),
        ValueError,
        "dataset_size must be a positive int, got True",
    ),
    "dataset-size-at-call": (
        lambda: classification_loss()(
            linear()(x()), labels(0, 1, 2, 1, 0).long(), dataset_size=0.5
        ),
        ValueError,
        "dataset_size must be a positive int, got 0.5",
    ),
    "dataset-size-analytical": (
        lambda: vi.AnalyticalKullbackLeiblerLoss(
            linear(), Categorical(), dataset_size=-1
        ),
        ValueError,
        "dataset_size must be a positive int, got -1",
    ),
    "heat-negative": (
        lambda: vi.KullbackLeiblerLoss(Categorical(), heat=-1.0),
        ValueError,
        "heat must be a finite number >= 0, got -1.0",
    ),
    "heat-nan": (
        lambda: vi.KullbackLeiblerLoss(Categorical(), heat=float("nan")),
        ValueError,
        "heat must be a finite number >= 0, got nan",
    ),
    # --- input types and shapes
    "input-list": (
        lambda: linear()([[0.0] * 4], samples=2),
        TypeError,
        "VILinear expects tensors as inputs, got list for input 0",
    ),
    "input-numpy": (
        lambda: linear()(x().numpy(), samples=2),
        TypeError,
        "VILinear expects tensors as inputs, got ndarray for input 0",
    ),
    "linear-width": (
        lambda: linear()(torch.randn(5, 3)),
        ValueError,
        r"VILinear\(in_features=4\) expects input of shape \(\*, 4\), got \(5, 3\)",
    ),
    "linear-scalar-input": (
        lambda: linear()(torch.tensor(1.0)),
        ValueError,
        r"VILinear\(in_features=4\) expects input of shape \(\*, 4\), got \(\)",
    ),
    "linear-width-pyro-mode": (
        lambda: poutine.trace(linear()).get_trace(torch.randn(5, 3)),
        ValueError,
        r"VILinear\(in_features=4\) expects input of shape \(\*, 4\), got \(5, 3\)",
    ),
    "linear-size-zero": (
        lambda: vi.VILinear(0, 3),
        ValueError,
        "in_features must be a positive int, got 0",
    ),
    "linear-size-float": (
        lambda: vi.VILinear(4, 3.0),
        ValueError,
        "out_features must be a positive int, got 3.0",
    ),
    "conv-channels": (
        lambda: vi.VIConv2d(2, 3, 3)(torch.randn(1, 3, 5, 5)),
        ValueError,
        r"VIConv2d\(in_channels=2\) expects input of shape \(N, 2, H, W\) or "
        r"\(2, H, W\), got \(1, 3, 5, 5\)",
    ),
    "conv-rank": (
        lambda: vi.VIConv1d(2, 3, 3)(torch.randn(1, 1, 2, 9)),
        ValueError,
        r"VIConv1d\(in_channels=2\) expects input of shape \(N, 2, L\) or "
        r"\(2, L\), got \(1, 1, 2, 9\)",
    ),
    "conv-kernel-larger-than-input": (
        lambda: vi.VIConv2d(2, 3, 5)(torch.randn(1, 2, 3, 3)),
        RuntimeError,  # torch's own message, as nn.Conv2d
        r"Kernel size: \(5 x 5\)\. Kernel size can't be greater than actual input",
    ),
    "conv-groups": (
        lambda: vi.VIConv2d(3, 4, 3, groups=2),
        ValueError,
        "in_channels must be divisible by groups, got in_channels=3 and groups=2",
    ),
    "conv-kernel-zero": (
        lambda: vi.VIConv2d(3, 4, 0),
        ValueError,
        "kernel_size must be a positive int or a tuple of 2 positive ints, got 0",
    ),
    "conv-kernel-tuple-length": (
        lambda: vi.VIConv3d(3, 4, (3, 3)),
        ValueError,
        "kernel_size must be a positive int or a tuple of 3 positive ints, "
        r"got \(3, 3\)",
    ),
    "conv-stride-zero": (
        lambda: vi.VIConv1d(3, 4, 3, stride=0),
        ValueError,
        "stride must be a positive int or a tuple of 1 positive int, got 0",
    ),
    "conv-padding-negative": (
        lambda: vi.VIConv1d(3, 4, 3, padding=-1),
        ValueError,
        "padding must be a non-negative int or a tuple of 1 non-negative int, got -1",
    ),
    "conv-padding-string": (
        lambda: vi.VIConv1d(3, 4, 3, padding="full"),
        ValueError,
        "padding must be 'same', 'valid', a non-negative int .*got 'full'",
    ),
    "conv-same-with-stride": (
        lambda: vi.VIConv2d(3, 4, 3, padding="same", stride=2),
        ValueError,
        r"padding='same' is not supported for strided convolutions, "
        r"got stride=\(2, 2\)",
    ),
    "conv-padding-mode": (
        lambda: vi.VIConv1d(3, 4, 3, padding_mode="mirror"),
        ValueError,
        "padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', "
        "got 'mirror'",
    ),
    "attention-heads": (
        lambda: vi.VIMultiheadAttention(8, 3),
        AssertionError,  # as torch.nn.MultiheadAttention
        "embed_dim must be divisible by num_heads, got embed_dim=8 and num_heads=3",
    ),
    "attention-width": (
        lambda: attention((2, 3, 6), (2, 3, 6), (2, 3, 6)),
        ValueError,
        r"VIMultiheadAttention\(embed_dim=8\) expects query of shape \(N, L, 8\) or "
        r"\(L, 8\), got \(2, 3, 6\)",
    ),
    "attention-key-value-lengths": (
        lambda: attention((2, 3, 8), (2, 4, 8), (2, 5, 8)),
        ValueError,
        "expects key and value of one sequence length, got shapes "
        r"\(2, 4, 8\) and \(2, 5, 8\)",
    ),
    "attention-batch-sizes": (
        lambda: attention((2, 3, 8), (3, 4, 8), (3, 4, 8)),
        ValueError,
        "expects query, key and value of one batch size",
    ),
    "attention-attn-mask": (
        lambda: attention((2, 3, 8), (2, 3, 8), (2, 3, 8), attn_mask=torch.zeros(4, 4)),
        ValueError,
        r"attn_mask must have shape \(L, L_k\) = \(3, 3\) or \(N \* num_heads, L, "
        r"L_k\) = \(4, 3, 3\), got \(4, 4\)",
    ),
    "attention-key-padding-mask": (
        lambda: attention(
            (2, 3, 8),
            (2, 4, 8),
            (2, 4, 8),
            key_padding_mask=torch.zeros(2, 3, dtype=torch.bool),
        ),
        ValueError,
        r"key_padding_mask must have shape \(N, L_k\) = \(2, 4\), got \(2, 3\)",
    ),
    "attention-causal-without-mask": (
        lambda: attention((2, 3, 8), (2, 3, 8), (2, 3, 8), is_causal=True),
        RuntimeError,  # as torch.nn.MultiheadAttention
        "Need attn_mask if specifying the is_causal hint",
    ),
    "encoder-width": (
        lambda: vi.VITransformerEncoderLayer(8, 2, dim_feedforward=16)(
            torch.randn(2, 3, 6)
        ),
        ValueError,
        r"VITransformerEncoderLayer\(d_model=8\) expects src with 8 features in the "
        r"last dimension, got shape \(2, 3, 6\)",
    ),
    "encoder-num-layers": (
        lambda: vi.VITransformerEncoder(
            vi.VITransformerEncoderLayer(8, 2, dim_feedforward=16), 0
        ),
        ValueError,
        "num_layers must be a positive int, got 0",
    ),
    "variable-shapes-size": (
        lambda: vi.VIModule(variable_shapes={"w": (0, 2)}),
        ValueError,
        r"variable_shapes\['w'\] must be a tuple of positive ints or None, "
        r"got \(0, 2\)",
    ),
    "variable-shapes-name": (
        lambda: vi.VIModule(variable_shapes={"1w": (2, 2)}),
        ValueError,
        "variable_shapes keys must be identifiers, got '1w'",
    ),
    # --- targets
    "labels-too-large": (
        lambda: classify(labels(0, 1, 2, 3, 0).long()),
        ValueError,
        r"target labels must lie in \[0, 3\) for 3 classes, got values in \[0, 3\]",
    ),
    "labels-negative": (
        lambda: classify(labels(0, 1, 2, -1, 0).long()),
        ValueError,
        r"target labels must lie in \[0, 3\) for 3 classes, got values in \[-1, 2\]",
    ),
    "labels-fractional": (
        lambda: classify(labels(0.5, 1, 2, 1, 0)),
        ValueError,
        "target must hold integer class labels, got fractions",
    ),
    "labels-shape": (
        lambda: classify(labels(0, 1, 2, 1).long()),
        ValueError,
        r"target of shape \(4,\) does not match predictions of shape \(5,\) "
        r"\(batch\) x 3 \(classes\)",
    ),
    "labels-out-of-range-pyro-mode": (
        lambda: pyro_step(x(), torch.full((5,), 3)),
        ValueError,  # Pyro's validation of the observed site
        r"Expected value argument .* to be within the support "
        r"\(IntegerInterval\(lower_bound=0, upper_bound=2\)\)",
    ),
    "nan-inputs-pyro-mode": (
        lambda: pyro_step(with_first_element(x()), torch.zeros(5).long()),
        ValueError,  # Pyro's validation of the observation's distribution
        r"Expected parameter logits .* to satisfy the constraint",
    ),
    "normal-predictive-one-sample": (
        lambda: regress(torch.randn(5, 3), samples=1),
        ValueError,
        "MeanFieldNormal as predictive distribution .* needs samples >= 2, got 1",
    ),
    "output-without-log-probs": (
        lambda: classification_loss()(torch.randn(2, 5, 3), labels(0, 1, 2, 1, 0)),
        ValueError,
        "KullbackLeiblerLoss needs model_output with log_probs",
    ),
    "output-return-log-probs-false": (
        lambda: classification_loss()(
            vi.VILinear(4, 3, return_log_probs=False)(x()), labels(0, 1, 2, 1, 0)
        ),
        ValueError,
        "KullbackLeiblerLoss needs model_output with log_probs: "
        ".*return_log_probs=True",
    ),
    # --- distributions in the wrong role
    "categorical-as-prior": (
        lambda: vi.VILinear(4, 3, prior=Categorical()),
        UnsupportedDistributionError,
        r"Categorical cannot be used as a prior \(prior\)",
    ),
    "categorical-as-variational": (
        lambda: vi.VILinear(4, 3, variational_distribution=Categorical()),
        UnsupportedDistributionError,
        r"Categorical cannot be used as a variational distribution "
        r"\(variational_distribution\)",
    ),
    "uniform-prior-as-variational": (
        lambda: vi.VILinear(4, 3, variational_distribution=UniformPrior()),
        UnsupportedDistributionError,
        "UniformPrior cannot be used as a variational distribution",
    ),
    "quiet-prior-as-predictive": (
        lambda: vi.KullbackLeiblerLoss(BasicQuietPrior()),
        UnsupportedDistributionError,
        r"BasicQuietPrior cannot be used as a predictive distribution "
        r"\(predictive_distribution\)",
    ),
    "module-as-prior": (
        lambda: vi.VILinear(4, 3, prior=nn.ReLU()),
        UnsupportedDistributionError,
        r"ReLU cannot be used as a prior \(prior\)",
    ),
    "no-closed-form-kl": (
        lambda: vi.AnalyticalKullbackLeiblerLoss(
            vi.VILinear(2, 2, variational_distribution=MeanFieldStudentT()),
            Categorical(),
        ),
        NotImplementedError,
        "no closed form for prior MeanFieldNormal and variational distribution "
        "MeanFieldStudentT; .*Pass divergence_type=",
    ),
    "divergence-type-class": (
        lambda: vi.AnalyticalKullbackLeiblerLoss(
            linear(), Categorical(), divergence_type=vi.NormalNormalDivergence
        ),
        TypeError,
        "divergence_type must be a KullbackLeiblerModule instance, got the class "
        r"NormalNormalDivergence; pass an instance, NormalNormalDivergence\(\)",
    ),
    "normal-std-zero": (
        lambda: MeanFieldNormal(std=0.0),
        ValueError,
        "std must be a positive finite number, got 0.0",
    ),
    "normal-mean-inf": (
        lambda: MeanFieldNormal(mean=float("inf")),
        ValueError,
        "mean must be a finite number, got inf",
    ),
    "categorical-input-type": (
        lambda: Categorical(input_type="softmax"),
        ValueError,
        'input_type must be "logits" or "probs", got \'softmax\'',
    ),
    # --- wrong-length distribution lists
    "prior-list-too-long": (
        lambda: vi.VILinear(4, 3, prior=[MeanFieldNormal()] * 3),
        ValueError,
        r"prior must be one distribution or a list of one per random variable "
        r"\('weight', 'bias'\), got a list of 3",
    ),
    "variational-list-too-short": (
        lambda: vi.VILinear(4, 3, variational_distribution=[MeanFieldNormal()]),
        ValueError,
        r"variational_distribution must be one distribution or a list of one per "
        r"random variable \('weight', 'bias'\), got a list of 1",
    ),
    "prior-list-empty": (
        lambda: vi.VILinear(4, 3, prior=[]),
        ValueError,
        "prior must be one distribution or a list .*got a list of 0",
    ),
    "attention-list-length": (
        lambda: vi.VIMultiheadAttention(8, 2, prior=[MeanFieldNormal()] * 3),
        ValueError,
        r"prior must be one distribution or a list of one per random variable "
        r"\('in_proj_weight', .*'bias_v'\), got a list of 3",
    ),
    "transformer-list": (
        lambda: vi.VITransformerEncoderLayer(8, 2, prior=[MeanFieldNormal()] * 3),
        TypeError,
        "VITransformerEncoderLayer takes one prior for all its layers, got a list",
    ),
    # --- priors and plates
    "pyro-prior-batch-shape": (
        lambda: vi.VILinear(4, 3, prior=dist.Normal(torch.zeros(5), 1.0)),
        ValueError,
        r"the prior Normal\(.*\) of VILinear's random variable 'weight' has batch "
        r"shape \(5,\), which does not broadcast to the variable's shape \(3, 4\)",
    ),
    "pyro-prior-event-shape": (
        lambda: vi.VILinear(4, 3, prior=dist.Normal(torch.zeros(4), 1.0).to_event(1)),
        ValueError,
        r"of VILinear's random variable 'bias' has event shape \(4,\), which is not "
        r"the trailing dimensions of the variable's shape \(3,\)",
    ),
    "pyro-prior-set-later": (
        prior_set_later,
        ValueError,
        r"of site '0\.bias' has batch shape \(5,\), which does not broadcast to the "
        r"variable's shape \(3,\)",
    ),
    "horseshoe-global-scale": (
        lambda: Horseshoe(global_scale=-1.0),
        ValueError,
        "global_scale must be a positive finite number, got -1.0",
    ),
    "max-plate-nesting-too-small": (
        lambda: vectorized_loss(outer=False, max_plate_nesting=0),
        ValueError,
        r"plate 'data' around the network with sites '0\.weight', '0\.bias', "
        r"\.\.\. is at dim=-2, left of the vectorized particle plate "
        r"'num_particles_vectorized' \(dim=-1\): max_plate_nesting=0 is too small "
        r"for the plates around the network; set it to at least 1",
    ),
    "particles-on-a-data-plate": (
        lambda: vectorized_loss(outer=True, max_plate_nesting=2),
        ValueError,
        r"the particles would land at dim=-2, on plate 'outer' \(size 1\), instead "
        r"of at dim=-3. Give the input 2 batch dimension\(s\), one per plate dim "
        r"\(shape \(1, 5, 4\)\)",
    ),
    # --- no random variables where one is needed
    "no-variables-sample": (
        lambda: vi.VIModule().sample_variable("weight"),
        NoVariablesError,
        "VIModule has no random variables to sample",
    ),
    "no-variables-parameters": (
        lambda: vi.VIModule().get_variational_parameters("weight"),
        NoVariablesError,
        "VIModule has no random variables to get",
    ),
    "no-variables-reset": (
        lambda: vi.VIModule().reset_variational_parameters(),
        NoVariablesError,
        "VIModule has no random variables to reset",
    ),
    "no-variables-log-probs": (
        lambda: vi.VIModule().get_log_probs(torch.zeros(2), "weight"),
        NoVariablesError,
        "VIModule has no random variables to score",
    ),
    "variable-is-none": (
        lambda: vi.VILinear(4, 3, bias=False).get_variational_parameters("bias"),
        NoVariablesError,
        "bias is None and has no parameters to get",
    ),
    "unknown-variable": (
        lambda: linear().get_variational_parameters("kernel"),
        KeyError,
        "VILinear has no random variable 'kernel'; its random variables are "
        r"\('weight', 'bias'\)",
    ),
    "no-variables-analytical-kl": (
        lambda: vi.AnalyticalKullbackLeiblerLoss(
            vi.VISequential(nn.Linear(2, 2)), Categorical()
        ),
        ValueError,
        "AnalyticalKullbackLeiblerLoss needs a model with random variables; "
        "VISequential has none",
    ),
    # --- state dicts
    "state-dict-shapes": (
        lambda: load(vi.VILinear(4, 5), linear().state_dict()),
        RuntimeError,
        r"size mismatch for _weight_mean: copying a param with shape "
        r"torch.Size\(\[3, 4\]\) from checkpoint, the shape in current model is "
        r"torch.Size\(\[5, 4\]\)",
    ),
    "state-dict-missing": (
        lambda: load(
            linear(),
            {k: v for k, v in linear().state_dict().items() if "bias" not in k},
        ),
        RuntimeError,
        'Missing key\\(s\\) in state_dict: "_bias_mean", "_bias_log_std"',
    ),
    "state-dict-unexpected": (
        lambda: load(vi.VILinear(4, 3, bias=False), linear().state_dict()),
        RuntimeError,
        'Unexpected key\\(s\\) in state_dict: "_bias_mean", "_bias_log_std"',
    ),
    "state-dict-of-torch-linear": (
        lambda: load(linear(), nn.Linear(4, 3).state_dict()),
        RuntimeError,
        'Missing key\\(s\\) in state_dict: "_weight_mean".*\n.*'
        'Unexpected key\\(s\\) in state_dict: "weight", "bias"',
    ),
    # --- the natural-gradient optimizer
    "optimizer-of-parameters": (
        lambda: VariationalOnlineNewton(linear().parameters()),  # type: ignore[arg-type]
        TypeError,
        "model must be an nn.Module .* got generator",
    ),
    "optimizer-without-factors": (
        lambda: VariationalOnlineNewton(nn.Linear(4, 3)),
        ValueError,
        "model \\(Linear\\) has no trainable mean-field Gaussian factor",
    ),
    "optimizer-lr-zero": (
        lambda: natural_gradient(lr=0.0),
        ValueError,
        "lr must be a positive finite number, got 0.0",
    ),
    "optimizer-precision-lr-nan": (
        lambda: natural_gradient(precision_lr=float("nan")),
        ValueError,
        "precision_lr must be a positive finite number, got nan",
    ),
    "optimizer-momentum-one": (
        lambda: natural_gradient(momentum=1.0),
        ValueError,
        "momentum must be a number in \\[0, 1\\), got 1.0",
    ),
    "optimizer-damping-negative": (
        lambda: natural_gradient(damping=-0.1),
        ValueError,
        "damping must be a finite number >= 0, got -0.1",
    ),
    "optimizer-trust-radius-zero": (
        lambda: natural_gradient(trust_radius=0.0),
        ValueError,
        "trust_radius must be a positive finite number, got 0.0",
    ),
    "optimizer-heat-zero": (
        lambda: natural_gradient(heat=0.0),
        ValueError,
        "heat must be a positive finite number, got 0.0",
    ),
    "optimizer-heat-bool": (
        lambda: natural_gradient(heat=True),
        ValueError,
        "heat must be a positive finite number, got True",
    ),
    "optimizer-nan-gradient": (
        step_with_a_nan_gradient,
        ValueError,
        "the gradient of '1.weight' \\(its mean or log_std\\) holds NaN or inf",
    ),
    "pyro-optimizer-others": (
        lambda: PyroVariationalOnlineNewton(linear(), others=torch.optim.Adam),  # type: ignore[arg-type]
        TypeError,
        "others must be a pyro.optim.PyroOptim .* got type",
    ),
    "pyro-optimizer-unknown-parameter": (
        svi_step_with_a_pyro_param,
        ValueError,
        "SVI also found \\['noise_scale'\\]: pass others=pyro.optim.Adam",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_clear_error(case: str) -> None:
    thunk, exception, pattern = CASES[case]
    with pytest.raises(exception) as info:
        thunk()
    assert type(info.value) is exception, type(info.value)
    message = str(info.value)
    if isinstance(info.value, KeyError):
        message = info.value.args[0]
    assert re.search(pattern, message, flags=re.DOTALL), message


# --------------------------------------------------------------------------- fixes
# The library currently gives an unclear error or silently proceeds. Each case
# asserts the behaviour proposed in docs/reliability.md ("Proposed fixes").
FIX_DTYPE = "F1: check the input's dtype and device against the layer's parameters"
FIX_FINITE = "F2: the losses check target and model_output for NaN/inf and devices"
FIX_SHAPE = "F3: MeanFieldNormal as predictive distribution checks the target shape"
FIX_CLASS = "F4: a distribution class instead of an instance names the argument"
FIX_KEY = "F5: sample_variable of an unknown name raises the KeyError of its siblings"
FIX_EMPTY = "F6: a VISequential without VIModules returns zero log-probs"
FIX_META = "F7: the prior's Pyro distribution is built without argument validation"

PROPOSED: dict[str, tuple[str, Callable[[], Any], type[BaseException], str]] = {
    "input-dtype-linear": (
        FIX_DTYPE,
        lambda: linear()(x().double()),
        TypeError,
        r"VILinear expects input of dtype torch\.float32 .*got torch\.float64",
    ),
    "input-integer-linear": (
        FIX_DTYPE,
        lambda: linear()(torch.ones(5, 4, dtype=torch.long)),
        TypeError,
        r"VILinear expects input of dtype torch\.float32 .*got torch\.int64",
    ),
    "input-dtype-model-float64": (
        FIX_DTYPE,
        lambda: vi.VILinear(4, 3, dtype=torch.float64)(x()),
        TypeError,
        r"VILinear expects input of dtype torch\.float64 .*got torch\.float32",
    ),
    "input-dtype-conv": (
        FIX_DTYPE,
        lambda: vi.VIConv2d(2, 3, 3)(torch.randn(1, 2, 5, 5, dtype=torch.float64)),
        TypeError,
        r"VIConv2d expects input of dtype torch\.float32 .*got torch\.float64",
    ),
    "input-dtype-attention": (
        FIX_DTYPE,
        lambda: (
            attention((2, 3, 8), (2, 3, 8), (2, 3, 8))
            if False
            else vi.VIMultiheadAttention(8, 2)(
                *(torch.randn(2, 3, 8, dtype=torch.float64),) * 3
            )
        ),
        TypeError,
        r"VIMultiheadAttention expects query of dtype torch\.float32 .*got "
        r"torch\.float64",
    ),
    "input-device-linear": (
        FIX_DTYPE,
        lambda: linear()(torch.randn(5, 4, device="meta")),
        ValueError,
        r"VILinear expects input on device cpu .*got meta",
    ),
    "input-device-conv": (
        FIX_DTYPE,  # silently returns a meta tensor today
        lambda: vi.VIConv2d(2, 3, 3)(torch.randn(1, 2, 5, 5, device="meta")),
        ValueError,
        r"VIConv2d expects input on device cpu .*got meta",
    ),
    "input-device-attention": (
        FIX_DTYPE,
        lambda: vi.VIMultiheadAttention(8, 2)(
            *(torch.randn(2, 3, 8, device="meta"),) * 3
        ),
        ValueError,
        r"VIMultiheadAttention expects query on device cpu .*got meta",
    ),
    "target-device": (
        FIX_FINITE,
        lambda: classify(torch.zeros(5, dtype=torch.long, device="meta")),
        ValueError,
        r"target must be on the device of model_output \(cpu\), got meta",
    ),
    "nan-inputs": (
        FIX_FINITE,  # silently gives a NaN loss today
        lambda: classify(labels(0, 1, 2, 1, 0).long(), inputs=with_first_element(x())),
        ValueError,
        "model_output holds NaN or inf",
    ),
    "inf-inputs": (
        FIX_FINITE,  # silently gives a NaN loss today
        lambda: regress(
            torch.randn(5, 3), inputs=with_first_element(x(), float("inf"))
        ),
        ValueError,
        "model_output holds NaN or inf",
    ),
    "nan-regression-target": (
        FIX_FINITE,  # silently gives a NaN loss today
        lambda: regress(with_first_element(torch.randn(5, 3))),
        ValueError,
        r"target must be finite, got 1 NaN or inf value",
    ),
    "inf-regression-target": (
        FIX_FINITE,  # silently gives an inf loss today
        lambda: regress(with_first_element(torch.randn(5, 3), float("-inf"))),
        ValueError,
        r"target must be finite, got 1 NaN or inf value",
    ),
    "nan-labels": (
        FIX_FINITE,  # today: "got fractions"
        lambda: classify(with_first_element(labels(0, 1, 2, 1, 0))),
        ValueError,
        r"target must be finite, got 1 NaN or inf value",
    ),
    "inf-labels": (
        FIX_FINITE,  # today: "got values in [-9223372036854775808, 2]"
        lambda: classify(with_first_element(labels(0, 1, 2, 1, 0), float("inf"))),
        ValueError,
        r"target must be finite, got 1 NaN or inf value",
    ),
    "regression-target-shape": (
        FIX_SHAPE,  # today torch's broadcasting error, naming no argument
        lambda: regress(torch.randn(5, 2)),
        ValueError,
        r"target of shape \(5, 2\) does not match predictions of shape \(5, 3\)",
    ),
    "regression-target-broadcasts": (
        FIX_SHAPE,  # today (5,) against (5, 1) silently broadcasts to (5, 5)
        lambda: vi.KullbackLeiblerLoss(MeanFieldNormal(), dataset_size=100)(
            vi.VILinear(4, 1)(x()), torch.randn(5)
        ),
        ValueError,
        r"target of shape \(5,\) does not match predictions of shape \(5, 1\)",
    ),
    "prior-class-not-instance": (
        FIX_CLASS,  # today: "_RoleMeta cannot be used as a prior (prior)"
        lambda: vi.VILinear(4, 3, prior=MeanFieldNormal),
        UnsupportedDistributionError,
        r"prior must be a distribution instance, got the class MeanFieldNormal; "
        r"pass MeanFieldNormal\(\)",
    ),
    "predictive-class-not-instance": (
        FIX_CLASS,  # today: "_RoleMeta cannot be used as a predictive distribution"
        lambda: vi.KullbackLeiblerLoss(Categorical),
        UnsupportedDistributionError,
        r"predictive_distribution must be a distribution instance, got the class "
        r"Categorical; pass Categorical\(\)",
    ),
    "sample-unknown-variable": (
        FIX_KEY,  # today: KeyError('kernel')
        lambda: linear().sample_variable("kernel"),
        KeyError,
        "VILinear has no random variable 'kernel'; its random variables are "
        r"\('weight', 'bias'\)",
    ),
}


@pytest.mark.parametrize("case", list(PROPOSED))
def test_proposed_error(case: str) -> None:
    _, thunk, exception, pattern = PROPOSED[case]
    with pytest.raises(exception) as info:
        thunk()
    assert type(info.value) is exception, type(info.value)
    message = str(info.value)
    if isinstance(info.value, KeyError):
        message = info.value.args[0]
    assert re.search(pattern, message, flags=re.DOTALL), message


def test_sequential_without_variables_returns_zero_log_probs() -> None:
    """compatibility.md: "A model without any random variable returns zero
    log-probabilities". Today a VISequential of plain modules returns none, and
    KullbackLeiblerLoss then asks for return_log_probs=True, which was never off."""
    net = vi.VISequential(nn.Linear(4, 3))
    output = net(x(), samples=2)
    assert output.log_probs is not None
    torch.testing.assert_close(output.log_probs, torch.zeros(2, 2))
    loss = classification_loss()(output, labels(0, 1, 2, 1, 0).long())
    assert torch.isfinite(loss)


def test_model_on_meta_device_runs_on_meta_input() -> None:
    """As torch.nn: a model built on "meta" computes output shapes without data.
    Today the prior's pyro Normal validates its (meta) scale with .item()."""
    net = vi.VILinear(4, 3, device="meta")
    output = net(torch.randn(5, 4, device="meta"), samples=2)
    assert output.shape == (2, 5, 3) and output.device.type == "meta"


# ------------------------------------------------------- accepted, as in torch.nn
def test_state_dict_of_another_dtype_is_cast_as_torch_does() -> None:
    source = vi.VILinear(4, 3, dtype=torch.float64)
    target = linear()
    reference = nn.Linear(4, 3)
    reference.load_state_dict(
        {"weight": source._weight_mean, "bias": source._bias_mean}
    )
    target.load_state_dict(source.state_dict())
    assert target._weight_mean.dtype == torch.float32
    assert torch.equal(target._weight_mean, reference.weight)
    assert torch.equal(target._weight_mean, source._weight_mean.float())


def test_state_dict_not_strict_reports_keys_as_torch_does() -> None:
    result = load(vi.VILinear(4, 3, bias=False), linear().state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys == ["_bias_mean", "_bias_log_std"]


def test_every_case_is_in_the_table_of_the_docs() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    cited = set(re.findall(r"\| `([a-z0-9_-]+)` \|$", page, flags=re.MULTILINE))
    tests = {name for name in globals() if name.startswith("test_")} - {
        "test_bad_input_raises_a_clear_error",
        "test_proposed_error",
        "test_every_case_is_in_the_table_of_the_docs",
    }
    assert cited == set(CASES) | set(PROPOSED) | tests
