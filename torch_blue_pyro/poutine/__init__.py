"""Effect handlers of torch_blue_pyro, in the style of :mod:`pyro.poutine`."""

from .runtime import (
    PARTICLE_PLATES,
    TransparentMessenger,
    in_pyro_inference,
    local_param,
    weight_scope,
)
from .variational import VariationalMessenger, VariationalSite

__all__ = [
    "PARTICLE_PLATES",
    "TransparentMessenger",
    "VariationalMessenger",
    "VariationalSite",
    "in_pyro_inference",
    "local_param",
    "weight_scope",
]
