"""Everything public in torch_blue 0.9.2 and 1.1.0 is here, or listed with a reason.

The surfaces (module paths, names, members, instance attributes, signatures) come
from ``tests/api_surface.py``: torch_blue 1.1.0's from the installed package,
0.9.2's as recorded from its release. Each difference must match a row of the table
"API differences, checked" in docs/compatibility.md, and each row must still match
a difference.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from pathlib import Path

import pytest

from tests.api_surface import differences, surface

ROOT = Path(__file__).resolve().parent.parent
RECORDED_0_9_2 = ROOT / "tests" / "data" / "torch_blue_0_9_2_surface.json"
COMPATIBILITY = ROOT / "docs" / "compatibility.md"


def _listed() -> list[tuple[list[str], set[str]]]:
    """The table's rows: (patterns, releases)."""
    text = COMPATIBILITY.read_text()
    section = text.split("## API differences, checked", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        patterns = re.findall(r"`([^`]+)`", cells[0])
        releases = {release.strip() for release in cells[1].split(",")}
        rows.append((patterns, releases))
    return rows


@functools.cache
def _ours() -> dict:
    return surface("torch_blue_pyro")


def _differences(release: str) -> list[str]:
    if release == "0.9":
        theirs = json.loads(RECORDED_0_9_2.read_text())
    else:
        pytest.importorskip("torch_blue")
        theirs = surface("torch_blue")
    return differences(theirs, _ours())


def _key(difference: str) -> str:
    return difference.split(": ", 1)[0]


@pytest.mark.parametrize("release", ["1.1", "0.9"])
def test_every_difference_from_torch_blue_is_listed(release: str) -> None:
    rows = [patterns for patterns, releases in _listed() if release in releases]
    unlisted = [
        difference
        for difference in _differences(release)
        if not any(
            fnmatch.fnmatchcase(_key(difference), p) for row in rows for p in row
        )
    ]
    assert not unlisted, (
        f"differences from torch_blue {release} that docs/compatibility.md does not "
        "list (fix them, or list them with a reason):\n" + "\n".join(unlisted)
    )


def test_every_listed_difference_still_exists() -> None:
    found = {release: _differences(release) for release in ("1.1", "0.9")}
    stale = [
        pattern
        for patterns, releases in _listed()
        for pattern in patterns
        if not any(
            fnmatch.fnmatchcase(_key(difference), pattern)
            for release in releases
            for difference in found[release]
        )
    ]
    assert not stale, f"rows of docs/compatibility.md that match nothing: {stale}"


def test_the_checks_see_a_missing_name_and_a_changed_default() -> None:
    ours = json.loads(json.dumps(_ours()))
    ours["names"]["vi"].remove("VILinear")
    key = "vi.linear.VILinear.__init__"
    ours["signatures"][key] = [
        p.replace("bias:POSITIONAL_OR_KEYWORD=True", "bias:POSITIONAL_OR_KEYWORD=False")
        for p in ours["signatures"][key]
    ]
    found = differences(_ours(), ours)
    assert "name vi.VILinear" in found
    assert any(d.startswith(f"signature {key}:") for d in found)
