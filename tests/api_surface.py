"""The public surface of torch_blue (or of this package under its paths), as data.

``surface(package)`` walks every module of ``package.vi`` and records:

* ``modules``: the module paths (``"vi.distributions.normal"``);
* ``names``: per module, its public names: what the package defines (classes,
  functions, submodules) or lists in ``__all__``, and what it imports from itself
  (``VIkwargs`` in ``vi.conv``, say);
* per public class of the package, under the path of the module that defines it
  (``"vi.linear.VILinear"``): ``members``, the public methods and attributes that
  the package's own classes in its MRO define; ``available``, every public name of
  the class (inherited from torch too); ``instances``, the public attributes of an
  instance built with the arguments of ``INSTANCES``;
* ``signatures``: of every public function, class constructor and method, the
  parameters in order as ``name:KIND=default`` (``-``: no default), without
  ``self``.

``differences(theirs, ours)`` lists what torch_blue offers that this package lacks or
spells differently. The 0.9.2 surface is recorded once from the release:

    pip download --no-deps torch-blue==0.9.2 -d /tmp/tb
    unzip /tmp/tb/*.whl -d /tmp/tb
    PYTHONPATH=/tmp/tb python -m tests.api_surface torch_blue \\
        > tests/data/torch_blue_0_9_2_surface.json
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: Constructor arguments of the classes whose instances are recorded, by name
#: (built from the package's own ``vi``).
INSTANCES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "VILinear": lambda vi: {"in_features": 3, "out_features": 2},
    "VIConv1d": lambda vi: {"in_channels": 2, "out_channels": 2, "kernel_size": 3},
    "VIConv2d": lambda vi: {"in_channels": 2, "out_channels": 2, "kernel_size": 3},
    "VIConv3d": lambda vi: {"in_channels": 2, "out_channels": 2, "kernel_size": 3},
    "VIMultiheadAttention": lambda vi: {"embed_dim": 4, "num_heads": 2},
    "VITransformerEncoderLayer": lambda vi: {"d_model": 4, "nhead": 2},
    "VITransformerDecoderLayer": lambda vi: {"d_model": 4, "nhead": 2},
    "VITransformer": lambda vi: {
        "d_model": 4,
        "nhead": 2,
        "num_encoder_layers": 1,
        "num_decoder_layers": 1,
        "dim_feedforward": 8,
    },
    "VISequential": lambda vi: {},
    "VIResidualConnection": lambda vi: {},
    "KullbackLeiblerLoss": lambda vi: {
        "predictive_distribution": vi.distributions.Categorical(),
        "dataset_size": 10,
    },
    "MeanFieldNormal": lambda vi: {},
    "Categorical": lambda vi: {},
    "BasicQuietPrior": lambda vi: {},
    "NonBayesian": lambda vi: {},
    "UniformPrior": lambda vi: {},
    "MeanFieldStudentT": lambda vi: {},
    "NormalNormalDivergence": lambda vi: {},
    "UniformNormalDivergence": lambda vi: {},
    "NonBayesianDivergence": lambda vi: {},
}


def _path(obj: Any, package: str) -> str | None:
    """``obj``'s module path inside ``package`` (``"vi.linear"``), else ``None``."""
    module = getattr(obj, "__module__", None) or ""
    if module == package or module.startswith(package + "."):
        return module.removeprefix(package + ".")
    return None


def _default(value: Any) -> str:
    """A default as text: ``-`` for none, ``Class()`` for an object without a value."""
    if value is inspect.Parameter.empty:
        return "-"
    module = type(value).__module__ or ""
    if module.startswith(("torch_blue.", "torch_blue_pyro.")) or " at 0x" in repr(
        value
    ):
        return f"{type(value).__name__}()"
    return repr(value)


