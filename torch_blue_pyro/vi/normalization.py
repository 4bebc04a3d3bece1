r"""Normalization layers under sampled weights: one set of statistics on every path.

In torch_blue mode a network is evaluated for ``S`` weight samples on one batch of
``B`` examples. A normalization layer that tracks running statistics
(``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, ``nn.InstanceNorm*d`` with
``track_running_stats=True``) then behaves the same on every execution path (the
stacked pass, the per-sample :func:`torch.vmap` fallback and the loop over samples):

* **training**: each weight sample's activations are normalized with their own batch
  statistics, as if the network with that sample's weights ran alone on the batch;
* **running statistics**: updated **once per call**, by the average of the ``S``
  per-sample updates: with momentum :math:`m` (or :math:`1/n` for ``momentum=None``,
  after :math:`n` calls)

  .. math::
      \hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\frac1S\sum_s \mu_s, \qquad
      \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\frac1S\sum_s \sigma_s^2,

  where :math:`\mu_s, \sigma_s^2` are sample ``s``'s batch mean and (unbiased)
  variance, and ``num_batches_tracked`` grows by one;
* **evaluation**: the running statistics, shared by all samples.

Without running statistics (``track_running_stats=False``) every sample uses its own
batch statistics in training and evaluation alike. Layers without running statistics
(``nn.LayerNorm``, ``nn.GroupNorm``, ``nn.RMSNorm``) normalize each example on its
own and need nothing here.

The mechanism: for the duration of the outermost call, each tracking layer in
training mode has its ``running_mean`` and ``running_var`` replaced, inside the
per-sample evaluation, by its row of an ``(S, C)`` stack (a batched tensor under
vmap, a view in the loop), so that torch's own kernel updates sample ``s``'s copy;
``num_batches_tracked`` is a counter shared by the samples. When the call returns,
:meth:`RunningStatistics.commit` writes the average of the rows into the layer's
buffers (in place: references to them stay valid). A call that raises leaves the
buffers as they were.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.parameter import UninitializedBuffer

__all__ = [
    "RunningStatistics",
    "SampledRegion",
    "batch_norm_over_samples",
    "is_plain_batch_norm",
]

_STACKED_BUFFERS = ("running_mean", "running_var")


class _Tracked:
    """One layer's per-sample running statistics during a call."""

    __slots__ = ("counter", "module", "stacks")

    def __init__(self, module: nn.Module, num_samples: int) -> None:
        self.module = module
        buffers = module._buffers
        self.stacks: dict[str, Tensor] = {}
        for name in _STACKED_BUFFERS:
            buffer = buffers[name]
            assert buffer is not None
            self.stacks[name] = buffer.expand(num_samples, *buffer.shape).clone()
        counter = buffers.get("num_batches_tracked")
        self.counter: Tensor | None = None if counter is None else counter.clone()

    @contextmanager
    def installed(
        self, stacks: Mapping[str, Tensor], counter: Tensor | None
    ) -> Iterator[None]:
        """Let the layer read and update ``stacks`` and ``counter`` as its buffers."""
        buffers = self.module._buffers
        saved = dict(buffers)
        buffers.update(stacks)
        if counter is not None:
            buffers["num_batches_tracked"] = counter
        try:
            yield
        finally:
            buffers.update(saved)

    def commit(self) -> None:
        """Write the average of the per-sample statistics into the layer's buffers.

        ``first + mean(rows - first)`` rather than ``mean(rows)``: the rows of a
        layer that was not called are all equal, and this returns them exactly.
        """
        buffers = self.module._buffers
        with torch.no_grad():
            for name, stack in self.stacks.items():
                first = stack[0]
                target = buffers[name]
                assert target is not None
                target.copy_(first + (stack - first).mean(dim=0))
            target = buffers.get("num_batches_tracked")
            if self.counter is not None and target is not None:
                target.copy_(self.counter)


class SampledRegion:
    """The tracked layers of one subtree during one per-sample evaluation.

    Under :func:`torch.vmap` each layer reads its ``(S, C)`` stacks batched
    (:meth:`installed`, given the stacks of :meth:`vmap_inputs` as vmap passed them);
    in a loop it reads sample ``index``'s rows (:meth:`sample`). The counter
    ``num_batches_tracked`` is not batched (``momentum=None`` reads its value as a
    Python number): vmap runs the function once, and in a loop every sample starts
    from the counter's value at the start of the region, so that it grows by one per
    call of the layer either way.
    """

    def __init__(self, layers: list[_Tracked]) -> None:
        self._layers = layers
        self._start = [layer.counter for layer in layers]

    def vmap_inputs(self) -> list[dict[str, Tensor]]:
        """The stacks, to pass through :func:`torch.vmap` with ``in_dims=0``."""
        return [layer.stacks for layer in self._layers]

    @contextmanager
    def sample(self, index: int) -> Iterator[None]:
        """The layers use sample ``index``'s rows of their stacks."""
        rows = [
            {name: stack[index] for name, stack in layer.stacks.items()}
            for layer in self._layers
        ]
        with self.installed(rows):
            yield

    @contextmanager
    def installed(self, stacks: list[dict[str, Tensor]]) -> Iterator[None]:
        """The layers use ``stacks`` (the batched ones, inside the vmapped function).

        Each counter is a fresh copy of its value at the start of the region.
        """
        counters = [None if start is None else start.clone() for start in self._start]
        with ExitStack() as installed:
            for layer, layer_stacks, counter in zip(
                self._layers, stacks, counters, strict=True
            ):
                installed.enter_context(layer.installed(layer_stacks, counter))
            yield
        for layer, counter in zip(self._layers, counters, strict=True):
            layer.counter = counter


