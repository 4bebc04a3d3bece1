"""The torch_blue API, backed by Pyro: ``from torch_blue_pyro import vi``."""

from . import distributions, utils
from .base import VIModule
from .kl_loss import KullbackLeiblerLoss
from .linear import VILinear
from .sequential import VIResidualConnection, VISequential
from .utils.common_types import VIkwargs
from .utils.convert import convert_to_vimodule
from .utils.vi_return import VIReturn

__all__ = [
    "KullbackLeiblerLoss",
    "VILinear",
    "VIModule",
    "VIResidualConnection",
    "VIReturn",
    "VISequential",
    "VIkwargs",
    "convert_to_vimodule",
    "distributions",
    "utils",
]
