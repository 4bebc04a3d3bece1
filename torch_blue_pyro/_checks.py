"""Argument checks used on every level of the package, with errors naming the argument.

Below ``vi`` in the import graph, so that ``metrics`` and the layers share them.
"""

from __future__ import annotations

import numbers


def positive_int(value: object, argument: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise.

    Parameters
    ----------
    value: object
        The value to check; ``bool`` s are rejected.
    argument: str
        The argument's name, for the error message.

    Returns
    -------
    int
        ``value`` as an int.

    Raises
    ------
    ValueError
        If ``value`` is not a positive integer, e.g. ``"samples must be a positive
        int, got 0"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)
