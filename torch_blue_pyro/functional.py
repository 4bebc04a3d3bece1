r"""Functional core of the Bayesian layers: the math for stacked weight samples.

In torch_blue mode a layer's weight carries a leading sample dimension ``S`` (one
weight per sample) and so does its input (possibly a stride-0 expansion of one
batch). These functions compute all ``S`` outputs at once; given an ordinary weight
without the sample dimension, they are the ``torch.nn.functional`` operations.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .amp import autocast_backward, autocast_forward


def shares_samples(input: Tensor) -> bool:
    """Whether a stacked input holds one batch for all samples (a stride-0 expansion).

    Autosampling gives a module's declared inputs the sample dimension by
    :meth:`~torch.Tensor.expand`, which copies nothing: the ``S`` entries are one
    tensor in memory. The functions below then compute on that one batch once
    instead of ``S`` times; this is a layout test, exact by construction.

    Parameters
    ----------
    input: Tensor
        ``(S, *)``.

    Returns
    -------
    bool
        ``True`` if the leading dimension has stride 0.
    """
    return input.stride(0) == 0


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""Affine map :math:`y = x W^\top + b`, per weight sample when ``weight`` is 3-D.

    Parameters
    ----------
    input: Tensor
        ``(*, in)`` for a 2-D weight; ``(S, *, in)`` for a 3-D weight.
    weight: Tensor
        ``(out, in)``, or ``(S, out, in)``: one weight per sample.
    bias: Tensor, optional
        ``(out,)``, or ``(S, out)`` with a 3-D weight.

    Returns
    -------
    Tensor
        ``(*, out)``, or ``(S, *, out)`` with a 3-D weight.
    """
    if weight.dim() == 2:
        return F.linear(input, weight, bias)
    num_samples, out_features, in_features = weight.shape
    batch_shape = input.shape[1:-1]
    if shares_samples(input):
        # One batch shared by all samples: a single GEMM against every sample's weight.
        rows = input[0].reshape(-1, in_features)
        output = F.linear(rows, weight.reshape(-1, in_features))
        output = output.view(-1, num_samples, out_features).transpose(0, 1)
        if bias is not None:
            # In the product's dtype, which autocast may have lowered (as F.linear's).
            output = output + bias.unsqueeze(1).to(output.dtype)
    else:
        rows = input.reshape(num_samples, -1, in_features)
        output = _PerSampleLinear.apply(rows, weight, bias)
    return output.reshape(num_samples, *batch_shape, out_features)


