"""convert_to_vimodule: make an existing ``torch.nn`` model Bayesian, in place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .. import base as vi_base
from .. import conv, linear, sequential, transformer
from ..base import VIModule
from ..distributions import MeanFieldNormal, Prior, VariationalDistribution

__all__ = ["ban_convert", "convert_norms", "convert_to_vimodule"]

# Modules without parameters: converting them would change nothing.
_PARAMETERLESS: frozenset[type[nn.Module]] = frozenset(
    getattr(nn, name)
    for name in (
        "Identity Threshold ReLU RReLU Hardtanh ReLU6 Sigmoid Hardsigmoid Tanh SiLU "
        "Mish Hardswish ELU CELU SELU GLU GELU Hardshrink LeakyReLU LogSigmoid "
        "Softplus Softshrink Softsign Tanhshrink Softmin Softmax Softmax2d "
        "LogSoftmax PairwiseDistance CosineSimilarity Dropout Dropout1d Dropout2d "
        "Dropout3d AlphaDropout FeatureAlphaDropout Flatten Unflatten Fold Unfold "
        "CircularPad1d CircularPad2d CircularPad3d ConstantPad1d ConstantPad2d "
        "ConstantPad3d ReflectionPad1d ReflectionPad2d ReflectionPad3d "
        "ReplicationPad1d ReplicationPad2d ReplicationPad3d ZeroPad1d ZeroPad2d "
        "ZeroPad3d PixelShuffle PixelUnshuffle MaxPool1d MaxPool2d MaxPool3d "
        "MaxUnpool1d MaxUnpool2d MaxUnpool3d AvgPool1d AvgPool2d AvgPool3d "
        "FractionalMaxPool2d FractionalMaxPool3d LPPool1d LPPool2d LPPool3d "
        "AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d AdaptiveAvgPool1d "
        "AdaptiveAvgPool2d AdaptiveAvgPool3d Upsample UpsamplingNearest2d "
        "UpsamplingBilinear2d"
    ).split()
    if hasattr(nn, name)
)
# Normalization layers stabilize training; by default they stay deterministic.
_NORMS: frozenset[type[nn.Module]] = frozenset(
    getattr(nn, name)
    for name in (
        "BatchNorm1d LazyBatchNorm1d BatchNorm2d LazyBatchNorm2d BatchNorm3d "
        "LazyBatchNorm3d SyncBatchNorm InstanceNorm1d LazyInstanceNorm1d "
        "InstanceNorm2d LazyInstanceNorm2d InstanceNorm3d LazyInstanceNorm3d "
        "LocalResponseNorm CrossMapLRN2d LayerNorm GroupNorm RMSNorm"
    ).split()
    if hasattr(nn, name)
)

_BAN_MODES = ("ban", "submodule", "reuse", "replace")
_banned: dict[str, set[type[nn.Module]]] = {
    "ban": set(_PARAMETERLESS | _NORMS),
    "submodule": set(),
    "reuse": set(),
    "replace": set(),
}
_generated_classes: dict[type[nn.Module], type[VIModule]] = {}


def convert_norms(mode: bool = True) -> None:
    """Choose whether :func:`convert_to_vimodule` converts ``torch.nn`` norm layers.

    Parameters
    ----------
    mode: bool, default: True
        ``True`` converts norm layers too; ``False`` restores the default of keeping
        them deterministic.
    """
    if mode:
        _banned["ban"].difference_update(_NORMS)
    else:
        _banned["ban"].update(_NORMS)


def ban_convert(
    class_names: type[nn.Module] | Iterable[type[nn.Module]],
    ban_mode: str = "ban",
    unban: bool = False,
) -> None:
    """Exclude module classes from (parts of) :func:`convert_to_vimodule`.

    Parameters
    ----------
    class_names: type or iterable of types
        The module classes (exact classes, not their subclasses).
    ban_mode: {"ban", "submodule", "reuse", "replace"}, default: "ban"
        ``"ban"``: leave such modules deterministic, but convert their submodules;
        ``"submodule"``: leave them and all their submodules deterministic;
        ``"reuse"``: make a new Bayesian class for every instance instead of sharing
        one per class; ``"replace"``: never swap in this library's built-in layer
        (``nn.Linear`` -> :class:`~torch_blue_pyro.vi.VILinear`), convert generically.
    unban: bool, default: False
        Remove the classes from that list instead.

    Raises
    ------
    ValueError
        If ``ban_mode`` is unknown.
    """
    if ban_mode not in _BAN_MODES:
        raise ValueError(f"ban_mode must be one of {_BAN_MODES}, got {ban_mode!r}")
    classes = [class_names] if isinstance(class_names, type) else list(class_names)
    if unban:
        _banned[ban_mode].difference_update(classes)
    else:
        _banned[ban_mode].update(classes)


def convert_to_vimodule(
    module: nn.Module,
    keep_weights: bool = False,
    variational_distribution: VariationalDistribution
    | Sequence[VariationalDistribution] = MeanFieldNormal(),
    prior: Prior | Sequence[Prior] = MeanFieldNormal(),
    rescale_prior: bool = False,
    kaiming_initialization: bool = True,
    prior_initialization: bool = False,
    return_log_probs: bool = True,
) -> None:
    """Turn a ``torch.nn`` model into a Bayesian one, in place.

    Every module is converted bottom-up by swapping its class: a ``torch.nn`` layer
    with a counterpart here becomes it (``nn.Linear`` -> ``VILinear``,
    ``nn.Sequential`` -> ``VISequential``); any other module becomes a generated
    subclass of :class:`~torch_blue_pyro.vi.VIModule` and its own class (named
    ``AVI<Name>``), whose ``forward`` runs once per weight sample under
    :func:`torch.vmap`. Each ``nn.Parameter`` becomes a random variable of the same
    name and shape, with variational parameters on the original's device and dtype.
    Parameter-free modules and norm layers are left as they are (see
    :func:`ban_convert`, :func:`convert_norms`).

    The converted model is used like any torch_blue model: ``model(x, samples=S)``.
    Wrap it in ``DistributedDataParallel`` and create the optimizer after converting.

    Parameters
    ----------
    module: nn.Module
        The model; it is modified in place.
    keep_weights: bool, default: False
        Start each variational mean (the primary parameter) at the trained weight
        instead of a fresh initialization.
    variational_distribution, prior, rescale_prior, kaiming_initialization
        As for :class:`~torch_blue_pyro.vi.VIModule`, for every converted module.
    prior_initialization, return_log_probs
        As for :class:`~torch_blue_pyro.vi.VIModule`.
    """
    if type(module) in _banned["submodule"]:
        return
    for child in module.children():
        convert_to_vimodule(
            child,
            keep_weights=keep_weights,
            variational_distribution=variational_distribution,
            prior=prior,
            rescale_prior=rescale_prior,
            kaiming_initialization=kaiming_initialization,
            prior_initialization=prior_initialization,
            return_log_probs=return_log_probs,
        )
    if type(module) in _banned["ban"] or isinstance(module, VIModule):
        return
    parameters = dict(module._parameters)
    module.__class__ = _bayesian_class(type(module))
    module._parameters = {}
    shapes = {
        name: None if value is None else tuple(value.shape)
        for name, value in parameters.items()
    }
    present = [value for value in parameters.values() if value is not None]
    placement = {(value.device, value.dtype) for value in present}
    device, dtype = placement.pop() if len(placement) == 1 else (None, None)
    VIModule.__init__(
        module,  # type: ignore[arg-type]
        variable_shapes=shapes if present else None,
        variational_distribution=variational_distribution,
        prior=prior,
        rescale_prior=rescale_prior,
        kaiming_initialization=kaiming_initialization,
        prior_initialization=prior_initialization,
        return_log_probs=return_log_probs,
        device=device,
        dtype=dtype,
        convert_overwrite=True,
    )
    converted: VIModule = module  # type: ignore[assignment]
    for name, original in parameters.items():
        if original is None:
            continue
        values = converted.get_variational_parameters(name)
        with torch.no_grad():
            for value in values:
                value.data = value.data.to(device=original.device, dtype=original.dtype)
            if keep_weights:
                values[0].copy_(original)


def _bayesian_class(cls: type[nn.Module]) -> type[VIModule]:
    """The Bayesian class a module of class ``cls`` becomes."""
    builtin = _builtin_counterpart(cls)
    if builtin is not None and cls not in _banned["replace"]:
        return builtin
    if cls in _generated_classes and cls not in _banned["reuse"]:
        return _generated_classes[cls]
    generated = type(
        _free_name("AVI" + cls.__name__),
        (VIModule, cls),
        {"forward": cls.forward, "__module__": __name__},
    )
    # Registered by name, so pickle finds the class of a converted model.
    globals()[generated.__name__] = generated
    _generated_classes.setdefault(cls, generated)
    return generated


def _free_name(name: str) -> str:
    """``name``, or ``name_2``, ``name_3``, ...: the first one no class here holds.

    Two classes of the same name (``Block`` in two modules, or a new class per
    instance with ``ban_convert(..., "reuse")``) get generated classes of different
    names, each of which pickle finds.
    """
    candidate, number = name, 1
    while candidate in globals():
        number += 1
        candidate = f"{name}_{number}"
    return candidate


#: This library's layers, by name: ``nn.X`` maps to ``VIX`` where one exists.
_LAYERS: dict[str, type[VIModule]] = {
    name: layer
    for module in (vi_base, linear, conv, sequential, transformer)
    for name, layer in vars(module).items()
    if name.startswith("VI") and isinstance(layer, type) and issubclass(layer, VIModule)
}


def _builtin_counterpart(cls: type[nn.Module]) -> type[VIModule] | None:
    """The layer of this library for a ``torch.nn`` class, if there is one.

    A class of ``torch.nn`` itself maps by name (``nn.Linear`` -> ``VILinear``), and
    so does a torch-internal subclass that keeps its parent's ``forward`` (the
    attention's ``NonDynamicallyQuantizableLinear``). User classes never do.
    """
    if not cls.__module__.startswith("torch."):
        return None
    for base in cls.__mro__:
        if getattr(nn, base.__name__, None) is not base:
            continue
        if base is not cls and cls.forward is not base.forward:
            return None
        return _LAYERS.get("VI" + base.__name__)
    return None
