"""Containers: VISequential and VIResidualConnection."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from torch import Tensor
from torch.nn import Module, Sequential

from .base import VIModule


class VISequential(VIModule, Sequential):
    """A :class:`torch.nn.Sequential` that may hold VIModules and plain modules.

    Built like ``nn.Sequential``, from modules or an ``OrderedDict``; children are
    named ``"0"``, ``"1"``, ... (or by the dict's keys), and so are their sites
    (``"0.weight"``). As the outermost module it adds torch_blue's autosampling.
    Plain modules inside receive tensors with the leading sample dimension, which
    elementwise layers (``nn.ReLU``, ``nn.Dropout``) handle as they are.

    Parameters
    ----------
    args: Module or OrderedDict[str, Module]
        The modules, in order.

    Raises
    ------
    ValueError
        If the VIModules among them disagree on ``return_log_probs``.
    """

    handles_sample_dim: ClassVar[bool] = True

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            named = list(args[0].items())
        else:
            named = [(str(index), module) for index, module in enumerate(args)]
        modes = {m._return_log_probs for _, m in named if isinstance(m, VIModule)}
        if len(modes) > 1:
            raise ValueError(
                "return_log_probs must be equal for all VIModules in a VISequential"
            )
        for name, module in named:
            if not isinstance(module, Module):
                raise TypeError(
                    f"VISequential takes modules, got {type(module).__name__} "
                    f"for {name!r}"
                )
            self.add_module(name, module)
        self._return_log_probs = modes.pop() if modes else False

    def forward(self, input_: Any) -> Any:
        """Feed ``input_`` through the modules in order.

        Parameters
        ----------
        input_: Any
            Input of the first module.

        Returns
        -------
        Any
            Output of the last module.
        """
        for module in self:
            input_ = module(input_)
        return input_


class VIResidualConnection(VISequential):
    """A :class:`VISequential` whose input is added to its output.

    Raises
    ------
    RuntimeError
        If the output's shape differs from the input's.
    """

    def forward(self, input_: Tensor) -> Tensor:
        """Return ``modules(input_) + input_``.

        Parameters
        ----------
        input_: Tensor
            Input of the first module.

        Returns
        -------
        Tensor
            The residual sum, shaped like ``input_``.
        """
        output = super().forward(input_)
        if output.shape != input_.shape:
            raise RuntimeError(
                f"Output shape ({tuple(output.shape)}) of residual connection must "
                f"match input shape ({tuple(input_.shape)})"
            )
        return output + input_
