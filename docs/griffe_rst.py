r"""Griffe extension: render the package's reST markup as Markdown in the API pages.

The docstrings are numpy-style with Sphinx roles (``:class:`~a.b.C```), inline math
(``:math:`x```) and ``.. math::`` blocks, which mkdocstrings would show verbatim.
Before the docstrings are parsed this extension rewrites

* roles that name an object of ``torch_blue_pyro`` into cross-references
  (``[`C`][a.b.C]``) and every other role into a code span;
* ``:math:`x``` into ``\(x\)`` and ``.. math::`` blocks into ``$$ ... $$``, which
  ``pymdownx.arithmatex`` hands to MathJax;
* numpy parameter entries that name several parameters on one line
  (``a, b, c``) into one entry per parameter, so that each gets its own default
  from the signature.

It changes only what the documentation shows, never the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|obj|exc|data):`(~?)([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*$")
_SECTION_RULE = re.compile(r"^[ \t]*-{3,}[ \t]*$")
_MULTI_NAME = re.compile(r"^(?P<indent>[ \t]*)(?P<names>\w+(?:, \w+)+)[ \t]*$")
_PACKAGE = "torch_blue_pyro"


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    title = target.rsplit(".", 1)[-1] if tilde else target
    if target.startswith(_PACKAGE + "."):
        return f"[`{title}`][{target}]"
    return f"`{title}`"


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(lines):
        match = _MATH_BLOCK.match(lines[index])
        if match is None:
            out.append(lines[index])
            index += 1
            continue
        indent = match["indent"]
        index += 1
        body: list[str] = []
        while index < len(lines) and (
            not lines[index].strip()
            or len(lines[index]) - len(lines[index].lstrip()) > len(indent)
        ):
            body.append(lines[index])
            index += 1
        while body and not body[-1].strip():
            body.pop()
        body = [line.strip() for line in body if line.strip()]
        out.extend([f"{indent}$$", *(f"{indent}{line}" for line in body)])
        out.extend([f"{indent}$$", ""])
    return out


def _split_multi_names(lines: list[str]) -> list[str]:
    """Repeat a ``a, b, c`` parameter entry once per name, in Parameters sections."""
    out: list[str] = []
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        if index + 1 < len(lines) and _SECTION_RULE.match(lines[index + 1]):
            section = line.strip()
        match = _MULTI_NAME.match(line)
        if section == "Parameters" and match is not None:
            indent = match["indent"]
            index += 1
            description: list[str] = []
            while index < len(lines) and (
                not lines[index].strip()
                or len(lines[index]) - len(lines[index].lstrip()) > len(indent)
            ):
                description.append(lines[index])
                index += 1
            for name in match["names"].split(", "):
                out.extend([f"{indent}{name}", *description])
            continue
        out.append(line)
        index += 1
    return out


def rewrite(text: str) -> str:
    """Turn one docstring's reST markup into Markdown.

    Parameters
    ----------
    text: str
        The docstring.

    Returns
    -------
    str
        The docstring for mkdocstrings.
    """
    lines = _split_multi_names(_math_blocks(text.splitlines()))
    text = "\n".join(lines)
    text = _MATH.sub(lambda match: f"\\({match[1]}\\)", text)
    text = _ROLE.sub(_role, text)
    text = text.replace("\\ s", "s")  # reST's ``Parameter``\ s
    return re.sub(r"`` s\b", "``s", text)


class ReSTRoles(griffe.Extension):
    """Rewrite every docstring of the loaded objects (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
