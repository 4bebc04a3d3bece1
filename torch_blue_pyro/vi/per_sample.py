"""Code written for one sample, run on ``S`` stacked samples: vmap or a loop.

A module whose ``forward`` cannot handle the leading sample dimension (a user's
single-sample ``forward``, a converted model, a plain ``nn.Module`` such as pooling
inside a :class:`~torch_blue_pyro.vi.VISequential`) runs once per weight sample:
under :func:`torch.vmap` on the stacked path, one sample after another with
``sample_execution="loop"``. Both read the same stacked draws and give the same
results; :func:`run_per_sample` is the one place that does either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ..amp import autocast_dtype, full_precision, without_autocast
from ..poutine.context import SampledCall

__all__ = ["PerSampleForward", "SampledCall", "run_per_sample"]

#: ``forward(draws, *inputs)``: one sample's weight draws by site name, and inputs.
PerSampleForward = Callable[..., Any]


def run_per_sample(
    call: SampledCall,
    subtree: nn.Module,
    forward: PerSampleForward,
    args: tuple[Any, ...],
    draws: Mapping[str, Tensor],
    loop: bool,
    sampled_positions: frozenset[int] | None = None,
    sampled_kwargs: Mapping[str, Tensor] | None = None,
) -> Any:
    """Run ``forward`` once per sample and stack its outputs.

    The arguments at ``sampled_positions`` carry the sample dimension and are split
    along it; the others are shared by all samples. Without ``sampled_positions``
    (a module that declares no :attr:`~torch_blue_pyro.vi.VIModule.sampled_inputs`)
    every tensor argument whose first dimension is ``S`` is split. The
    normalization layers of ``subtree`` read and update their per-sample running
    statistics (see :mod:`~torch_blue_pyro.vi.normalization`).

    Parameters
    ----------
    call: SampledCall
        The outermost call in progress.
    subtree: nn.Module
        The module whose code ``forward`` runs.
    forward: PerSampleForward
        ``forward(draws, *inputs)`` for one sample.
    args: tuple
        The stacked inputs.
    draws: Mapping[str, Tensor]
        Stacked ``(S, *shape)`` weight draws, split like the inputs.
    loop: bool
        One sample after another instead of under :func:`torch.vmap`.
    sampled_positions: frozenset[int], optional
        The positions of the arguments that lead with the sample dimension.
    sampled_kwargs: Mapping[str, Tensor], optional
        Keyword arguments that lead with the sample dimension; split like the
        inputs and passed to ``forward`` by name.

    Returns
    -------
    Any
        The outputs, each with a leading sample dimension.

    Raises
    ------
    ValueError
        If an argument at ``sampled_positions`` or in ``sampled_kwargs`` does not
        lead with ``S``.
    RuntimeError
        If a module cannot run under :func:`torch.vmap`; the error names the module
        and the way out (``sample_execution="loop"``).
    """
    num_samples = call.num_samples
    region = None if call.statistics is None else call.statistics.region(subtree)
    in_dims = _sample_dims(subtree, args, num_samples, sampled_positions)
    keywords = dict(sampled_kwargs or {})
    for name, value in keywords.items():
        _require_samples(subtree, f"input {name!r}", value, num_samples)
    if loop:
        # unbind: one backward node stacks the S gradients (indexing would give each
        # sample's gradient a zero-filled (S, *shape) tensor of its own).
        draws_per_sample = {name: draw.unbind(0) for name, draw in draws.items()}
        keywords_per_sample = {name: x.unbind(0) for name, x in keywords.items()}
        args_per_sample = [
            None if dim is None else x.unbind(0)
            for x, dim in zip(args, in_dims, strict=True)
        ]
        outputs = []
        for index in range(num_samples):
            inputs = (
                x if parts is None else parts[index]
                for x, parts in zip(args, args_per_sample, strict=True)
            )
            one_draw = {name: parts[index] for name, parts in draws_per_sample.items()}
            one_keywords = {
                name: parts[index] for name, parts in keywords_per_sample.items()
            }
            with nullcontext() if region is None else region.sample(index):
                outputs.append(forward(one_draw, *inputs, **one_keywords))
        return _stack_outputs(outputs)

    def one_sample(
        one_draw: dict[str, Tensor],
        stacks: list[dict[str, Tensor]],
        one_keywords: dict[str, Tensor],
        *inputs: Any,
    ) -> Any:
        with nullcontext() if region is None else region.installed(stacks):
            return forward(one_draw, *inputs, **one_keywords)

    stacks = [] if region is None else region.vmap_inputs()
    vmapped = torch.vmap(
        one_sample, in_dims=(0, 0, 0, *in_dims), randomness="different"
    )
    device_type = _device_type(args, draws)
    try:
        if autocast_dtype(device_type) is None:
            return vmapped(dict(draws), stacks, keywords, *args)
        # torch.vmap applies no autocast to convolutions, and batch normalization
        # under vmap refuses half-precision inputs with float32 statistics: the
        # per-sample code runs in full precision instead.
        with without_autocast(device_type):
            return vmapped(
                dict(draws),
                stacks,
                {name: full_precision(x) for name, x in keywords.items()},
                *(full_precision(x) for x in args),
            )
    except RuntimeError as error:
        if not _is_vmap_error(error):
            raise
        raise RuntimeError(_vmap_failure(error, call.outermost, subtree)) from error


def _sample_dims(
    subtree: nn.Module,
    args: tuple[Any, ...],
    num_samples: int,
    sampled_positions: frozenset[int] | None,
) -> tuple[int | None, ...]:
    """``vmap``'s ``in_dims``: 0 for the arguments that carry the sample dimension."""
    if sampled_positions is None:
        return tuple(0 if _leads_with(x, num_samples) else None for x in args)
    for index in sorted(sampled_positions):
        value = args[index] if index < len(args) else None
        _require_samples(subtree, f"input {index}", value, num_samples)
    return tuple(
        0 if index in sampled_positions and x is not None else None
        for index, x in enumerate(args)
    )