def _signature(function: Any, bound: bool) -> list[str] | None:
    """The parameters of ``function``; without the first one if ``bound``."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound:
        parameters = parameters[1:]
    return [f"{p.name}:{p.kind.name}={_default(p.default)}" for p in parameters]


def _instance_attributes(
    cls: type, vi: ModuleType, base_attributes: set[str]
) -> list[str] | None:
    arguments = INSTANCES.get(cls.__name__)
    if arguments is None or inspect.isabstract(cls):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instance = cls(**arguments(vi))
    except Exception:  # a class that the recorded arguments do not build
        return None
    return sorted(
        name
        for name in dir(instance)
        if not name.startswith("_") and name not in base_attributes
    )


def _record_class(
    cls: type, key: str, package: str, vi: ModuleType, result: dict[str, Any]
) -> None:
    members: set[str] = set()
    for klass in cls.__mro__:
        if _path(klass, package) is not None:
            members |= {name for name in vars(klass) if not name.startswith("_")}
    result["members"][key] = sorted(members)
    result["available"][key] = sorted(n for n in dir(cls) if not n.startswith("_"))
    result["signatures"][f"{key}.__init__"] = _signature(cls.__init__, bound=True)
    for member in sorted(members):
        raw = inspect.getattr_static(cls, member)
        if isinstance(raw, staticmethod):
            result["signatures"][f"{key}.{member}"] = _signature(raw.__func__, False)
        elif isinstance(raw, classmethod):
            result["signatures"][f"{key}.{member}"] = _signature(raw.__func__, True)
        elif inspect.isfunction(raw):
            result["signatures"][f"{key}.{member}"] = _signature(raw, bound=True)
    base_attributes = set(dir(importlib.import_module("torch").nn.Module()))
    attributes = _instance_attributes(cls, vi, base_attributes)
    if attributes is not None:
        result["instances"][key] = attributes


def surface(package: str) -> dict[str, Any]:
    """The public surface of ``package.vi`` and its submodules (see module docs)."""
    vi = importlib.import_module(f"{package}.vi")
    modules = {"vi": vi}
    for info in pkgutil.walk_packages(vi.__path__, f"{package}.vi."):
        if not info.name.rsplit(".", 1)[1].startswith("_"):
            modules[_path(info, package) or info.name.removeprefix(package + ".")] = (
                importlib.import_module(info.name)
            )
    result: dict[str, Any] = {
        "modules": sorted(modules),
        "names": {},
        "members": {},
        "available": {},
        "instances": {},
        "signatures": {},
    }
    for path, module in sorted(modules.items()):
        listed = set(getattr(module, "__all__", ()))
        names = []
        for name, value in vars(module).items():
            if name.startswith("_"):
                continue
            own = _path(value, package) is not None or (
                isinstance(value, ModuleType)
                and value.__name__.startswith(package + ".")
            )
            if own or name in listed:
                names.append(name)
                home = _path(value, package)
                qualname = getattr(value, "__qualname__", name)
                key = f"{home}.{qualname}" if home else None
                if inspect.isclass(value) and key and key not in result["members"]:
                    _record_class(value, key, package, vi, result)
                elif inspect.isfunction(value) and key:
                    result["signatures"][key] = _signature(value, bound=False)
        result["names"][path] = sorted(names)
    return result


def differences(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What ``theirs`` has that ``ours`` lacks or spells differently, one line each.

    Classes are compared under the path of their defining module there; a class that
    this package defines in another module is looked up by its name. A signature is
    compatible when ours takes theirs' parameters in the same order, with the same
    names, kinds and defaults (or a default where theirs has none), and adds only
    parameters with defaults (or ``*args`` / ``**kwargs``).
    """
    found = [f"module {m}" for m in theirs["modules"] if m not in ours["modules"]]
    for module, names in theirs["names"].items():
        present = set(ours["names"].get(module, ()))
        found += [f"name {module}.{n}" for n in names if n not in present]
    classes = {key.rsplit(".", 1)[1]: key for key in ours["members"]}
    for key, members in theirs["members"].items():
        mine = classes.get(key.rsplit(".", 1)[1])
        if mine is None:
            continue  # reported as a missing name
        present = set(ours["available"][mine]) | set(ours["instances"].get(mine, ()))
        found += [f"member {key}.{m}" for m in members if m not in present]
        missing = [
            a
            for a in theirs["instances"].get(key, ())
            if a not in present and a not in members
        ]
        found += [f"attribute {key}.{a}" for a in missing]
    for key, signature in theirs["signatures"].items():
        owner, _, member = key.rpartition(".")
        mine_key = key
        if owner in theirs["members"]:
            mine_owner = classes.get(owner.rsplit(".", 1)[1])
            mine_key = f"{mine_owner}.{member}"
        mine = ours["signatures"].get(mine_key)
        if signature is None or mine is None:
            continue
        if not _compatible(mine, signature):
            found.append(
                f"signature {key}: ({', '.join(signature)}) here ({', '.join(mine)})"
            )
    return sorted(found)


def _parse(parameter: str) -> tuple[str, str, str]:
    name, rest = parameter.split(":", 1)
    kind, default = rest.split("=", 1)
    return name, kind, default


def _compatible(mine: list[str], theirs: list[str]) -> bool:
    """Whether every call that ``theirs`` accepts means the same with ``mine``."""
    mine_parsed, theirs_parsed = [_parse(p) for p in mine], [_parse(p) for p in theirs]
    positional = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD", "VAR_POSITIONAL")
    mine_positional = [p for p in mine_parsed if p[1] in positional]
    theirs_positional = [p for p in theirs_parsed if p[1] in positional]
    if len(mine_positional) < len(theirs_positional):
        return False
    for own, their in zip(mine_positional, theirs_positional, strict=False):
        if not _same_parameter(own, their):
            return False
    for own in mine_positional[len(theirs_positional) :]:
        if own[2] == "-" and own[1] != "VAR_POSITIONAL":
            return False  # a new required positional parameter
    mine_keywords = {p[0]: p for p in mine_parsed if p[1] == "KEYWORD_ONLY"}
    theirs_keywords = {p[0]: p for p in theirs_parsed if p[1] == "KEYWORD_ONLY"}
    for name, their in theirs_keywords.items():
        if name not in mine_keywords or not _same_parameter(mine_keywords[name], their):
            return False
    if any(p[2] == "-" for n, p in mine_keywords.items() if n not in theirs_keywords):
        return False  # a new required keyword
    takes_any = any(p[1] == "VAR_KEYWORD" for p in mine_parsed)
    return takes_any or all(p[1] != "VAR_KEYWORD" for p in theirs_parsed)


def _same_parameter(own: tuple[str, str, str], their: tuple[str, str, str]) -> bool:
    """Same name and kind (any name for ``*args``), and the same default if any."""
    name, kind, default = own
    their_name, their_kind, their_default = their
    if kind != their_kind or (name != their_name and kind != "VAR_POSITIONAL"):
        return False
    return their_default in ("-", default)


if __name__ == "__main__":
    json.dump(surface(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
