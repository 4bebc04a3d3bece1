"""Containers: VISequential and VIResidualConnection."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.nn import Module, Sequential

from ..poutine.context import current_context
from .base import VIModule
from .normalization import batch_norm_over_samples, is_plain_batch_norm
from .per_sample import run_per_sample

# Plain modules that act elementwise or on the trailing dimensions only: the leading
# sample dimension passes through them unchanged.
_SAMPLE_DIM_TRANSPARENT: frozenset[type[Module]] = frozenset(
    getattr(nn, name)
    for name in (
        "Identity ReLU ReLU6 LeakyReLU ELU CELU SELU GELU SiLU Mish Sigmoid Tanh "
        "Softplus Softsign Hardtanh Hardsigmoid Hardswish Hardshrink Softshrink "
        "Tanhshrink LogSigmoid Threshold Dropout AlphaDropout LayerNorm RMSNorm Linear"
    ).split()
    if hasattr(nn, name)
)


def _call_child(module: Module, input_: Any) -> Any:
    """Call a child; a plain module sees one sample's tensor, as in torch_blue.

    In torch_blue mode the input carries the leading sample dimension. A plain
    ``nn.Module`` that does not act elementwise (``nn.Flatten``, pooling, convolution)
    would misread it as a batch dimension, so it runs per sample under
    :func:`torch.vmap`; a batch norm layer normalizes all samples at once, each with
    its own statistics.
    """
    context = current_context()
    call = context.call
    if (
        call is None
        or context.num_samples is None
        or isinstance(module, VIModule)
        or type(module) in _SAMPLE_DIM_TRANSPARENT
        or not isinstance(input_, Tensor)
    ):
        return module(input_)
    if is_plain_batch_norm(module):
        region = None if call.statistics is None else call.statistics.region(module)
        return batch_norm_over_samples(module, input_, region)  # type: ignore[arg-type]
    return run_per_sample(
        call, module, lambda _draws, x: module(x), (input_,), {}, loop=False
    )


class VISequential(VIModule, Sequential):
    """A :class:`torch.nn.Sequential` that may hold VIModules and plain modules.

    Built like ``nn.Sequential``, from modules or an ``OrderedDict``; children are
    named ``"0"``, ``"1"``, ... (or by the dict's keys), and so are their sites
    (``"0.weight"``). As the outermost module it adds torch_blue's autosampling.
    In torch_blue mode a plain module inside sees what it would see in torch_blue:
    one sample's tensor, without the leading sample dimension. Elementwise layers
    (``nn.ReLU``, ``nn.Dropout``, ``nn.LayerNorm``, ...) get the stacked tensor at
    once; others (``nn.Flatten``, pooling, ``nn.Conv2d``) run per sample under
    :func:`torch.vmap`.

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
        self._return_log_probs = modes.pop() if modes else True

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
            input_ = _call_child(module, input_)
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
