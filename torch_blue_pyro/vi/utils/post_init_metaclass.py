"""PostInitCallMeta: run ``__post_init__`` after ``__init__`` (torch_blue's helper)."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any


class PostInitCallMeta(ABCMeta):
    """Metaclass that calls ``instance.__post_init__()`` once ``__init__`` returns.

    torch_blue exports it for user classes that validate their attributes after
    construction; this library's own classes do not need it.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        """Construct the instance, then call its ``__post_init__``."""
        instance = super().__call__(*args, **kwargs)
        instance.__post_init__()
        return instance
