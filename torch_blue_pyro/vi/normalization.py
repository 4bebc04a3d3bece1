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
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.parameter import UninitializedBuffer

__all__ = ["RunningStatistics", "SampledRegion"]

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