class _PerSampleLinear(torch.autograd.Function):
    r"""Per-sample affine maps with the backward products in their fast layouts.

    :math:`Y_s = X_s W_s^\top + b_s` for ``(S, B, in)`` rows and ``(S, out, in)``
    weights.

    Autograd would form the weight gradient as :math:`(X_s^\top G_s)^\top`, which
    for a wide input and a narrow output (a classifier head on 2048 features, say)
    is several times slower than :math:`G_s^\top X_s`; this computes whichever
    product leads with the smaller of ``out`` and ``in``. Under ``torch.autocast``
    the products run in the autocast dtype, the backward's too.
    """

    @staticmethod
    @autocast_forward
    def forward(ctx: Any, rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(rows, weight)
        transposed = weight.transpose(1, 2)
        if bias is None:
            return rows.bmm(transposed)
        return bias.unsqueeze(1).baddbmm(rows, transposed)

    @staticmethod
    @autocast_backward
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        rows, weight = ctx.saved_tensors
        rows_grad = weight_grad = bias_grad = None
        if ctx.needs_input_grad[0]:
            rows_grad = grad.bmm(weight)
        if ctx.needs_input_grad[1]:
            if weight.shape[1] <= weight.shape[2]:
                weight_grad = grad.transpose(1, 2).bmm(rows)
            else:
                weight_grad = rows.transpose(1, 2).bmm(grad).transpose(1, 2)
        if ctx.needs_input_grad[2]:
            bias_grad = grad.sum(1)
        return rows_grad, weight_grad, bias_grad


_TORCH_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    r"""1-D convolution, per weight sample when ``weight`` is 4-D.

    Like :func:`conv2d`, for inputs with one spatial dimension.

    Parameters
    ----------
    input: Tensor
        ``(N, C_in, L)`` or ``(C_in, L)``; with a stacked weight ``(S, N, C_in, L)``
        or ``(S, C_in, L)``.
    weight: Tensor
        ``(C_out, C_in / groups, K)``, or ``(S, C_out, C_in / groups, K)``: one
        weight per sample.
    bias: Tensor, optional
        ``(C_out,)``, or ``(S, C_out)`` with a stacked weight.
    stride: int or tuple[int]
        Step of the kernel.
    padding: str or int or tuple[int]
        ``"same"``, ``"valid"``, or the padding added on both sides.
    dilation: int or tuple[int]
        Spacing between the kernel's taps.
    groups: int
        Number of blocked connections from input to output channels.
    padding_mode: str
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    Returns
    -------
    Tensor
        ``(N, C_out, L_out)`` or ``(C_out, L_out)``; with a stacked weight
        ``(S, N, C_out, L_out)`` or ``(S, C_out, L_out)``.
    """
    return _convolution(
        1, input, weight, bias, stride, padding, dilation, groups, padding_mode
    )


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    r"""2-D convolution, per weight sample when ``weight`` is 5-D.

    Given a weight ``(C_out, C_in / groups, K_H, K_W)``, this is what
    :class:`torch.nn.Conv2d` computes: :func:`torch.nn.functional.conv2d`, after
    padding the input with :func:`torch.nn.functional.pad` for a ``padding_mode``
    other than ``"zeros"``.

    Given a stacked weight ``(S, C_out, C_in / groups, K_H, K_W)``, output ``s`` is
    the convolution of ``input[s]`` with ``weight[s]`` and ``bias[s]``, and all ``S``
    of them come from one convolution with the samples folded into the channels:

    * in general the input becomes ``(N, S * C_in, H, W)`` and the weight
      ``(S * C_out, C_in / groups, K_H, K_W)``, convolved with ``S * groups``
      groups;
    * when the input is one batch shared by all samples (the stride-0 expansion the
      outermost module makes) and ``groups == 1``, the batch is convolved once, as it
      is, with the ``S * C_out`` stacked filters: no copy of the input.

    The output ``(N, S * C_out, H_out, W_out)`` is returned as the view
    ``(S, N, C_out, H_out, W_out)``, so that the next convolution folds it again
    without a copy.

    Parameters
    ----------
    input: Tensor
        ``(N, C_in, H, W)`` or ``(C_in, H, W)``; with a stacked weight
        ``(S, N, C_in, H, W)`` or ``(S, C_in, H, W)``.
    weight: Tensor
        ``(C_out, C_in / groups, K_H, K_W)``, or ``(S, C_out, C_in / groups, K_H,
        K_W)``: one weight per sample.
    bias: Tensor, optional
        ``(C_out,)``, or ``(S, C_out)`` with a stacked weight.
    stride: int or tuple[int, int]
        Step of the kernel.
    padding: str or int or tuple[int, int]
        ``"same"``, ``"valid"``, or the padding added on both sides.
    dilation: int or tuple[int, int]
        Spacing between the kernel's taps.
    groups: int
        Number of blocked connections from input to output channels.
    padding_mode: str
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    Returns
    -------
    Tensor
        ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``; with a stacked
        weight ``(S, N, C_out, H_out, W_out)`` or ``(S, C_out, H_out, W_out)``.

    Raises
    ------
    ValueError
        If a stacked weight's sample dimension or channels do not fit the input.
    """
    return _convolution(
        2, input, weight, bias, stride, padding, dilation, groups, padding_mode
    )


def conv3d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    r"""3-D convolution, per weight sample when ``weight`` is 6-D.

    Like :func:`conv2d`, for inputs with three spatial dimensions.

    Parameters
    ----------
    input: Tensor
        ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``; with a stacked weight
        ``(S, N, C_in, D, H, W)`` or ``(S, C_in, D, H, W)``.
    weight: Tensor
        ``(C_out, C_in / groups, K_D, K_H, K_W)``, or ``(S, C_out, C_in / groups,
        K_D, K_H, K_W)``: one weight per sample.
    bias: Tensor, optional
        ``(C_out,)``, or ``(S, C_out)`` with a stacked weight.
    stride: int or tuple[int, int, int]
        Step of the kernel.
    padding: str or int or tuple[int, int, int]
        ``"same"``, ``"valid"``, or the padding added on both sides.
    dilation: int or tuple[int, int, int]
        Spacing between the kernel's taps.
    groups: int
        Number of blocked connections from input to output channels.
    padding_mode: str
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    Returns
    -------
    Tensor
        ``(N, C_out, D_out, H_out, W_out)`` or ``(C_out, D_out, H_out, W_out)``;
        with a stacked weight ``(S, N, C_out, D_out, H_out, W_out)`` or
        ``(S, C_out, D_out, H_out, W_out)``.
    """
    return _convolution(
        3, input, weight, bias, stride, padding, dilation, groups, padding_mode
    )


def _pad_widths(
    padding: str | int | tuple[int, ...],
    kernel_size: tuple[int, ...],
    dilation: int | tuple[int, ...],
) -> list[int]:
    """The widths :func:`torch.nn.functional.pad` takes for a convolution's padding.

    Last spatial dimension first, ``[left, right]`` for each, as
    :class:`torch.nn.Conv2d` computes them for padding modes other than ``"zeros"``.
    ``"same"`` puts the odd element of an even total on the right.
    """
    dims = len(kernel_size)
    dilations = (dilation,) * dims if isinstance(dilation, int) else dilation
    if padding == "valid":
        return [0, 0] * dims
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilations, kernel_size, strict=True)]
        sides = [(total // 2, total - total // 2) for total in totals]
    else:
        amounts = (padding,) * dims if isinstance(padding, int) else padding
        sides = [(int(amount), int(amount)) for amount in amounts]
    return [width for pair in reversed(sides) for width in pair]


def _convolution(
    dims: int,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int | tuple[int, ...],
    padding: str | int | tuple[int, ...],
    dilation: int | tuple[int, ...],
    groups: int,
    padding_mode: str,
) -> Tensor:
    """The convolutions of :func:`conv1d`, :func:`conv2d` and :func:`conv3d`."""
    convolve = _TORCH_CONVOLUTIONS[dims]
    pad: list[int] | None = None
    if padding_mode != "zeros":
        pad = _pad_widths(padding, tuple(weight.shape[-dims:]), dilation)
        padding = 0
    if weight.dim() == dims + 2:
        if pad is not None:
            input = F.pad(input, pad, mode=padding_mode)
        return convolve(input, weight, bias, stride, padding, dilation, groups)

    if weight.dim() != dims + 3:
        raise ValueError(
            f"conv{dims}d expects a weight of {dims + 2} dimensions, or {dims + 3} "
            f"with a leading sample dimension, got shape {tuple(weight.shape)}"
        )
    num_samples, out_channels, group_channels = weight.shape[:3]
    unbatched = input.dim() == dims + 2
    channel_dim = 1 if unbatched else 2
    if (
        input.dim() not in (dims + 2, dims + 3)
        or input.shape[0] != num_samples
        or input.shape[channel_dim] != group_channels * groups
    ):
        raise ValueError(
            f"conv{dims}d with a stacked weight of shape {tuple(weight.shape)} and "
            f"groups={groups} expects input of shape (S={num_samples}, [N,] "
            f"C_in={group_channels * groups}, <{dims} spatial dims>), got "
            f"{tuple(input.shape)}"
        )
    if unbatched:
        input = input.unsqueeze(1)
    filters = weight.reshape(num_samples * out_channels, *weight.shape[2:])
    biases = None if bias is None else bias.reshape(num_samples * out_channels)
    if groups == 1 and shares_samples(input):
        # One batch shared by all samples: convolve it once with all S * C_out filters.
        batch = input[0]
        folded_groups = 1
    else:
        # (S, N, C_in, ...) -> (N, S * C_in, ...): sample s is groups s*g .. s*g+g-1.
        batch = input.transpose(0, 1).flatten(1, 2)
        folded_groups = num_samples * groups
    if pad is not None:
        batch = F.pad(batch, pad, mode=padding_mode)
    output = convolve(batch, filters, biases, stride, padding, dilation, folded_groups)
    output = output.unflatten(1, (num_samples, out_channels)).transpose(0, 1)
    return output.squeeze(1) if unbatched else output


# ----------------------------------------------------------------------- attention
def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    *,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    bias_k: Tensor | None = None,
    bias_v: Tensor | None = None,
    add_zero_attn: bool = False,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    average_attn_weights: bool = True,
) -> tuple[Tensor, Tensor | None]:
    r"""Multi-head attention, per weight sample when the weights are 3-D.

    The math of :class:`torch.nn.MultiheadAttention` in batch-first layout: project
    query, key and value, split the embedding into ``num_heads`` heads, attend with
    :math:`\operatorname{softmax}(Q K^\top / \sqrt{d} + M)\, V` per head, and project
    the concatenated heads. With 3-D weights (one per sample) every tensor carries a
    leading sample dimension ``S``, which is folded into the batch: all samples are
    computed by the same batched kernels (one
    :func:`~torch.nn.functional.scaled_dot_product_attention` call). A packed
    projection is one matrix product when ``query``, ``key`` and ``value`` are the
    same tensor (self-attention), two when only ``key`` and ``value`` are.

    Parameters
    ----------
    query: Tensor
        ``(N, L, E)``; ``(S, N, L, E)`` with 3-D weights.
    key: Tensor
        ``(N, L_k, E_k)``; ``(S, N, L_k, E_k)`` with 3-D weights.
    value: Tensor
        ``(N, L_k, E_v)``; ``(S, N, L_k, E_v)`` with 3-D weights.
    num_heads: int
        Number of heads; must divide ``E``.
    in_proj_weight: Tensor, optional
        ``(3 E, E)`` (or ``(S, 3 E, E)``): the query, key and value projections
        stacked. ``None`` when the three are given separately.
    in_proj_bias: Tensor, optional
        ``(3 E,)`` (or ``(S, 3 E)``), the stacked projection biases.
    out_proj_weight: Tensor
        ``(E, E)`` (or ``(S, E, E)``), the output projection.
    out_proj_bias: Tensor, optional
        ``(E,)`` (or ``(S, E)``).
    q_proj_weight: Tensor, optional
        ``(E, E)`` (or ``(S, E, E)``), used when ``in_proj_weight`` is ``None``.
    k_proj_weight: Tensor, optional
        ``(E, E_k)`` (or ``(S, E, E_k)``), used when ``in_proj_weight`` is ``None``.
    v_proj_weight: Tensor, optional
        ``(E, E_v)`` (or ``(S, E, E_v)``), used when ``in_proj_weight`` is ``None``.
    bias_k: Tensor, optional
        ``(1, 1, E)`` (or ``(S, 1, 1, E)``), a learned key appended to the projected
        keys; given together with ``bias_v``.
    bias_v: Tensor, optional
        ``(1, 1, E)`` (or ``(S, 1, 1, E)``), the value appended with ``bias_k``.
    add_zero_attn: bool, default: False
        Append a key and a value of zeros to every head.
    attn_mask: Tensor, optional
        Added to the attention scores before the softmax; broadcastable to
        ``(N, H, L, L_k)`` (``(S, N, H, L, L_k)`` with 3-D weights), where ``L_k``
        excludes the positions ``bias_k`` and ``add_zero_attn`` append (they are
        never masked). A boolean mask is turned into one with ``-inf`` where it is
        ``True`` (``True`` = may not attend, as in ``nn.MultiheadAttention``).
    is_causal: bool, default: False
        Mask out keys after the query's position (the upper-left causal mask, as in
        :func:`~torch.nn.functional.scaled_dot_product_attention`); not together with
        ``attn_mask``.
    dropout_p: float, default: 0.0
        Dropout probability on the attention weights (pass 0 when evaluating).
    need_weights: bool, default: False
        Also return the attention weights; computes the softmax explicitly instead of
        with the fused kernel.
    average_attn_weights: bool, default: True
        Average the returned weights over the heads.

    Returns
    -------
    tuple[Tensor, Tensor or None]
        The output ``(N, L, E)`` (``(S, N, L, E)``) and, with ``need_weights``, the
        attention weights ``(N, L, L_k')`` averaged over heads or ``(N, H, L, L_k')``
        per head (with the leading ``S`` for 3-D weights), where ``L_k'`` counts the
        appended positions; else ``None``.

    Raises
    ------
    ValueError
        If ``num_heads`` does not divide ``E``, if neither ``in_proj_weight`` nor all
        three separate projections are given, if only one of ``bias_k`` and
        ``bias_v`` is given, or if ``attn_mask`` is given with ``is_causal``.
    """
    embed_dim = out_proj_weight.shape[-1]
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(
            f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim} and "
            f"num_heads={num_heads}"
        )
    if (bias_k is None) != (bias_v is None):
        raise ValueError("bias_k and bias_v must be given together")
    if is_causal and attn_mask is not None:
        raise ValueError("give either attn_mask or is_causal=True, not both")
    head_dim = embed_dim // num_heads
    query_, key_, value_ = _attention_projections(
        query,
        key,
        value,
        embed_dim,
        in_proj_weight,
        in_proj_bias,
        (q_proj_weight, k_proj_weight, v_proj_weight),
    )
    mask = None if attn_mask is None else _additive_mask(attn_mask, query_)
    if bias_k is not None and bias_v is not None:
        mask = _pad_keys(mask, key_.shape[-2])
        key_, value_ = _append_key(key_, bias_k), _append_key(value_, bias_v)
    # (*, N, L, E) -> (*, N, H, L, E / H)
    query_, key_, value_ = (
        x.unflatten(-1, (num_heads, head_dim)).transpose(-3, -2)
        for x in (query_, key_, value_)
    )
    if add_zero_attn:
        mask = _pad_keys(mask, key_.shape[-2])
        key_, value_ = F.pad(key_, (0, 0, 0, 1)), F.pad(value_, (0, 0, 0, 1))
    batch_shape = query_.shape[:-3]
    target_len, source_len = query_.shape[-2], key_.shape[-2]
    weights = None
    if need_weights:
        scores = (query_ * head_dim**-0.5).matmul(key_.transpose(-2, -1))
        if is_causal:
            mask = scores.new_full((target_len, source_len), float("-inf")).triu(1)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(dim=-1)
        if dropout_p > 0.0:
            weights = F.dropout(weights, p=dropout_p)
        heads = weights.matmul(value_)
        if average_attn_weights:
            weights = weights.mean(dim=-3)
    else:
        # Fold the sample (and batch) dimensions into one batch for the fused kernel.
        heads = F.scaled_dot_product_attention(
            query_.reshape(-1, num_heads, target_len, head_dim),
            key_.reshape(-1, num_heads, source_len, head_dim),
            value_.reshape(-1, num_heads, source_len, head_dim),
            attn_mask=None if mask is None else _fold_mask(mask, batch_shape),
            dropout_p=dropout_p,
            is_causal=is_causal,
        ).reshape(*batch_shape, num_heads, target_len, head_dim)
    output = heads.transpose(-3, -2).reshape(*batch_shape, target_len, embed_dim)
    return linear(output, out_proj_weight, out_proj_bias), weights


