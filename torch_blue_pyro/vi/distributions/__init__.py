"""The torch_blue distributions: priors, variational and predictive distributions."""

from .base import Distribution, PredictiveDistribution, Prior, VariationalDistribution
from .categorical import Categorical
from .normal import MeanFieldNormal

Normal = MeanFieldNormal

__all__ = [
    "Categorical",
    "Distribution",
    "MeanFieldNormal",
    "Normal",
    "PredictiveDistribution",
    "Prior",
    "VariationalDistribution",
]
