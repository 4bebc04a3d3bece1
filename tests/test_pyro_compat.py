"""The private Pyro names the library needs live in one module, checked on import."""

from __future__ import annotations

import ast
from pathlib import Path

import pyro
import pytest
from pyro.poutine.runtime import _PYRO_PARAM_STORE

from torch_blue_pyro import _pyro_compat

PACKAGE = Path(_pyro_compat.__file__).resolve().parent


def test_the_installed_pyro_has_every_private_name() -> None:
    assert _pyro_compat.missing_private_names() == []


def test_each_private_name_says_why_the_public_api_does_not_serve() -> None:
    for module, attribute, reason in _pyro_compat.PRIVATE_NAMES:
        assert module.startswith("pyro.") and attribute.startswith("_")
        assert len(reason.split()) >= 8, f"{module}.{attribute}: say why"


def test_a_moved_name_fails_the_import_with_a_clear_message(monkeypatch) -> None:
    monkeypatch.delattr(pyro.nn.module, "_make_name")
    monkeypatch.delattr(_PYRO_PARAM_STORE, "_param_to_name")
    missing = _pyro_compat.missing_private_names()
    assert missing == [
        "pyro.nn.module._make_name",
        "pyro.poutine.runtime._PYRO_PARAM_STORE._param_to_name",
    ]
    with pytest.raises(ImportError) as error:
        _pyro_compat._check()
    message = str(error.value)
    assert f"pyro-ppl {pyro.__version__} lacks: pyro.nn.module._make_name" in message
    assert "1.9.1, 1.9.2" in message and "pip install" in message


def test_a_missing_module_state_key_is_named(monkeypatch) -> None:
    init = pyro.nn.PyroModule.__init__

    def without_context(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        del self.__dict__["_pyro_context"]

    monkeypatch.setattr(pyro.nn.PyroModule, "__init__", without_context)
    assert _pyro_compat.missing_private_names() == ["PyroModule()._pyro_context"]


def _private_pyro_uses(path: Path) -> list[str]:
    """Private Pyro names imported or PyroModule state read in one source file."""
    uses = []
    private_attributes = {name for _, name, _ in _pyro_compat.PRIVATE_NAMES}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyro"):
            uses += [
                f"from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name.startswith("_")
            ]
        elif isinstance(node, ast.Attribute) and node.attr in private_attributes:
            uses.append(node.attr)
        elif (
            isinstance(node, ast.Constant)
            and node.value in _pyro_compat.PYRO_MODULE_STATE
        ):
            uses.append(repr(node.value))
    return uses


def test_no_other_module_uses_a_private_pyro_name() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_pyro_compat.py" and (uses := _private_pyro_uses(path))
    }
    assert not offenders, f"import these from torch_blue_pyro._pyro_compat: {offenders}"
    # The scan itself finds them: the compatibility module is full of them.
    assert len(_private_pyro_uses(PACKAGE / "_pyro_compat.py")) >= 8
