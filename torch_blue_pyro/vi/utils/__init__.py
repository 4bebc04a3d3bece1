"""Utilities of the torch_blue API: errors, the output type, global switches."""

from .errors import NoVariablesError, UnsupportedDistributionError
from .norm_constants import use_norm_constants
from .post_init_metaclass import PostInitCallMeta
from .validation import value_checks_enabled
from .vi_return import VIReturn

__all__ = [
    "NoVariablesError",
    "PostInitCallMeta",
    "UnsupportedDistributionError",
    "VIReturn",
    "use_norm_constants",
    "value_checks_enabled",
]