def _attention_projections(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    separate_weights: tuple[Tensor | None, Tensor | None, Tensor | None],
) -> tuple[Tensor, Tensor, Tensor]:
    """Project query, key and value, sharing matrix products where inputs coincide."""
    biases: tuple[Tensor | None, ...] = (None, None, None)
    if in_proj_bias is not None:
        biases = tuple(in_proj_bias.chunk(3, dim=-1))
    if in_proj_weight is None:
        if any(weight is None for weight in separate_weights):
            raise ValueError(
                "give in_proj_weight or all of q_proj_weight, k_proj_weight and "
                "v_proj_weight"
            )
        q_weight, k_weight, v_weight = separate_weights
        assert q_weight is not None and k_weight is not None and v_weight is not None
        return (
            linear(query, q_weight, biases[0]),
            linear(key, k_weight, biases[1]),
            linear(value, v_weight, biases[2]),
        )
    if query is key and key is value:
        projected = linear(query, in_proj_weight, in_proj_bias)
        q, k, v = projected.chunk(3, dim=-1)
        return q, k, v
    q_weight, kv_weight = in_proj_weight.split((embed_dim, 2 * embed_dim), dim=-2)
    q_bias = kv_bias = None
    if in_proj_bias is not None:
        q_bias, kv_bias = in_proj_bias.split((embed_dim, 2 * embed_dim), dim=-1)
    q = linear(query, q_weight, q_bias)
    if key is value:
        k, v = linear(key, kv_weight, kv_bias).chunk(2, dim=-1)
        return q, k, v
    k_weight, v_weight = kv_weight.chunk(2, dim=-2)
    return q, linear(key, k_weight, biases[1]), linear(value, v_weight, biases[2])


