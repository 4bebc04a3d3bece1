"""Every private Pyro name this library uses, in one place.

Pyro's public API has no way to do a few things this library needs: look at the
stack of active handlers, name sites exactly as :class:`~pyro.nn.PyroModule` does,
give a module the state ``PyroModule.__init__`` sets, or name a tensor for
:mod:`pyro.optim` without putting it in the global param store. Those go through
the private names below, and only here: every other module imports them from this
one. Each comes with why the public API does not serve.

Checked with pyro-ppl 1.9.1 and 1.9.2 (the supported range, ``pyro-ppl>=1.9.1``,
is what CI tests). A Pyro release that moves or renames one of them makes
``import torch_blue_pyro`` fail with an :class:`ImportError` that names it and the
installed Pyro version, rather than an ``AttributeError`` deep inside a call; the
test ``tests/test_pyro_compat.py`` runs the same check.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import pyro

#: Each private name, by module: ``(module, attribute, why the public API does not
#: serve)``. ``_Context``'s ``active`` and the param store's
#: ``_param_to_name`` are checked as attributes of the objects.
PRIVATE_NAMES: tuple[tuple[str, str, str], ...] = (
    (
        "pyro.poutine.runtime",
        "_PYRO_STACK",
        "the active handlers: the mode (Pyro or torch_blue) depends on which are "
        "active, and weight sites are drawn outside the data plates by hiding those "
        "frames; Pyro has no public accessor for the stack",
    ),
    (
        "pyro.poutine.runtime",
        "_PYRO_PARAM_STORE",
        "its _param_to_name map names a module's own parameter for pyro.optim's "
        "per-parameter state without storing the tensor (pyro.param would store it "
        "globally, shared by every model with the same site names)",
    ),
    (
        "pyro.nn.module",
        "_make_name",
        "the site names PyroModule gives its submodules' sites; this library names "
        "sites of modules inside plain nn.Module containers the same way",
    ),
    (
        "pyro.nn.module",
        "_Context",
        "the per-call cache PyroModule shares between a module and its submodules "
        "(its .active tells a forward pass from a read outside one); a module "
        "turned into a PyroModule without PyroModule.__init__ (convert_to_vimodule, "
        "unpickling) needs a fresh one",
    ),
    (
        "pyro.infer.predictive",
        "_predictive_vectorize_plate_name",
        "the name of Predictive(parallel=True)'s particle plate, which stacks "
        "draws, not data points; Pyro exports no constant for it",
    ),
)

#: The private state ``PyroModule.__init__`` sets on a module: site names are read
#: from ``_pyro_name`` and the call cache from ``_pyro_context``, and a module that
#: becomes a PyroModule without that ``__init__`` (``convert_to_vimodule``,
#: unpickling) gets all four. PyroModule has no public accessor for either.
PYRO_MODULE_STATE = ("_pyro_name", "_pyro_context", "_pyro_params", "_pyro_samples")

#: The supported Pyro releases against which the names above were checked.
CHECKED_PYRO_VERSIONS = ("1.9.1", "1.9.2")


def missing_private_names() -> list[str]:
    """The private Pyro names (``module.attribute``) the installed Pyro lacks."""
    missing = []
    found: dict[str, Any] = {}
    for module_name, attribute, _ in PRIVATE_NAMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        if not hasattr(module, attribute):
            missing.append(f"{module_name}.{attribute}")
        else:
            found[attribute] = getattr(module, attribute)
    if "_Context" in found:
        context = found["_Context"]()
        if not hasattr(context, "active"):
            missing.append("pyro.nn.module._Context().active")
    state = pyro.nn.PyroModule().__dict__
    missing += [f"PyroModule().{key}" for key in PYRO_MODULE_STATE if key not in state]
    store = found.get("_PYRO_PARAM_STORE")
    if store is not None and not hasattr(store, "_param_to_name"):
        missing.append("pyro.poutine.runtime._PYRO_PARAM_STORE._param_to_name")
    return missing


def _check() -> None:
    missing = missing_private_names()
    if missing:
        raise ImportError(
            f"torch_blue_pyro needs Pyro internals that pyro-ppl {pyro.__version__} "
            f"lacks: {', '.join(missing)}. It was checked with pyro-ppl "
            f"{', '.join(CHECKED_PYRO_VERSIONS)}; install one of those "
            "(pip install 'pyro-ppl==1.9.2') or a torch_blue_pyro release that "
            "supports your Pyro."
        )


_check()

# The names themselves; past the check, these imports cannot fail.
from pyro.infer.predictive import (  # noqa: E402
    _predictive_vectorize_plate_name as PREDICTIVE_PARTICLE_PLATE,
)
from pyro.nn.module import _Context as PyroModuleContext  # noqa: E402
from pyro.nn.module import _make_name as site_name  # noqa: E402
from pyro.poutine.runtime import _PYRO_PARAM_STORE  # noqa: E402
from pyro.poutine.runtime import _PYRO_STACK as PYRO_STACK  # noqa: E402

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "PREDICTIVE_PARTICLE_PLATE",
    "PYRO_STACK",
    "PyroModuleContext",
    "add_pyro_module_state",
    "module_context",
    "module_site_prefix",
    "name_parameter",
    "share_site_prefix",
    "site_name",
]


def name_parameter(value: Tensor, name: str) -> None:
    """Let :mod:`pyro.optim` name ``value``'s state ``name``; nothing is stored."""
    _PYRO_PARAM_STORE._param_to_name[value] = name


def module_site_prefix(module: object) -> str:
    """The prefix of a PyroModule's site names (``""`` for an outermost module)."""
    return str(module.__dict__["_pyro_name"])


def module_context(module: nn.Module) -> PyroModuleContext:
    """The per-call cache a PyroModule shares with its submodules."""
    return module.__dict__["_pyro_context"]


def share_site_prefix(
    module: nn.Module, prefix: str, context: PyroModuleContext
) -> None:
    """Name ``module``'s sites under ``prefix`` and let it share ``context``."""
    module.__dict__["_pyro_name"] = prefix
    module.__dict__["_pyro_context"] = context


def add_pyro_module_state(module: nn.Module) -> None:
    """Give an initialized ``nn.Module`` the state ``PyroModule.__init__`` would set."""
    state = module.__dict__
    state["_pyro_name"] = ""
    state["_pyro_context"] = PyroModuleContext()
    state["_pyro_params"] = OrderedDict()
    state["_pyro_samples"] = OrderedDict()
