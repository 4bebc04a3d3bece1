"""Utilities of the torch_blue API: errors, the output type, global switches."""

from . import init
from .errors import NoVariablesError, UnsupportedDistributionError
from .post_init_metaclass import PostInitCallMeta
from .use_norm_constants import use_norm_constants
from .validation import value_checks_enabled
from .vi_return import VIReturn

__all__ = [
    "NoVariablesError",
    "PostInitCallMeta",
    "UnsupportedDistributionError",
    "VIReturn",
    "init",
    "use_norm_constants",
    "value_checks_enabled",
]
