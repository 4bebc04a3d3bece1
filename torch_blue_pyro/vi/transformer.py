"""Bayesian transformers: the counterparts of ``torch.nn``'s transformer modules.

Their attention is :class:`~torch_blue_pyro.vi.attention.VIMultiheadAttention`,
re-exported here, where torch_blue has it. Every projection is random (a variational
parameter pair per weight); layer norms stay deterministic ``nn.LayerNorm`` s, as in
torch_blue. In torch_blue mode all modules work on the leading sample dimension
natively: the projections multiply each sample's weights at once
(:func:`~torch_blue_pyro.functional.linear`) and attention runs with the samples
folded into the batch (:func:`~torch_blue_pyro.functional.multi_head_attention`).

Masks follow ``torch.nn``: boolean (``True`` = may not attend) or additive float
masks, ``attn_mask`` of shape ``(L, L_k)`` or ``(N * num_heads, L, L_k)`` for a
target length ``L`` and a source length ``L_k``, ``key_padding_mask`` of shape
``(N, L_k)`` (``(L_k,)`` for unbatched input), and ``is_causal`` as a hint that
``attn_mask`` is the causal mask. Masks never need a sample dimension. A mask passed
positionally to the outermost module is expanded along the sample dimension like
every input; such an expansion is recognised and read as one mask for all samples.
With ``sampled_input=True`` a mask may also carry one mask per sample, ``(S, *)``; a
3-D ``attn_mask`` whose first size is both ``S`` and ``N * num_heads`` is read as
torch's ``(N * num_heads, L, L_k)`` mask.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import Dropout, LayerNorm, Module, ModuleList, ReLU
from torch.nn import functional as F

from .attention import (
    VIMultiheadAttention,
    _is_per_sample_mask,
)
from .base import VIModule, current_num_samples
from .distributions import MeanFieldNormal, Prior, VariationalDistribution
from .linear import VILinear
from .torch_blue_0_9 import FEEDFORWARD_KEYS, upgrade_checkpoint
from .utils.checks import positive_int

Activation = str | Callable[[Tensor], Tensor]


def _causal_mask(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The additive causal mask: ``-inf`` above the diagonal, 0 elsewhere."""
    return torch.full((size, size), float("-inf"), device=device, dtype=dtype).triu(1)


def _detect_causal(mask: Tensor | None, is_causal: bool | None, seq_len: int) -> bool:
    """As ``torch.nn``: ``is_causal`` if given, else whether ``mask`` is causal."""
    if is_causal is not None:
        return bool(is_causal)
    if mask is None or mask.shape != (seq_len, seq_len):
        return False
    if mask.dtype.is_floating_point:
        causal = _causal_mask(seq_len, mask.device, mask.dtype)
    else:
        causal = torch.ones(seq_len, seq_len, device=mask.device).triu(1).bool()
    return bool((mask == causal).all())


def _activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if isinstance(activation, str):
        functions: dict[str, Callable[[Tensor], Tensor]] = {
            "relu": F.relu,
            "gelu": F.gelu,
        }
        if activation not in functions:
            raise ValueError(
                f"activation must be 'relu', 'gelu' or a callable, got {activation!r}"
            )
        return functions[activation]
    if not callable(activation):
        raise TypeError(
            "activation must be 'relu', 'gelu' or a callable, got "
            f"{type(activation).__name__}"
        )
    return activation


def _single_distribution(value: Any, argument: str, owner: str) -> None:
    if isinstance(value, (list, tuple)):
        raise TypeError(
            f"{owner} takes one {argument} for all its layers, got a "
            f"{type(value).__name__}"
        )