def _append_key(keys: Tensor, extra: Tensor) -> Tensor:
    """Append one key (or value) ``extra`` of shape ``(*, 1, 1, E)`` to every sequence.

    ``keys`` is ``(*, N, L_k, E)``; the result ``(*, N, L_k + 1, E)``.
    """
    length = keys.shape[-2]
    appended = extra.expand(*keys.shape[:-2], 1, keys.shape[-1])
    return F.pad(keys, (0, 0, 0, 1)) + F.pad(appended, (0, 0, length, 0))


def _additive_mask(mask: Tensor, like: Tensor) -> Tensor:
    """A mask to add to attention scores of ``like``'s dtype and device.

    A boolean mask becomes ``-inf`` where it is ``True`` and 0 elsewhere; a
    floating-point mask is converted.
    """
    if mask.dtype.is_floating_point:
        return mask.to(like)
    additive = like.new_zeros(mask.shape)
    return additive.masked_fill_(mask.to(like.device), float("-inf"))


def _pad_keys(mask: Tensor | None, source_len: int) -> Tensor | None:
    """Extend a mask by one key that every query may attend (an appended key)."""
    if mask is None:
        return None
    return F.pad(mask.expand(*mask.shape[:-1], source_len), (0, 1))


def _fold_mask(mask: Tensor, batch_shape: tuple[int, ...]) -> Tensor:
    """Reshape a mask broadcastable to ``(*batch_shape, H, L, L_k)`` for the kernel.

    The kernel sees the batch dimensions folded into one; a mask that does not vary
    along them keeps broadcasting, others are expanded and folded alike.
    """
    leading = len(batch_shape)
    if mask.dim() < leading + 3:
        mask = mask.reshape((1,) * (leading + 3 - mask.dim()) + tuple(mask.shape))
    per_head = tuple(mask.shape[leading:])
    if all(size == 1 for size in mask.shape[:leading]):
        return mask.reshape(per_head)
    return mask.expand(*batch_shape, *per_head).reshape(-1, *per_head)


