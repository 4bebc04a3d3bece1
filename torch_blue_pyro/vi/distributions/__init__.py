"""The torch_blue distributions: priors, variational and predictive distributions."""

from .base import Distribution, PredictiveDistribution, Prior, VariationalDistribution
from .categorical import Categorical
from .heteroscedastic import HeteroscedasticNormal
from .hierarchical import HierarchicalPrior, Horseshoe, HyperVariable
from .non_bayesian import NonBayesian, UniformPrior
from .normal import MeanFieldNormal
from .pyro_prior import PyroPrior
from .quiet import BasicQuietPrior
from .student_t import MeanFieldStudentT

Normal = MeanFieldNormal
StudentT = MeanFieldStudentT

__all__ = [
    "BasicQuietPrior",
    "Categorical",
    "Distribution",
    "HeteroscedasticNormal",
    "HierarchicalPrior",
    "Horseshoe",
    "HyperVariable",
    "MeanFieldNormal",
    "MeanFieldStudentT",
    "NonBayesian",
    "Normal",
    "PredictiveDistribution",
    "PyroPrior",
    "Prior",
    "StudentT",
    "UniformPrior",
    "VariationalDistribution",
]
