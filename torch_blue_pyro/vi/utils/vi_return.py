"""The model output type of the torch_blue API: a Tensor that carries log-probs."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor


class VIReturn(Tensor):
    r"""A :class:`torch.Tensor` that also carries the log-probabilities of its weights.

    The outermost :class:`~torch_blue_pyro.vi.VIModule` returns its output as a
    ``VIReturn``: the tensor has a leading sample dimension ``S`` and
    :attr:`log_probs` holds, per weight sample, the log prior and the log variational
    probability of all weights drawn for it, shape ``(S, 2)``. It behaves like a tensor
    everywhere; the results of operations on it are ``VIReturn`` s whose
    ``log_probs`` is ``None``, except :meth:`clone`, :meth:`to` and
    :func:`copy.deepcopy`, which keep the log-probabilities.

    Parameters
    ----------
    data: Tensor
        The output values.
    log_probs: Tensor or None
        ``(S, 2)`` tensor of [log prior, log variational] per sample, or ``None``
        when the model ran with ``return_log_probs=False``.
    """

    log_probs: Tensor | None = None

    @staticmethod
    def __new__(cls, data: Any, log_probs: Tensor | None = None) -> VIReturn:
        """Wrap ``data`` (a tensor, or anything ``torch.as_tensor`` takes)."""
        data = data if isinstance(data, Tensor) else torch.as_tensor(data)
        return Tensor._make_subclass(cls, data, data.requires_grad)

    def __init__(self, data: Any, log_probs: Tensor | None = None) -> None:
        super().__init__()
        self.log_probs = log_probs

    @staticmethod
    def from_tensor(input_: Tensor, log_probs: Tensor | None) -> VIReturn:
        """Turn ``input_`` into a :class:`VIReturn` in place, without copying data.

        Parameters
        ----------
        input_: Tensor
            The tensor to convert; it keeps its autograd history.
        log_probs: Tensor or None
            The log-probabilities to attach.

        Returns
        -------
        VIReturn
            ``input_`` itself, now a :class:`VIReturn`.
        """
        input_.__class__ = VIReturn
        converted: VIReturn = input_  # type: ignore[assignment]
        converted.log_probs = log_probs
        return converted

    def as_tensor(self) -> Tensor:
        """The same data as a plain :class:`torch.Tensor` (a view, autograd kept)."""
        return self.as_subclass(Tensor)

    def clone(self, *args: Any, **kwargs: Any) -> VIReturn:  # noqa: D102
        log_probs = None if self.log_probs is None else self.log_probs.clone()
        return VIReturn(self.as_tensor().clone(*args, **kwargs), log_probs)

    def to(self, *args: Any, **kwargs: Any) -> VIReturn:  # noqa: D102
        data = self.as_tensor().to(*args, **kwargs)
        log_probs = None
        if self.log_probs is not None:
            # Log-probs follow the device; they stay floating point whatever the dtype.
            device = data.device
            log_probs = self.log_probs.to(device=device)
            if data.is_floating_point():
                log_probs = log_probs.to(dtype=data.dtype)
        return VIReturn(data, log_probs)

    def new_empty(self, size: Any, **kwargs: Any) -> VIReturn:  # type: ignore[override]  # noqa: D102
        return VIReturn(self.as_tensor().new_empty(size, **kwargs), None)

    def __deepcopy__(self, memo: dict[int, Any]) -> VIReturn:
        if id(self) in memo:
            return memo[id(self)]
        # Like a deep copy of a module, the copy is cut from the autograd graph.
        data = copy.deepcopy(self.as_tensor().detach(), memo)
        log_probs = None
        if self.log_probs is not None:
            log_probs = copy.deepcopy(self.log_probs.detach(), memo)
        result = VIReturn(data, log_probs)
        memo[id(self)] = result
        return result

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (VIReturn, (self.as_tensor().detach(), self.log_probs))

    def __format__(self, format_spec: str) -> str:
        """Format as the plain tensor does (a one-element one as its number)."""
        return self.as_tensor().__format__(format_spec)

    def __repr__(self, *, tensor_contents: Any = None) -> Any:  # type: ignore[override]
        text = repr(self.as_tensor())
        if self.log_probs is None:
            return f"VIReturn({text}, log_probs=None)"
        return f"VIReturn({text}, log_probs={self.log_probs!r})"