def linear_local_reparameterization(
    input: Tensor,
    weight_mean: Tensor,
    weight_std: Tensor,
    bias_mean: Tensor | None = None,
    bias_std: Tensor | None = None,
    num_samples: int | None = None,
) -> Tensor:
    r"""Sample :math:`x W^\top + b` for Gaussian :math:`W, b` from its marginal.

    Each output element is drawn from

    .. math::
        \mathcal N\bigl(x\mu_W^\top + \mu_b,\; x^2(\sigma_W^2)^\top + \sigma_b^2\bigr),

    independently per example (Kingma, Salimans and Welling, 2015): two matrix
    products, no weight sample.

    Parameters
    ----------
    input: Tensor
        ``(*, in)``; with ``num_samples``, ``(S, *, in)``.
    weight_mean, weight_std: Tensor
        ``(out, in)``.
    bias_mean, bias_std: Tensor, optional
        ``(out,)``.
    num_samples: int, optional
        ``S``: the input leads with the sample dimension; a stride-0 (shared) input
        is multiplied once.

    Returns
    -------
    Tensor
        Shaped like the input with ``out`` features.
    """
    shared = num_samples is not None and shares_samples(input)
    rows = input[0] if shared else input
    bias_variance = None if bias_std is None else bias_std.square()
    mean = F.linear(rows, weight_mean, bias_mean)
    variance = F.linear(rows.square(), weight_std.square(), bias_variance)
    if num_samples is not None and shared:
        mean = mean.expand(num_samples, *mean.shape)
        variance = variance.expand(num_samples, *variance.shape)
    return _normal_sample(mean, variance)