class RunningStatistics:
    """The running statistics of a network's normalization layers during one call.

    See the module docstring for the semantics. Built by the outermost module's call
    that evaluates ``S`` samples; each per-sample evaluation of a subtree works on
    the :meth:`region` of that subtree; :meth:`commit` writes the one update.

    Parameters
    ----------
    root: nn.Module
        The outermost module; every layer below it that tracks running statistics
        and is in training mode takes part.
    num_samples: int
        ``S``.

    Raises
    ------
    RuntimeError
        If a lazy normalization layer has not been initialized yet (its number of
        features is unknown until a first call of the deterministic network).
    """

    def __init__(self, root: nn.Module, num_samples: int) -> None:
        self._tracked: dict[int, _Tracked] = {}
        for name, module in root.named_modules():
            if not _updates_running_statistics(module):
                continue
            if isinstance(module._buffers["running_mean"], UninitializedBuffer):
                raise RuntimeError(
                    f"{type(module).__name__} {name!r} is not initialized yet: call "
                    "the network once without sampling before converting it, or "
                    "give the layer its num_features"
                )
            self._tracked[id(module)] = _Tracked(module, num_samples)

    @classmethod
    def of(cls, root: nn.Module, num_samples: int) -> RunningStatistics | None:
        """The statistics of ``root``'s layers; ``None`` if no layer updates any."""
        if not any(_updates_running_statistics(m) for m in root.modules()):
            return None
        return cls(root, num_samples)

    def region(self, subtree: nn.Module) -> SampledRegion | None:
        """The tracked layers of ``subtree`` (itself included), if there are any."""
        tracked = self._tracked
        layers = [tracked[id(m)] for m in subtree.modules() if id(m) in tracked]
        return SampledRegion(layers) if layers else None

    def commit(self) -> None:
        """Write each layer's one update into its buffers (see the module docstring)."""
        for layer in self._tracked.values():
            layer.commit()


def _updates_running_statistics(module: nn.Module) -> bool:
    """Whether a call of ``module`` in its present mode updates running statistics."""
    return (
        isinstance(module, _NormBase)
        and module.training
        and module.track_running_stats
        and module._buffers.get("running_mean") is not None
    )


def is_plain_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a batch norm layer with torch's own forward and no hooks.

    ``nn.BatchNorm1d/2d/3d`` (initialized lazy ones too), not ``nn.SyncBatchNorm`` or
    a subclass with a ``forward`` of its own: such a layer can be applied to all
    samples at once by :func:`batch_norm_over_samples`.
    """
    return (
        isinstance(module, _BatchNorm)
        and type(module).forward is _BatchNorm.forward
        and not (module._forward_pre_hooks or module._forward_hooks)
        and not (module._backward_pre_hooks or module._backward_hooks)
    )


def batch_norm_over_samples(
    module: _BatchNorm, input_: Tensor, region: SampledRegion | None
) -> Tensor:
    """A batch norm layer applied to each sample of a stacked ``(S, N, C, *)`` input.

    The samples are folded into the channels, ``(N, S * C, *)``, so that one
    :func:`~torch.nn.functional.batch_norm` normalizes each sample with its own
    batch statistics and updates each sample's row of the running statistics, as
    the layer would for each sample alone. That is the layout in which the stacked
    convolutions return their output, so neither side copies; and unlike
    :func:`torch.vmap`, it takes a half-precision input under autocast.

    Parameters
    ----------
    module: _BatchNorm
        A layer for which :func:`is_plain_batch_norm` holds.
    input_: Tensor
        ``(S, N, C, *)``.
    region: SampledRegion or None
        The region of ``module`` (its per-sample running statistics) when it
        updates them, else ``None``.

    Returns
    -------
    Tensor
        Shaped like ``input_``.
    """
    assert region is not None or not _updates_running_statistics(module)
    num_samples, channels = input_.shape[0], input_.shape[2]
    module._check_input_dim(input_[0])
    folded = input_.transpose(0, 1).flatten(1, 2)
    weight, bias = (
        None if value is None else value.repeat(num_samples)
        for value in (module.weight, module.bias)
    )
    if region is not None:
        with region.installed(region.vmap_inputs()):
            counter = module.num_batches_tracked
            assert counter is not None
            counter.add_(1)
            momentum = module.momentum
            if momentum is None:  # a cumulative average
                momentum = 1.0 / float(counter)
            stacks = region.vmap_inputs()[0]  # this layer's (S, C) rows
            output = F.batch_norm(
                folded,
                stacks["running_mean"].view(-1),  # updated in place
                stacks["running_var"].view(-1),
                weight,
                bias,
                True,
                momentum,
                module.eps,
            )
    elif module.training or module.running_mean is None:
        output = F.batch_norm(folded, None, None, weight, bias, True, 0.0, module.eps)
    else:
        assert module.running_var is not None
        output = F.batch_norm(
            folded,
            module.running_mean.repeat(num_samples),
            module.running_var.repeat(num_samples),
            weight,
            bias,
            False,
            0.0,
            module.eps,
        )
    return output.unflatten(1, (num_samples, channels)).transpose(0, 1)
