"""Effect handlers of torch_blue_pyro, in the style of :mod:`pyro.poutine`."""

from .context import ForwardContext, current_context
from .estimators import (
    AffineOperation,
    EstimatorMessenger,
    FlipoutMessenger,
    GaussianSite,
    LocalReparameterizationMessenger,
    active_estimator,
    affine,
    flipout,
    local_reparameterization,
)
from .runtime import (
    PARTICLE_PLATES,
    TransparentMessenger,
    check_particles_align,
    check_replayed,
    in_pyro_inference,
    local_param,
    weight_scope,
)
from .variational import VariationalMessenger, VariationalSite

__all__ = [
    "AffineOperation",
    "EstimatorMessenger",
    "FlipoutMessenger",
    "ForwardContext",
    "GaussianSite",
    "LocalReparameterizationMessenger",
    "PARTICLE_PLATES",
    "TransparentMessenger",
    "active_estimator",
    "affine",
    "check_particles_align",
    "check_replayed",
    "current_context",
    "flipout",
    "VariationalMessenger",
    "VariationalSite",
    "in_pyro_inference",
    "local_param",
    "local_reparameterization",
    "weight_scope",
]