def linear_flipout(
    input: Tensor,
    weight_mean: Tensor,
    weight_delta: Tensor,
    bias: Tensor | None = None,
) -> Tensor:
    r"""Flipout: :math:`x\mu^\top + ((x \circ r)\Delta^\top) \circ c + b`.

    ``weight_delta`` is a perturbation of the mean drawn once (per sample); the
    random signs :math:`r, c \in \{\pm1\}` of each example make the examples'
    perturbations pairwise independent (Wen et al., 2018).

    Parameters
    ----------
    input: Tensor
        ``(*, in)``, or ``(S, *, in)`` with a 3-D ``weight_delta``.
    weight_mean: Tensor
        ``(out, in)``.
    weight_delta: Tensor
        ``(out, in)``, or ``(S, out, in)``: one perturbation per sample.
    bias: Tensor, optional
        The drawn bias, ``(out,)`` or ``(S, out)``.

    Returns
    -------
    Tensor
        Shaped like the input with ``out`` features.
    """
    shared = weight_delta.dim() == 3 and shares_samples(input)
    mean = F.linear(input[0] if shared else input, weight_mean)
    perturbation = linear(input * _random_signs(input), weight_delta)
    output = mean + perturbation * _random_signs(perturbation)
    if bias is not None:
        if weight_delta.dim() == 3:
            bias = bias.reshape(bias.shape[0], *([1] * (output.dim() - 2)), -1)
        output = output + bias
    return output