def _leads_with(value: Any, num_samples: int) -> bool:
    """Whether ``value`` is a tensor whose first dimension has size ``S``."""
    return (
        isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == num_samples
    )


def _require_samples(
    subtree: nn.Module, label: str, value: Any, num_samples: int
) -> None:
    """Raise unless a declared sampled input (or ``None``) leads with ``S``."""
    if value is None or _leads_with(value, num_samples):
        return
    got = (
        f"shape {tuple(value.shape)}"
        if isinstance(value, Tensor)
        else type(value).__name__
    )
    raise ValueError(
        f"{type(subtree).__name__} declares {label} as sampled (sampled_inputs), so "
        f"it must lead with the {num_samples} samples; got {got}"
    )


def _device_type(args: tuple[Any, ...], draws: Mapping[str, Tensor]) -> str:
    """The device type of the first tensor among the inputs and draws."""
    for value in (*args, *draws.values()):
        if isinstance(value, Tensor):
            return value.device.type
    return "cpu"


def _is_vmap_error(error: RuntimeError) -> bool:
    """Whether ``error`` is torch's complaint about running under vmap."""
    message = str(error).lower()
    return "vmap" in message or "batched tensor" in message or "functorch" in message


def _vmap_failure(error: RuntimeError, outermost: nn.Module, subtree: nn.Module) -> str:
    """An error message naming the module that failed under vmap and the way out."""
    paths = {id(module): path for path, module in outermost.named_modules()}
    failing = subtree
    traceback = error.__traceback__
    while traceback is not None:  # the innermost module whose code raised
        candidate = traceback.tb_frame.f_locals.get("self")
        if isinstance(candidate, nn.Module) and id(candidate) in paths:
            failing = candidate
        traceback = traceback.tb_next
    path = paths.get(id(failing), "")
    where = f"{type(failing).__name__} {path!r}" if path else type(failing).__name__
    reason = str(error).strip().splitlines()[0]
    return (
        f"{where} cannot run once per weight sample under torch.vmap, which "
        f"sample_execution='stacked' uses for code written for one sample ({reason}). "
        "Run the samples one after another instead: set sample_execution = 'loop' on "
        f"the outermost module ({type(outermost).__name__})"
    )


def _stack_outputs(outputs: list[Any]) -> Any:
    """Stack the per-sample outputs of a forward: tensors, or tuples/lists of them."""
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.stack(outputs)
    if isinstance(first, (tuple, list)):
        return type(first)(
            _stack_outputs(list(parts)) for parts in zip(*outputs, strict=True)
        )
    if first is None:
        return None
    raise TypeError(
        "a forward run once per sample must return tensors, or tuples or lists of "
        f"them, got {type(first).__name__}"
    )
