"""Everything only torch_blue 0.9 needs, in one place, one entry point per concern.

The distribution and layer classes are written for torch_blue 1.1's API; these
adapt what 0.9 code brings to them:

* **calling convention**: :func:`as_parameter_tuple` takes a distribution's
  parameters as 1.1's one tuple or as 0.9's unpacked arguments;
* **role flags**: :class:`RoleMeta`, the distributions' metaclass, turns a class
  that declares ``is_prior = True`` (and so on) into a subclass of those roles and
  adapts its methods (see its docstring); :class:`RoleFlag` gives 1.1-style classes
  the flags as plain bools, and :func:`role_hook` lets a flag set to ``False``
  remove a role;
* **checkpoints**: :func:`upgrade_checkpoint` renames the state-dict keys of 0.9's
  attention and transformer layers (``ATTENTION_KEYS``, ``FEEDFORWARD_KEYS``) to
  this library's.

Nothing here imports the rest of ``vi`` except the post-init metaclass, so the
distributions and the layers can import it.
"""

from __future__ import annotations

import functools
from abc import update_abstractmethods
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from .utils.post_init_metaclass import PostInitCallMeta


def as_parameter_tuple(parameters: tuple[Any, ...]) -> tuple[Tensor, ...]:
    """Accept torch_blue 1.1's ``f((a, b))`` and 0.9's ``f(a, b)`` call styles."""
    if len(parameters) == 1 and isinstance(parameters[0], (tuple, list)):
        return tuple(parameters[0])
    return tuple(parameters)


ROLE_FLAGS = ("is_prior", "is_variational_distribution", "is_predictive_distribution")
# The role interfaces by flag; vi.distributions.base fills it in once they exist.
ROLES: dict[str, type] = {}
OLD_STYLE = "_torch_blue_0_9_style"


def declared_flag(cls: type, flag: str) -> bool | None:
    """The value of a role flag that ``cls`` declares as a plain bool (0.9 style)."""
    for klass in cls.__mro__:
        if flag in vars(klass):
            value = vars(klass)[flag]
            return value if isinstance(value, bool) else None
    return None


def accepting_tuples(method: Any, leading: int) -> Callable[..., Any]:
    """Let a 0.9-style method with unpacked parameters also take them as a tuple.

    ``leading`` positional arguments (the sample) come before the parameters.
    """
    static = isinstance(method, staticmethod)
    function = method.__func__ if static else method

    @functools.wraps(function)
    def adapted(self: Any, *args: Any, **kwargs: Any) -> Any:
        head, parameters = args[:leading], as_parameter_tuple(args[leading:])
        if static:
            return function(*head, *parameters, **kwargs)
        return function(self, *head, *parameters, **kwargs)

    return adapted


class RoleMeta(PostInitCallMeta):
    """Metaclass of the distributions: maps torch_blue 0.9's role flags to roles.

    A class that declares ``is_prior = True`` (and so on) without subclassing the
    role interfaces is a torch_blue 0.9 distribution: it gets the declared roles as
    bases, its ``prior_log_prob``, ``sample`` and ``variational_log_prob`` accept
    the parameters as a tuple as well as unpacked, and it may set
    ``_default_variational_parameters`` in ``__init__``. Its subclasses inherit that.
    """

    def __new__(
        mcs,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        **kwargs: Any,
    ) -> RoleMeta:
        """Build a distribution class, adapted if it is written in 0.9's style."""
        flags = {
            flag: namespace[flag]
            for flag in ROLE_FLAGS
            if isinstance(namespace.get(flag), bool)
        }
        roles = tuple(ROLES.values())
        old_style = any(getattr(base, OLD_STYLE, False) for base in bases) or (
            bool(flags and roles) and not any(issubclass(base, roles) for base in bases)
        )
        if old_style:
            namespace[OLD_STYLE] = True
            for method, leading in (
                ("prior_log_prob", 1),
                ("variational_log_prob", 1),
                ("sample", 0),
            ):
                if method in namespace:
                    namespace[method] = accepting_tuples(namespace[method], leading)
            missing = tuple(
                ROLES[flag]
                for flag, value in flags.items()
                if value and not any(issubclass(base, ROLES[flag]) for base in bases)
            )
            bases = (*missing, *bases)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        abstract: frozenset[str] = getattr(cls, "__abstractmethods__", frozenset())
        if old_style and "_default_variational_parameters" in abstract:
            # torch_blue 0.9 sets the defaults on the instance, in __init__.
            cls._default_variational_parameters = None  # type: ignore[attr-defined]
            update_abstractmethods(cls)  # type: ignore[arg-type]
        if old_style and "log_prob" in abstract:
            # torch_blue 0.9's priors score with prior_log_prob; one without it
            # raises NotImplementedError when called, as there.
            root = next(k for k in reversed(cls.__mro__) if isinstance(k, RoleMeta))
            cls.log_prob = root.log_prob  # type: ignore[attr-defined]
            update_abstractmethods(cls)  # type: ignore[arg-type]
        return cls


def role_hook(cls: type, role: str, subclass: type) -> Any:
    """``__subclasshook__`` of a role: a flag set to ``False`` removes the role."""
    if cls is ROLES.get(role) and declared_flag(subclass, role) is False:
        return False
    return NotImplemented


class RoleFlag:
    """torch_blue 0.9's role flag, read from the roles a class plays.

    A plain bool on the class and on its instances (a ``property`` would be a
    property object, always true, on the class). A 0.9-style class that declares the
    flag overrides it; an instance may still set it, as 0.9's did in ``__init__``.
    """

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __get__(self, instance: object, owner: type) -> bool:
        return issubclass(owner, ROLES[self.flag])


#: torch_blue 0.9's keys of ``VIMultiheadAttention`` (the output projection held as
#: variables of the attention itself), by prefix, and this library's.
ATTENTION_KEYS = {
    "_out_proj_weight_": "out_proj._weight_",
    "_out_proj_bias_": "out_proj._bias_",
}

#: torch_blue 0.9's feed-forward ``VIResidualConnection`` of the transformer layers,
#: by prefix, and this library's ``linear1`` / ``linear2``.
FEEDFORWARD_KEYS = {"_ff_block.0.": "linear1.", "_ff_block.2.": "linear2."}


def upgrade_checkpoint(
    state_dict: dict[str, Any], prefix: str, renames: Mapping[str, str]
) -> None:
    """Rename a module's torch_blue 0.9 state-dict keys in place.

    Called from ``_load_from_state_dict`` of the layers whose keys changed.

    Parameters
    ----------
    state_dict: dict[str, Any]
        The state dict being loaded.
    prefix: str
        The module's prefix in it.
    renames: Mapping[str, str]
        Old key prefixes (relative to the module) and their new ones.
    """
    for key in list(state_dict):
        for old, new in renames.items():
            if key.startswith(prefix + old):
                rest = key[len(prefix + old) :]
                state_dict[prefix + new + rest] = state_dict.pop(key)
                break