def conv_local_reparameterization(
    input: Tensor,
    weight_mean: Tensor,
    weight_std: Tensor,
    bias_mean: Tensor | None = None,
    bias_std: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    num_samples: int | None = None,
) -> Tensor:
    r"""Sample a convolution with Gaussian weight and bias from its marginals.

    With :math:`\star` the convolution of the layer (any stride, padding, padding
    mode, dilation and groups), each output element is drawn from

    .. math::
        \mathcal N\bigl(x \star \mu_W + \mu_b,\;
        x^2 \star \sigma_W^2 + \sigma_b^2\bigr),

    independently per sample, example, channel and position: two convolutions, no
    weight sample. Every output element has the distribution it has under a drawn
    weight, but the positions of one example, which share the weight, are no longer
    correlated. Unlike in a linear layer this changes the expected loss where later
    layers combine positions (pooling, say): local reparameterization of a
    convolution is an approximation (the usual one, after Kingma, Salimans and
    Welling, 2015), and :func:`conv_flipout` is the unbiased alternative.

    Parameters
    ----------
    input: Tensor
        ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``; with ``num_samples``,
        ``(S, N, C_in, *spatial)`` or ``(S, C_in, *spatial)``.
    weight_mean, weight_std: Tensor
        ``(C_out, C_in / groups, *kernel_size)``.
    bias_mean, bias_std: Tensor, optional
        ``(C_out,)``.
    stride: int or tuple[int, ...]
        Step of the kernel.
    padding: str or int or tuple[int, ...]
        ``"same"``, ``"valid"``, or the padding added on both sides.
    dilation: int or tuple[int, ...]
        Spacing between the kernel's taps.
    groups: int
        Number of blocked connections from input to output channels.
    padding_mode: str
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
    num_samples: int, optional
        ``S``: the input leads with the sample dimension. A stride-0 (shared) input
        is convolved once, a per-sample one with the samples folded into the batch.

    Returns
    -------
    Tensor
        ``(N, C_out, *spatial_out)`` or ``(C_out, *spatial_out)``, after ``S`` with
        ``num_samples``.
    """
    dims = weight_mean.dim() - 2
    arguments = (stride, padding, dilation, groups, padding_mode)
    batch, layout = _fold_samples(input, dims, num_samples)
    bias_variance = None if bias_std is None else bias_std.square()
    mean = _convolution(dims, batch, weight_mean, bias_mean, *arguments)
    variance = _convolution(
        dims, batch.square(), weight_std.square(), bias_variance, *arguments
    )
    return _normal_sample(
        _unfold_samples(mean, layout, num_samples),
        _unfold_samples(variance, layout, num_samples),
    )


