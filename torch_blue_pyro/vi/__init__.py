"""The torch_blue API, backed by Pyro: ``from torch_blue_pyro import vi``."""

from . import distributions, utils
from .analytical_kl_loss import (
    AnalyticalKullbackLeiblerLoss,
    KullbackLeiblerModule,
    NonBayesianDivergence,
    NormalNormalDivergence,
    UniformNormalDivergence,
)
from .base import VIModule
from .conv import VIConv1d, VIConv2d, VIConv3d
from .kl_loss import KullbackLeiblerLoss
from .linear import VILinear
from .sequential import VIResidualConnection, VISequential
from .transformer import (
    VIMultiheadAttention,
    VITransformer,
    VITransformerDecoder,
    VITransformerDecoderLayer,
    VITransformerEncoder,
    VITransformerEncoderLayer,
)
from .utils.common_types import VIkwargs
from .utils.convert import convert_to_vimodule
from .utils.vi_return import VIReturn

__all__ = [
    "AnalyticalKullbackLeiblerLoss",
    "KullbackLeiblerLoss",
    "KullbackLeiblerModule",
    "NonBayesianDivergence",
    "NormalNormalDivergence",
    "VIConv1d",
    "VIConv2d",
    "VIConv3d",
    "VILinear",
    "VIModule",
    "VIMultiheadAttention",
    "VIResidualConnection",
    "VIReturn",
    "VISequential",
    "VITransformer",
    "VITransformerDecoder",
    "VITransformerDecoderLayer",
    "VITransformerEncoder",
    "VITransformerEncoderLayer",
    "UniformNormalDivergence",
    "VIkwargs",
    "convert_to_vimodule",
    "distributions",
    "utils",
]
