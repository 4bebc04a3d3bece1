"""Effect handlers of torch_blue_pyro, in the style of :mod:`pyro.poutine`."""

from .estimators import (
    EstimatorMessenger,
    FlipoutMessenger,
    LocalReparameterizationMessenger,
    active_estimator,
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
    "EstimatorMessenger",
    "FlipoutMessenger",
    "LocalReparameterizationMessenger",
    "PARTICLE_PLATES",
    "TransparentMessenger",
    "active_estimator",
    "check_particles_align",
    "check_replayed",
    "flipout",
    "VariationalMessenger",
    "VariationalSite",
    "in_pyro_inference",
    "local_param",
    "local_reparameterization",
    "weight_scope",
]
