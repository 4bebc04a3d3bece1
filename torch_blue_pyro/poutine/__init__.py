"""Effect handlers of torch_blue_pyro, in the style of :mod:`pyro.poutine`."""

from .runtime import TransparentMessenger, in_pyro_inference, local_param
from .variational import VariationalMessenger, VariationalSite

__all__ = [
    "TransparentMessenger",
    "VariationalMessenger",
    "VariationalSite",
    "in_pyro_inference",
    "local_param",
]
