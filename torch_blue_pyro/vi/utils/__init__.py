"""Utilities of the torch_blue API: errors, the output type, global switches."""

from .errors import NoVariablesError, UnsupportedDistributionError
from .norm_constants import use_norm_constants
from .vi_return import VIReturn

__all__ = [
    "NoVariablesError",
    "UnsupportedDistributionError",
    "VIReturn",
    "use_norm_constants",
]