def conv_flipout(
    input: Tensor,
    weight_mean: Tensor,
    weight_delta: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: str | int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tensor:
    r"""Flipout for a convolution: one shared perturbation, flipped per example.

    The output is :math:`x \star \mu + ((x \circ r) \star \Delta) \circ c + b`,
    with :math:`\star` the convolution of the layer (any stride, padding, padding
    mode, dilation and groups). ``weight_delta`` is a perturbation of the mean
    drawn once (per sample). Each example draws random signs
    :math:`r \in \{\pm1\}^{C_{in}}` per input channel and
    :math:`c \in \{\pm1\}^{C_{out}}` per output channel, each shared by all
    positions, as in Wen et al. (2018) and TensorFlow Probability (bayesian-torch
    draws them per position instead). Then

    .. math::
        ((x \circ r) \star \Delta) \circ c = x \star (\Delta \circ c\, r^\top),

    where :math:`c\, r^\top` flips the sign of the filter taps of output channel
    :math:`o` and input channel :math:`i` by :math:`c_o r_i`. Each example's output
    is therefore exactly the convolution with the weight
    :math:`\mu + \Delta \circ c\, r^\top`, which is distributed as the drawn weight
    when :math:`\Delta` is symmetric about 0 with independent elements (a
    mean-field Gaussian): the estimator is unbiased, and the perturbations of
    different examples are uncorrelated. (Signs per position would give each
    position its own weight, which is not a convolution with one draw.)

    Parameters
    ----------
    input: Tensor
        ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``; with a stacked
        ``weight_delta``, ``(S, N, C_in, *spatial)`` or ``(S, C_in, *spatial)``.
    weight_mean: Tensor
        ``(C_out, C_in / groups, *kernel_size)``.
    weight_delta: Tensor
        Shaped like ``weight_mean``, or ``(S, C_out, C_in / groups, *kernel_size)``:
        one perturbation per sample.
    bias: Tensor, optional
        The drawn bias, ``(C_out,)``, or ``(S, C_out)`` with a stacked
        ``weight_delta``.
    stride: int or tuple[int, ...]
        Step of the kernel.
    padding: str or int or tuple[int, ...]
        ``"same"``, ``"valid"``, or the padding added on both sides.
    dilation: int or tuple[int, ...]
        Spacing between the kernel's taps.
    groups: int
        Number of blocked connections from input to output channels.
    padding_mode: str
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    Returns
    -------
    Tensor
        ``(N, C_out, *spatial_out)`` or ``(C_out, *spatial_out)``, after ``S`` with a
        stacked ``weight_delta``.
    """
    dims = weight_mean.dim() - 2
    arguments = (stride, padding, dilation, groups, padding_mode)
    stacked = weight_delta.dim() == dims + 3
    num_samples = weight_delta.shape[0] if stacked else None
    batch, layout = _fold_samples(input, dims, num_samples)
    mean = _convolution(dims, batch, weight_mean, None, *arguments)
    mean = _unfold_samples(mean, layout, num_samples)
    if stacked and input.dim() == dims + 3:
        # Signs drawn in (N, S, ...) order: the flipped input is laid out as the
        # grouped convolution of the samples reads it, (N, S * C_in, ...), no copy.
        examples_first = input.transpose(0, 1)
        flipped = (examples_first * _random_signs(examples_first, dims)).transpose(0, 1)
    else:
        flipped = input * _random_signs(input, dims)
    perturbation = _convolution(dims, flipped, weight_delta, None, *arguments)
    if bias is not None:
        between = perturbation.dim() - dims - bias.dim()
        mean = mean + bias.reshape(
            *bias.shape[:-1], *([1] * between), bias.shape[-1], *([1] * dims)
        )
    return torch.addcmul(mean, perturbation, _random_signs(perturbation, dims))


def _fold_samples(
    input: Tensor, dims: int, num_samples: int | None
) -> tuple[Tensor, str]:
    """The batch that a weight shared by all samples convolves, and its layout.

    Without ``num_samples`` the input is the batch (``"plain"``). With it, a
    stride-0 (shared) input is convolved once (``"shared"``), a per-sample batched
    one ``(S, N, C, *spatial)`` with the samples folded into the batch
    (``"folded"``), and an unbatched ``(S, C, *spatial)`` one treats the samples as
    the batch (``"plain"``). :func:`_unfold_samples` restores the sample dimension.
    """
    if num_samples is None:
        return input, "plain"
    if shares_samples(input):
        return input[0], "shared"
    if input.dim() == dims + 3:
        return input.flatten(0, 1), "folded"
    return input, "plain"


def _unfold_samples(output: Tensor, layout: str, num_samples: int | None) -> Tensor:
    """The output of the batch of :func:`_fold_samples`, with the sample dimension."""
    if num_samples is None:
        return output
    if layout == "shared":
        return output.expand(num_samples, *output.shape)
    if layout == "folded":
        return output.unflatten(0, (num_samples, -1))
    return output


def _normal_sample(mean: Tensor, variance: Tensor) -> Tensor:
    r"""One draw of :math:`\mathcal N(\mu, \sigma^2)` per element, reparameterized.

    The variance is clamped to at least :math:`10^{-30}` so that the square root
    stays differentiable where it is 0 (an input of zeros, say).
    """
    noise = torch.randn_like(mean)
    return torch.addcmul(mean, variance.clamp_min(1e-30).sqrt(), noise)


def _random_signs(like: Tensor, broadcast_dims: int = 0) -> Tensor:
    """Independent signs, +1 or -1 with equal probability, shaped like ``like``.

    The last ``broadcast_dims`` dimensions have size 1: a convolution's signs are
    shared by the positions.
    """
    shape = like.shape[: like.dim() - broadcast_dims] + (1,) * broadcast_dims
    # random_(0, 2) draws 0 or 1 exactly; several times faster than bernoulli_(0.5).
    return like.new_empty(shape).random_(0, 2).mul_(2).sub_(1)