def _layer_vikwargs(
    owner: str,
    variational_distribution: VariationalDistribution,
    prior: Prior,
    rescale_prior: bool,
    kaiming_initialization: bool,
    prior_initialization: bool,
    return_log_probs: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    _single_distribution(variational_distribution, "variational_distribution", owner)
    _single_distribution(prior, "prior", owner)
    return {
        "variational_distribution": variational_distribution,
        "prior": prior,
        "rescale_prior": rescale_prior,
        "kaiming_initialization": kaiming_initialization,
        "prior_initialization": prior_initialization,
        "return_log_probs": return_log_probs,
        "device": device,
        "dtype": dtype,
    }


def _check_width(module: str, argument: str, tensor: Tensor, d_model: int) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(
            f"{module} expects {argument} to be a tensor, got {type(tensor).__name__}"
        )
    if tensor.dim() == 0 or tensor.shape[-1] != d_model:
        raise ValueError(
            f"{module}(d_model={d_model}) expects {argument} with {d_model} features "
            f"in the last dimension, got shape {_user_shape(tensor)}"
        )


def _user_shape(tensor: Tensor) -> tuple[int, ...]:
    """The shape as the user passed it: without the sample dimension."""
    return tuple(tensor.shape[0 if current_num_samples() is None else 1 :])


def _dropout(module: Dropout, x: Tensor) -> Tensor:
    return module(x) if module.p > 0.0 else x


def _sequence_length(x: Tensor, batch_first: bool) -> tuple[int, int | None]:
    """The sequence length and batch size (``None`` unbatched) of a layer input."""
    lead = 0 if current_num_samples() is None else 1
    if x.dim() - lead == 2:
        return x.shape[lead], None
    if batch_first:
        return x.shape[lead + 1], x.shape[lead]
    return x.shape[lead], x.shape[lead + 1]


class VITransformerEncoderLayer(VIModule):
    r"""Self-attention and a feed-forward block with random weights.

    The Bayesian :class:`torch.nn.TransformerEncoderLayer`, with torch_blue's
    signature and defaults (``dim_feedforward=512``, ``batch_first=True``, no dropout
    unless asked for). Submodules: ``self_attn``
    (:class:`VIMultiheadAttention`), ``linear1`` and ``linear2``
    (:class:`~torch_blue_pyro.vi.VILinear`), ``activation``, and the deterministic
    ``norm1``, ``norm2`` (``nn.LayerNorm``) and ``dropout``, ``dropout1``,
    ``dropout2`` (``nn.Dropout``, as in ``torch.nn``).

    With ``norm_first=False`` the layer computes
    ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``, with ``norm_first=True``
    ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``, where ``ff(x) =
    linear2(activation(linear1(x)))``, exactly as ``torch.nn``.

    Checkpoints of torch_blue 0.9, whose feed-forward block was ``_ff_block.0`` and
    ``_ff_block.2``, load into ``linear1`` and ``linear2``.

    Parameters
    ----------
    d_model: int
        ``E``, the embedding size.
    nhead: int
        Number of attention heads; must divide ``d_model``.
    dim_feedforward: int, default: 512
        Width of the feed-forward block (torch's default is 2048).
    activation: str or Callable[[Tensor], Tensor], default: ReLU()
        ``"relu"``, ``"gelu"`` or a callable (a module is registered as submodule).
    layer_norm_eps: float, default: 1e-5
        ``eps`` of the layer norms.
    batch_first: bool, default: True
        Inputs are ``(N, L, E)`` rather than ``(L, N, E)`` (torch's default:
        ``False``).
    norm_first: bool, default: False
        Normalize before rather than after attention and feed-forward block.
    bias: bool, default: True
        Biases of the projections and the layer norms.
    variational_distribution: VariationalDistribution, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`, for all random variables.
    prior: Prior, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`, for all random variables.
    rescale_prior: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dropout: float, default: 0.0
        Dropout probability in training mode, where ``torch.nn`` applies it
        (keyword only; torch_blue has none; torch's default is 0.1).

    Shape
    -----
    - src: :math:`(N, L, E)` (``batch_first``), :math:`(L, N, E)` or :math:`(L, E)`
      unbatched; nested in torch_blue mode with the leading sample dimension
      :math:`(S, \dots)`.
    - Output: shaped like ``src``; as the outermost module with the leading sample
      dimension, e.g. :math:`(S, N, L, E)`.

    Examples
    --------
    >>> layer = VITransformerEncoderLayer(16, 4, dim_feedforward=32)
    >>> out = layer(torch.randn(8, 5, 16), samples=3)
    >>> out.shape, out.log_probs.shape
    (torch.Size([3, 8, 5, 16]), torch.Size([3, 2]))
    """

    handles_sample_dim: ClassVar[bool] = True
    sampled_inputs: ClassVar[tuple[str, ...] | None] = ("src",)

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 512,
        activation: Activation = ReLU(),
        layer_norm_eps: float = 1e-5,
        batch_first: bool = True,
        norm_first: bool = False,
        bias: bool = True,
        variational_distribution: VariationalDistribution = MeanFieldNormal(),
        prior: Prior = MeanFieldNormal(),
        rescale_prior: bool = True,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        vikwargs = _layer_vikwargs(
            type(self).__name__,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
        dim_feedforward = positive_int(dim_feedforward, "dim_feedforward")
        self.self_attn = VIMultiheadAttention(
            d_model,
            nhead,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            **vikwargs,
        )
        self.linear1 = VILinear(d_model, dim_feedforward, bias=bias, **vikwargs)
        self.activation: Callable[[Tensor], Tensor] = _activation(activation)
        self.linear2 = VILinear(dim_feedforward, d_model, bias=bias, **vikwargs)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(
            d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
        )
        self.norm2 = LayerNorm(
            d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
        )
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.return_log_probs = return_log_probs

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = False,
    ) -> Tensor:
        """Pass ``src`` through self-attention and the feed-forward block.

        Parameters
        ----------
        src: Tensor
            The sequence; see the class's Shape section.
        src_mask: Tensor, optional
            The attention mask, ``(L, L)`` or ``(N * nhead, L, L)``, boolean
            (``True`` = may not attend) or additive.
        src_key_padding_mask: Tensor, optional
            ``(N, L)`` (``(L,)`` unbatched), boolean (``True`` = padding) or additive.
        is_causal: bool, default: False
            Hint that ``src_mask`` is the causal mask (``None``: ``False``, as in
            ``torch.nn``).

        Returns
        -------
        Tensor
            Shaped like ``src``.

        Raises
        ------
        ValueError
            If the last dimension of ``src`` is not ``d_model`` or a mask does not fit.
        """
        _check_width("VITransformerEncoderLayer", "src", src, self.self_attn.embed_dim)
        is_causal = bool(is_causal)
        x = src
        if self.norm_first:
            x = x + self._sa_block(
                self.norm1(x), src_mask, src_key_padding_mask, is_causal
            )
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(
                x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal)
            )
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        output, _ = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            need_weights=False,
        )
        return _dropout(self.dropout1, output)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(_dropout(self.dropout, self.activation(self.linear1(x))))
        return _dropout(self.dropout2, x)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        upgrade_checkpoint(state_dict, prefix, FEEDFORWARD_KEYS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class VITransformerDecoderLayer(VIModule):
    r"""Self-attention, attention to a memory, and a feed-forward block.

    The Bayesian :class:`torch.nn.TransformerDecoderLayer`, with torch_blue's
    signature and defaults; note that ``norm_first`` comes before ``batch_first``
    here (torch has them the other way round). Submodules: ``self_attn`` and
    ``multihead_attn`` (:class:`VIMultiheadAttention`), ``linear1``, ``linear2``,
    ``activation``, ``norm1`` to ``norm3`` and ``dropout``, ``dropout1`` to
    ``dropout3``, as in ``torch.nn``. ``tgt_is_causal`` is the hint for the
    self-attention and ``memory_is_causal`` for the memory attention, as in
    ``torch.nn``.

    Parameters
    ----------
    d_model: int
        ``E``, the embedding size.
    nhead: int
        Number of attention heads; must divide ``d_model``.
    dim_feedforward: int, default: 512
        Width of the feed-forward block.
    activation: str or Callable[[Tensor], Tensor], default: ReLU()
        ``"relu"``, ``"gelu"`` or a callable.
    layer_norm_eps: float, default: 1e-5
        ``eps`` of the layer norms.
    norm_first: bool, default: False
        Normalize before rather than after each block.
    batch_first: bool, default: True
        Inputs are ``(N, L, E)`` rather than ``(L, N, E)``.
    bias: bool, default: True
        Biases of the projections and the layer norms.
    variational_distribution: VariationalDistribution, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`, for all random variables.
    prior: Prior, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`, for all random variables.
    rescale_prior: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dropout: float, default: 0.0
        Dropout probability in training mode (keyword only).

    Shape
    -----
    - tgt: :math:`(N, L, E)` (``batch_first``), :math:`(L, N, E)` or :math:`(L, E)`;
      memory: likewise with its own length :math:`L_m`. Nested in torch_blue mode
      both have the leading sample dimension :math:`(S, \dots)`.
    - Output: shaped like ``tgt``; as the outermost module with the leading sample
      dimension.

    Examples
    --------
    >>> layer = VITransformerDecoderLayer(16, 4, dim_feedforward=32)
    >>> out = layer(torch.randn(8, 5, 16), torch.randn(8, 7, 16), samples=3)
    >>> out.shape
    torch.Size([3, 8, 5, 16])
    """

    handles_sample_dim: ClassVar[bool] = True
    sampled_inputs: ClassVar[tuple[str, ...] | None] = ("tgt", "memory")

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 512,
        activation: Activation = ReLU(),
        layer_norm_eps: float = 1e-5,
        norm_first: bool = False,
        batch_first: bool = True,
        bias: bool = True,
        variational_distribution: VariationalDistribution = MeanFieldNormal(),
        prior: Prior = MeanFieldNormal(),
        rescale_prior: bool = True,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        vikwargs = _layer_vikwargs(
            type(self).__name__,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
        dim_feedforward = positive_int(dim_feedforward, "dim_feedforward")
        self.self_attn = VIMultiheadAttention(
            d_model,
            nhead,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            **vikwargs,
        )
        self.multihead_attn = VIMultiheadAttention(
            d_model,
            nhead,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            **vikwargs,
        )
        self.linear1 = VILinear(d_model, dim_feedforward, bias=bias, **vikwargs)
        self.activation: Callable[[Tensor], Tensor] = _activation(activation)
        self.linear2 = VILinear(dim_feedforward, d_model, bias=bias, **vikwargs)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(
            d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
        )
        self.norm2 = LayerNorm(
            d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
        )
        self.norm3 = LayerNorm(
            d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
        )
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.return_log_probs = return_log_probs

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = False,
        memory_is_causal: bool | None = False,
    ) -> Tensor:
        """Pass ``tgt`` through self-attention, memory attention and feed-forward.

        Parameters
        ----------
        tgt: Tensor
            The target sequence; see the class's Shape section.
        memory: Tensor
            The encoder's output sequence.
        tgt_mask: Tensor, optional
            Self-attention mask, ``(L, L)`` or ``(N * nhead, L, L)``.
        memory_mask: Tensor, optional
            Memory attention mask, ``(L, L_m)`` or ``(N * nhead, L, L_m)``.
        tgt_key_padding_mask: Tensor, optional
            ``(N, L)`` (``(L,)`` unbatched).
        memory_key_padding_mask: Tensor, optional
            ``(N, L_m)`` (``(L_m,)`` unbatched).
        tgt_is_causal: bool, default: False
            Hint that ``tgt_mask`` is the causal mask (``None``: ``False``, as in
            ``torch.nn``).
        memory_is_causal: bool, default: False
            Hint that ``memory_mask`` is the causal mask (``None``: ``False``).

        Returns
        -------
        Tensor
            Shaped like ``tgt``.

        Raises
        ------
        ValueError
            If the last dimension of ``tgt`` or ``memory`` is not ``d_model`` or a
            mask does not fit.
        """
        tgt_is_causal, memory_is_causal = bool(tgt_is_causal), bool(memory_is_causal)
        d_model = self.self_attn.embed_dim
        _check_width("VITransformerDecoderLayer", "tgt", tgt, d_model)
        _check_width("VITransformerDecoderLayer", "memory", memory, d_model)
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(
                self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal
            )
            x = x + self._mha_block(
                self.norm2(x),
                memory,
                memory_mask,
                memory_key_padding_mask,
                memory_is_causal,
            )
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(
                x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            )
            x = self.norm2(
                x
                + self._mha_block(
                    x, memory, memory_mask, memory_key_padding_mask, memory_is_causal
                )
            )
            x = self.norm3(x + self._ff_block(x))
        return x

    def _sa_block(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        output, _ = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            need_weights=False,
        )
        return _dropout(self.dropout1, output)

    def _mha_block(
        self,
        x: Tensor,
        memory: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        output, _ = self.multihead_attn(
            x,
            memory,
            memory,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            need_weights=False,
        )
        return _dropout(self.dropout2, output)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(_dropout(self.dropout, self.activation(self.linear1(x))))
        return _dropout(self.dropout3, x)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        upgrade_checkpoint(state_dict, prefix, FEEDFORWARD_KEYS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _clones(layer: Module, num_layers: int) -> ModuleList:
    num_layers = positive_int(num_layers, "num_layers")
    return ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])


def _first_attention(layers: ModuleList) -> tuple[bool, int]:
    """``batch_first`` and the number of heads of the first layer's self-attention."""
    attention = getattr(layers[0], "self_attn", None)
    return (
        getattr(attention, "batch_first", True),
        getattr(attention, "num_heads", 1),
    )


def _causal_hint(
    src: Tensor,
    mask: Tensor | None,
    is_causal: bool | None,
    layers: ModuleList,
) -> bool:
    """Whether ``mask`` is causal: as hinted, or detected (not for per-sample masks)."""
    batch_first, heads = _first_attention(layers)
    seq_len, batch = _sequence_length(src, batch_first)
    if _is_per_sample_mask(mask, current_num_samples(), (2, 3), (batch or 1) * heads):
        return bool(is_causal)
    return _detect_causal(mask, is_causal, seq_len)


class VITransformerEncoder(VIModule):
    r"""A stack of ``num_layers`` copies of an encoder layer.

    The Bayesian :class:`torch.nn.TransformerEncoder`. The layers are deep copies of
    ``encoder_layer`` (so they start equal, as in ``torch.nn`` and torch_blue), held
    in the ``nn.ModuleList`` ``layers``; their sites are named
    ``"layers.0.self_attn.in_proj_weight"``, ... When ``is_causal`` is not given, the
    mask is compared with the causal mask, as ``torch.nn`` does.

    Parameters
    ----------
    encoder_layer: VITransformerEncoderLayer
        The layer to copy.
    num_layers: int
        Number of layers.
    norm: nn.Module, optional
        Applied to the output of the last layer (e.g. ``nn.LayerNorm``).
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`; set for all layers.

    Raises
    ------
    ValueError
        If ``num_layers`` is not a positive int.

    Shape
    -----
    - src: as for :class:`VITransformerEncoderLayer`.
    - Output: shaped like ``src``; as the outermost module with the leading sample
      dimension.

    Examples
    --------
    >>> layer = VITransformerEncoderLayer(16, 4, dim_feedforward=32)
    >>> encoder = VITransformerEncoder(layer, num_layers=2)
    >>> encoder(torch.randn(8, 5, 16), samples=3).shape
    torch.Size([3, 8, 5, 16])
    """

    handles_sample_dim: ClassVar[bool] = True
    sampled_inputs: ClassVar[tuple[str, ...] | None] = ("src",)

    def __init__(
        self,
        encoder_layer: VITransformerEncoderLayer,
        num_layers: int,
        norm: Module | None = None,
        return_log_probs: bool = True,
    ) -> None:
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.norm = norm
        self.num_layers = len(self.layers)
        self.return_log_probs = return_log_probs

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        """Pass ``src`` through the layers in turn, then ``norm``.

        Parameters
        ----------
        src: Tensor
            The sequence.
        mask: Tensor, optional
            The attention mask of every layer, ``(L, L)`` or ``(N * nhead, L, L)``.
        src_key_padding_mask: Tensor, optional
            ``(N, L)`` (``(L,)`` unbatched).
        is_causal: bool, optional
            Hint that ``mask`` is the causal mask; ``None`` detects it.

        Returns
        -------
        Tensor
            Shaped like ``src``.
        """
        causal = _causal_hint(src, mask, is_causal, self.layers)
        output = src
        for layer in self.layers:
            output = layer(
                output,
                src_mask=mask,
                src_key_padding_mask=src_key_padding_mask,
                is_causal=causal,
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


class VITransformerDecoder(VIModule):
    r"""A stack of ``num_layers`` copies of a decoder layer.

    The Bayesian :class:`torch.nn.TransformerDecoder`; see
    :class:`VITransformerEncoder`.

    Parameters
    ----------
    decoder_layer: VITransformerDecoderLayer
        The layer to copy.
    num_layers: int
        Number of layers.
    norm: nn.Module, optional
        Applied to the output of the last layer.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`; set for all layers.

    Raises
    ------
    ValueError
        If ``num_layers`` is not a positive int.

    Shape
    -----
    - tgt, memory: as for :class:`VITransformerDecoderLayer`.
    - Output: shaped like ``tgt``; as the outermost module with the leading sample
      dimension.

    Examples
    --------
    >>> layer = VITransformerDecoderLayer(16, 4, dim_feedforward=32)
    >>> decoder = VITransformerDecoder(layer, num_layers=2)
    >>> decoder(torch.randn(8, 5, 16), torch.randn(8, 7, 16), samples=3).shape
    torch.Size([3, 8, 5, 16])
    """

    handles_sample_dim: ClassVar[bool] = True
    sampled_inputs: ClassVar[tuple[str, ...] | None] = ("tgt", "memory")

    def __init__(
        self,
        decoder_layer: VITransformerDecoderLayer,
        num_layers: int,
        norm: Module | None = None,
        return_log_probs: bool = True,
    ) -> None:
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.norm = norm
        self.num_layers = len(self.layers)
        self.return_log_probs = return_log_probs

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool | None = False,
    ) -> Tensor:
        """Pass ``tgt`` (attending to ``memory``) through the layers, then ``norm``.

        Parameters
        ----------
        tgt: Tensor
            The target sequence.
        memory: Tensor
            The encoder's output sequence.
        tgt_mask: Tensor, optional
            Self-attention mask of every layer.
        memory_mask: Tensor, optional
            Memory attention mask of every layer.
        tgt_key_padding_mask: Tensor, optional
            ``(N, L)`` (``(L,)`` unbatched).
        memory_key_padding_mask: Tensor, optional
            ``(N, L_m)`` (``(L_m,)`` unbatched).
        tgt_is_causal: bool, optional
            Hint that ``tgt_mask`` is the causal mask; ``None`` detects it.
        memory_is_causal: bool, default: False
            Hint that ``memory_mask`` is the causal mask (``None``: ``False``).

        Returns
        -------
        Tensor
            Shaped like ``tgt``.
        """
        causal = _causal_hint(tgt, tgt_mask, tgt_is_causal, self.layers)
        output = tgt
        for layer in self.layers:
            output = layer(
                output,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=causal,
                memory_is_causal=memory_is_causal,
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


class VITransformer(VIModule):
    r"""An encoder-decoder transformer with random weights.

    The Bayesian :class:`torch.nn.Transformer`, with torch_blue's signature and
    defaults (``d_model=32``, ``nhead=1``, one encoder and one decoder layer,
    ``dim_feedforward=256``, no dropout). Submodules ``encoder``
    (:class:`VITransformerEncoder` with a final ``nn.LayerNorm``) and ``decoder``
    (:class:`VITransformerDecoder`, likewise), or the custom ones given. As in
    torch_blue, the layers of each stack start as copies of one layer (``torch.nn``
    re-initializes them).

    Parameters
    ----------
    d_model: int, default: 32
        ``E``, the embedding size.
    nhead: int, default: 1
        Number of attention heads.
    num_encoder_layers: int, default: 1
        Encoder layers.
    num_decoder_layers: int, default: 1
        Decoder layers.
    dim_feedforward: int, default: 256
        Width of the feed-forward blocks.
    activation: str or Callable[[Tensor], Tensor], default: ReLU()
        ``"relu"``, ``"gelu"`` or a callable.
    custom_encoder: nn.Module, optional
        Used instead of the built encoder. It receives inputs with the leading
        sample dimension in torch_blue mode: use a VIModule (one with
        ``handles_sample_dim = False`` is run per sample).
    custom_decoder: nn.Module, optional
        Used instead of the built decoder; as ``custom_encoder``.
    layer_norm_eps: float, default: 1e-5
        ``eps`` of the layer norms.
    batch_first: bool, default: False
        Inputs are ``(N, L, E)`` rather than ``(L, N, E)``.
    norm_first: bool, default: False
        Normalize before rather than after each block.
    bias: bool, default: True
        Biases of the projections and the layer norms.
    variational_distribution: VariationalDistribution, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`, for all random variables.
    prior: Prior, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`, for all random variables.
    rescale_prior: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dropout: float, default: 0.0
        Dropout probability in training mode (keyword only).

    Shape
    -----
    - src: :math:`(L_s, N, E)`, :math:`(N, L_s, E)` (``batch_first``) or
      :math:`(L_s, E)`; tgt: likewise with length :math:`L_t`. Nested in torch_blue
      mode with the leading sample dimension :math:`(S, \dots)`.
    - Output: shaped like ``tgt``; as the outermost module with the leading sample
      dimension, e.g. :math:`(S, L_t, N, E)`.

    Examples
    --------
    >>> model = VITransformer(d_model=16, nhead=4, dim_feedforward=32)
    >>> src, tgt = torch.randn(7, 8, 16), torch.randn(5, 8, 16)
    >>> out = model(src, tgt, samples=3)
    >>> out.shape, out.log_probs.shape
    (torch.Size([3, 5, 8, 16]), torch.Size([3, 2]))
    """

    handles_sample_dim: ClassVar[bool] = True
    sampled_inputs: ClassVar[tuple[str, ...] | None] = ("src", "tgt")

    def __init__(
        self,
        d_model: int = 32,
        nhead: int = 1,
        num_encoder_layers: int = 1,
        num_decoder_layers: int = 1,
        dim_feedforward: int = 256,
        activation: Activation = ReLU(),
        custom_encoder: Module | None = None,
        custom_decoder: Module | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        variational_distribution: VariationalDistribution = MeanFieldNormal(),
        prior: Prior = MeanFieldNormal(),
        rescale_prior: bool = True,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        vikwargs = _layer_vikwargs(
            type(self).__name__,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            encoder_layer = VITransformerEncoderLayer(
                d_model,
                nhead,
                dim_feedforward,
                activation,
                layer_norm_eps,
                batch_first,
                norm_first,
                bias,
                dropout=dropout,
                **vikwargs,
            )
            self.encoder = VITransformerEncoder(
                encoder_layer,
                num_encoder_layers,
                LayerNorm(
                    d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
                ),
                return_log_probs,
            )
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            decoder_layer = VITransformerDecoderLayer(
                d_model,
                nhead,
                dim_feedforward,
                activation,
                layer_norm_eps,
                norm_first,
                batch_first,
                bias,
                dropout=dropout,
                **vikwargs,
            )
            self.decoder = VITransformerDecoder(
                decoder_layer,
                num_decoder_layers,
                LayerNorm(
                    d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype
                ),
                return_log_probs,
            )
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first
        self.return_log_probs = return_log_probs

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool | None = False,
    ) -> Tensor:
        """Encode ``src`` and decode ``tgt`` attending to the encoding.

        Parameters
        ----------
        src: Tensor
            The source sequence.
        tgt: Tensor
            The target sequence.
        src_mask: Tensor, optional
            ``(L_s, L_s)`` or ``(N * nhead, L_s, L_s)``.
        tgt_mask: Tensor, optional
            ``(L_t, L_t)`` or ``(N * nhead, L_t, L_t)``.
        memory_mask: Tensor, optional
            ``(L_t, L_s)`` or ``(N * nhead, L_t, L_s)``.
        src_key_padding_mask: Tensor, optional
            ``(N, L_s)`` (``(L_s,)`` unbatched).
        tgt_key_padding_mask: Tensor, optional
            ``(N, L_t)`` (``(L_t,)`` unbatched).
        memory_key_padding_mask: Tensor, optional
            ``(N, L_s)`` (``(L_s,)`` unbatched).
        src_is_causal: bool, optional
            Hint that ``src_mask`` is the causal mask; ``None`` detects it.
        tgt_is_causal: bool, optional
            Hint that ``tgt_mask`` is the causal mask; ``None`` detects it.
        memory_is_causal: bool, default: False
            Hint that ``memory_mask`` is the causal mask.

        Returns
        -------
        Tensor
            Shaped like ``tgt``.

        Raises
        ------
        ValueError
            If ``src`` and ``tgt`` have different batch sizes or their last
            dimension is not ``d_model``.
        """
        _check_width("VITransformer", "src", src, self.d_model)
        _check_width("VITransformer", "tgt", tgt, self.d_model)
        _, src_batch = _sequence_length(src, self.batch_first)
        _, tgt_batch = _sequence_length(tgt, self.batch_first)
        if src_batch != tgt_batch:
            raise ValueError(
                "VITransformer expects src and tgt of one batch size, got shapes "
                f"{_user_shape(src)} and {_user_shape(tgt)}"
            )
        memory = self.encoder(
            src,
            mask=src_mask,
            src_key_padding_mask=src_key_padding_mask,
            is_causal=src_is_causal,
        )
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )

    @staticmethod
    def generate_square_subsequent_mask(
        sz: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """The causal mask: ``-inf`` above the diagonal, 0 elsewhere, as ``torch.nn``.

        Parameters
        ----------
        sz: int
            The sequence length.
        device: torch.device, optional
            Its device.
        dtype: torch.dtype, optional
            Its dtype (default: the default dtype).

        Returns
        -------
        Tensor
            ``(sz, sz)``.
        """
        return _causal_mask(
            sz,
            torch.device("cpu") if device is None else torch.device(device),
            torch.get_default_dtype() if dtype is None else dtype,
        )
