"""Bayesian multi-head attention: the counterpart of ``torch.nn.MultiheadAttention``.

Every projection is random (a variational parameter pair per weight). In torch_blue
mode the module works on the leading sample dimension natively: the projections
multiply each sample's weights at once (:func:`~torch_blue_pyro.functional.linear`)
and attention runs with the samples folded into the batch
(:func:`~torch_blue_pyro.functional.multi_head_attention`). The transformer layers
built on it are in :mod:`torch_blue_pyro.vi.transformer`, which re-exports this
class where torch_blue has it.

Masks follow ``torch.nn``: boolean (``True`` = may not attend) or additive float
masks, ``attn_mask`` of shape ``(L, L_k)`` or ``(N * num_heads, L, L_k)`` for a
target length ``L`` and a source length ``L_k``, and ``key_padding_mask`` of shape
``(N, L_k)`` (``(L_k,)`` for unbatched input). Masks never need a sample dimension;
see :mod:`torch_blue_pyro.vi.transformer` for masks passed positionally to the
outermost module and for ``sampled_input=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import functional
from .base import VIModule, current_num_samples
from .distributions import MeanFieldNormal, Prior, VariationalDistribution
from .linear import VILinear
from .torch_blue_0_9 import ATTENTION_KEYS, upgrade_checkpoint
from .utils.checks import check_input_matches, positive_int

# The torch_blue (1.1) random variables of VIMultiheadAttention, in order. The output
# projection's are placeholders (always None): they live in ``out_proj``.
_ATTENTION_VARIABLES = (
    "in_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "out_proj_weight",
    "in_proj_bias",
    "out_proj_bias",
    "bias_k",
    "bias_v",
)


def _is_per_sample_mask(
    mask: Tensor | None,
    num_samples: int | None,
    ranks: tuple[int, ...],
    first_size: int | None = None,
) -> bool:
    """Whether a mask carries one mask per sample (a leading sample dimension).

    Masks are not inputs that autosampling expands (see
    :attr:`~torch_blue_pyro.vi.VIModule.sampled_inputs`): a mask as ``torch.nn``
    takes it is shared by all samples. One rank more than ``torch.nn`` allows,
    leading with ``S``, is one mask per sample (a mask computed from sampled
    activations, say).

    Parameters
    ----------
    mask: Tensor, optional
        The mask as received.
    num_samples: int, optional
        ``S``, or ``None`` without a sample dimension.
    ranks: tuple[int, ...]
        The mask's valid numbers of dimensions in ``torch.nn``.
    first_size: int, optional
        The first size of a mask of the highest valid rank (``N * num_heads``); a
        3-D ``attn_mask`` whose first size is both ``S`` and this one is read as
        torch's.

    Returns
    -------
    bool
        Whether the mask leads with the sample dimension.
    """
    if mask is None or num_samples is None:
        return False
    rank = mask.dim()
    if rank - 1 not in ranks or mask.shape[0] != num_samples:
        return False
    return not (rank in ranks and mask.shape[0] == first_size)


class VIMultiheadAttention(VIModule):
    r"""Multi-head attention with random projections.

    The Bayesian :class:`torch.nn.MultiheadAttention`, with torch_blue's signature
    (``batch_first=True`` by default, ``rescale_prior=True``). The random variables
    are torch_blue's, in its order: ``("in_proj_weight", "q_proj_weight",
    "k_proj_weight", "v_proj_weight", "out_proj_weight", "in_proj_bias",
    "out_proj_bias", "bias_k", "bias_v")``, where those not in use are ``None``: the
    packed ``in_proj_weight`` ``(3 E, E)`` when ``kdim`` and ``vdim`` equal
    ``embed_dim``, else the three separate projections; ``in_proj_bias`` with
    ``bias``; ``bias_k`` and ``bias_v`` ``(1, 1, E)`` with ``add_bias_kv``. The
    output projection is the :class:`~torch_blue_pyro.vi.VILinear` ``out_proj``
    (sites ``"out_proj.weight"``, ``"out_proj.bias"``); ``out_proj_weight`` and
    ``out_proj_bias`` stay ``None``, kept for torch_blue's variable list.

    Checkpoints of torch_blue 0.9, which held the output projection as own variables
    (``_out_proj_weight_mean``, ...), load into ``out_proj``.

    Parameters
    ----------
    embed_dim: int
        ``E``, the model's embedding size.
    num_heads: int
        Number of heads; must divide ``embed_dim``.
    bias: bool, default: True
        Whether the projections have biases.
    add_bias_kv: bool, default: False
        Append a learned key and value (``bias_k``, ``bias_v``) to every sequence.
    add_zero_attn: bool, default: False
        Append a zero key and value to every head.
    kdim: int, optional
        Size of the keys' features (default ``embed_dim``).
    vdim: int, optional
        Size of the values' features (default ``embed_dim``).
    batch_first: bool, default: True
        Inputs are ``(N, L, E)`` rather than ``(L, N, E)``. torch's default is
        ``False``; torch_blue's is ``True``.
    variational_distribution: VariationalDistribution or list, default MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`; a list has one entry per random
        variable above, ``None`` ones included; the ``out_proj_*`` entries go to
        ``out_proj``.
    prior: Prior or list, default: MeanFieldNormal()
        As ``variational_distribution``.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    rescale_prior: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dropout: float, default: 0.0
        Dropout probability on the attention weights in training mode (keyword only;
        torch_blue has none).

    Raises
    ------
    ValueError
        If ``embed_dim`` or ``num_heads`` is not a positive int.
    AssertionError
        If ``num_heads`` does not divide ``embed_dim`` (as ``torch.nn``).

    Shape
    -----
    - query: :math:`(N, L, E)` (``batch_first``), :math:`(L, N, E)` or :math:`(L, E)`
      unbatched; in a module nested in torch_blue mode with the leading sample
      dimension :math:`(S, \dots)`. Likewise key and value, with source length
      :math:`L_k` and sizes ``kdim``, ``vdim``.
    - Output: the attention output shaped like the query, and the attention weights
      :math:`(N, L, L_k)` averaged over heads or :math:`(N, H, L, L_k)` per head
      (:math:`(L, L_k)`, :math:`(H, L, L_k)` unbatched), or ``None`` with
      ``need_weights=False``. As the outermost module both gain the leading sample
      dimension: :math:`(S, N, L, E)`, :math:`(S, N, L, L_k)`.

    Examples
    --------
    >>> attention = VIMultiheadAttention(16, 4)
    >>> x = torch.randn(8, 5, 16)
    >>> out, weights = attention(x, x, x, samples=3)
    >>> out.shape, weights.shape, out.log_probs.shape
    (torch.Size([3, 8, 5, 16]), torch.Size([3, 8, 5, 5]), torch.Size([3, 2]))
    """

    handles_sample_dim: ClassVar[bool] = True
    sampled_inputs: ClassVar[tuple[str, ...] | None] = ("query", "key", "value")

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution] = MeanFieldNormal(),
        prior: Prior | Sequence[Prior] = MeanFieldNormal(),
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        rescale_prior: bool = True,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        dropout: float = 0.0,
    ) -> None:
        embed_dim = positive_int(embed_dim, "embed_dim")
        num_heads = positive_int(num_heads, "num_heads")
        if embed_dim % num_heads:
            raise AssertionError(
                "embed_dim must be divisible by num_heads, got "
                f"embed_dim={embed_dim} and num_heads={num_heads}"
            )
        kdim = embed_dim if kdim is None else positive_int(kdim, "kdim")
        vdim = embed_dim if vdim is None else positive_int(vdim, "vdim")
        packed = kdim == embed_dim and vdim == embed_dim
        shapes: dict[str, tuple[int, ...] | None] = dict.fromkeys(_ATTENTION_VARIABLES)
        if packed:
            shapes["in_proj_weight"] = (3 * embed_dim, embed_dim)
        else:
            shapes["q_proj_weight"] = (embed_dim, embed_dim)
            shapes["k_proj_weight"] = (embed_dim, kdim)
            shapes["v_proj_weight"] = (embed_dim, vdim)
        if bias:
            shapes["in_proj_bias"] = (3 * embed_dim,)
        if add_bias_kv:
            shapes["bias_k"] = (1, 1, embed_dim)
            shapes["bias_v"] = (1, 1, embed_dim)
        common: dict[str, Any] = {
            "kaiming_initialization": kaiming_initialization,
            "prior_initialization": prior_initialization,
            "rescale_prior": rescale_prior,
            "return_log_probs": return_log_probs,
            "device": device,
            "dtype": dtype,
        }
        super().__init__(
            shapes,
            variational_distribution=variational_distribution,
            prior=prior,
            **common,
        )
        self.out_proj = VILinear(
            embed_dim,
            embed_dim,
            variational_distribution=_out_proj_entries(variational_distribution),
            prior=_out_proj_entries(prior),
            bias=bias,
            **common,
        )
        self.embed_dim = embed_dim
        self.kdim = kdim
        self.vdim = vdim
        self._qkv_same_embed_dim = packed
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        self.add_kv_bias = add_bias_kv  # torch_blue's names of the two flags
        self.bias = bias
        self.dropout = float(dropout)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool | None = False,
        *,
        need_weights: bool | None = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key`` and ``value``.

        The argument order is torch_blue's (``attn_mask`` before
        ``key_padding_mask``); pass masks by keyword to write code that also runs
        with ``torch.nn``.

        Parameters
        ----------
        query: Tensor
            See the class's Shape section.
        key: Tensor
            See the class's Shape section.
        value: Tensor
            See the class's Shape section.
        attn_mask: Tensor, optional
            ``(L, L_k)`` or ``(N * num_heads, L, L_k)`` (``(num_heads, L, L_k)``
            unbatched), boolean (``True`` = may not attend) or added to the scores.
        key_padding_mask: Tensor, optional
            ``(N, L_k)`` (``(L_k,)`` unbatched), boolean (``True`` = padding) or
            added to the scores.
        average_attn_weights: bool, default: True
            Return the attention weights averaged over heads, else per head.
        is_causal: bool, default: False
            Hint that ``attn_mask`` is the causal mask (which must be given), so the
            fused kernel may apply it by itself, as in ``torch.nn`` (``None`` counts
            as ``False``, as there).
        need_weights: bool, default: True
            Return the attention weights (keyword only; torch_blue always does).
            ``False`` (or ``None``) is faster.

        Returns
        -------
        tuple[Tensor, Tensor or None]
            The attention output and the attention weights (or ``None``).

        Raises
        ------
        ValueError
            If the inputs' or masks' shapes do not fit the module.
        RuntimeError
            If ``is_causal`` is given without ``attn_mask`` (as ``torch.nn``).
        """
        is_causal, need_weights = bool(is_causal), bool(need_weights)
        num_samples = current_num_samples()
        lead = 0 if num_samples is None else 1
        batched = self._check_inputs(query, key, value, lead)
        batch_dim = lead + (0 if self.batch_first else 1)
        batch = query.shape[batch_dim] if batched else 1
        attn_sampled = _is_per_sample_mask(
            attn_mask, num_samples, (2, 3), batch * self.num_heads
        )
        padding_sampled = _is_per_sample_mask(
            key_padding_mask, num_samples, (2,) if batched else (1,)
        )
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use "
                "VITransformer.generate_square_subsequent_mask to create this mask."
            )
        causal = is_causal and key_padding_mask is None and not need_weights
        if causal:
            attn_mask = None

        # Batch first and batched, keeping query/key/value identity (self-attention).
        def layout(x: Tensor) -> Tensor:
            if not batched:
                return x.unsqueeze(lead)
            return x if self.batch_first else x.transpose(lead, lead + 1)

        same_query_key = query is key
        same_key_value = key is value
        query = layout(query)
        key = query if same_query_key else layout(key)
        value = key if same_key_value else layout(value)
        target_len, source_len = query.shape[-2], key.shape[-2]
        mask = self._attention_bias(
            attn_mask,
            attn_sampled,
            key_padding_mask,
            padding_sampled,
            batch if batched else None,
            target_len,
            source_len,
            query,
        )
        output, weights = functional.multi_head_attention(
            query,
            key,
            value,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight,
            bias_k=self.bias_k,
            bias_v=self.bias_v,
            add_zero_attn=self.add_zero_attn,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
            average_attn_weights=average_attn_weights,
        )
        if not batched:
            output = output.squeeze(lead)
            weights = None if weights is None else weights.squeeze(lead)
        elif not self.batch_first:
            output = output.transpose(lead, lead + 1)
        return output, weights

    def _check_inputs(
        self, query: Tensor, key: Tensor, value: Tensor, lead: int
    ) -> bool:
        """Validate the inputs' shapes; return whether they are batched."""
        name = f"VIMultiheadAttention(embed_dim={self.embed_dim})"
        for argument, tensor in (("query", query), ("key", key), ("value", value)):
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"{name} expects {argument} to be a tensor, got "
                    f"{type(tensor).__name__}"
                )
        reference = next(self.parameters())
        for argument, tensor in (("query", query), ("key", key), ("value", value)):
            check_input_matches("VIMultiheadAttention", argument, tensor, reference)
        rank = query.dim() - lead
        sequence = "(N, L, {})" if self.batch_first else "(L, N, {})"
        for argument, tensor, size in (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        ):
            shape = tuple(tensor.shape[lead:])
            if rank not in (2, 3) or len(shape) != rank or shape[-1] != size:
                expected = f"{sequence.format(size)} or (L, {size})"
                if argument != "query":
                    expected += f", batched like the query {tuple(query.shape[lead:])}"
                raise ValueError(
                    f"{name} expects {argument} of shape {expected}, got {shape}"
                )
        batch_dim = lead + (0 if self.batch_first else 1)
        seq_dim = lead + (1 if self.batch_first else 0)
        batch_sizes = {x.shape[batch_dim] for x in (query, key, value)}
        if rank == 3 and len(batch_sizes) > 1:
            raise ValueError(
                f"{name} expects query, key and value of one batch size, got shapes "
                f"{tuple(query.shape[lead:])}, {tuple(key.shape[lead:])} and "
                f"{tuple(value.shape[lead:])}"
            )
        if rank == 2:
            seq_dim = lead
        if key.shape[seq_dim] != value.shape[seq_dim]:
            raise ValueError(
                f"{name} expects key and value of one sequence length, got shapes "
                f"{tuple(key.shape[lead:])} and {tuple(value.shape[lead:])}"
            )
        return rank == 3

    def _attention_bias(
        self,
        attn_mask: Tensor | None,
        attn_sampled: bool,
        key_padding_mask: Tensor | None,
        padding_sampled: bool,
        batch_size: int | None,
        target_len: int,
        source_len: int,
        reference: Tensor,
    ) -> Tensor | None:
        """Check the masks and merge them into one additive mask for the scores.

        The scores have shape ``(N, H, L, L_k)`` (``N = 1`` for unbatched input,
        ``batch_size=None``), with a leading ``S`` in torch_blue mode; a per-sample
        mask keeps its sample dimension in front.
        """
        heads = self.num_heads
        batch = 1 if batch_size is None else batch_size
        bias = None
        if attn_mask is not None:
            mask = attn_mask[0] if attn_sampled else attn_mask
            flat = (target_len, source_len)
            per_head = (batch * heads, target_len, source_len)
            if tuple(mask.shape) not in (flat, per_head):
                heads_text = "num_heads" if batch_size is None else "N * num_heads"
                raise ValueError(
                    f"attn_mask must have shape (L, L_k) = {flat} or "
                    f"({heads_text}, L, L_k) = {per_head}, got {tuple(mask.shape)}"
                )
            mask = functional._additive_mask(attn_mask, reference)
            front = mask.shape[:1] if attn_sampled else ()
            if mask.dim() - attn_sampled == 3:
                mask = mask.reshape(*front, batch, heads, target_len, source_len)
            elif attn_sampled:
                mask = mask.reshape(*front, 1, 1, target_len, source_len)
            bias = mask
        if key_padding_mask is not None:
            mask = key_padding_mask[0] if padding_sampled else key_padding_mask
            expected: tuple[int, ...] = (source_len,)
            text = "(L_k,)"
            if batch_size is not None:
                expected, text = (batch_size, source_len), "(N, L_k)"
            if tuple(mask.shape) != expected:
                raise ValueError(
                    f"key_padding_mask must have shape {text} = {expected}, got "
                    f"{tuple(mask.shape)}"
                )
            mask = functional._additive_mask(key_padding_mask, reference)
            front = mask.shape[:1] if padding_sampled else ()
            mask = mask.reshape(*front, batch, 1, 1, source_len)
            bias = mask if bias is None else bias + mask
        return bias

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        upgrade_checkpoint(state_dict, prefix, ATTENTION_KEYS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        """Describe the sizes, as ``nn.MultiheadAttention``'s attributes do."""
        sizes = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if not self._qkv_same_embed_dim:
            sizes += f", kdim={self.kdim}, vdim={self.vdim}"
        return f"{sizes}, batch_first={self.batch_first}"


def _out_proj_entries(given: Any) -> Any:
    """The ``out_proj_weight``/``out_proj_bias`` entries of a per-variable list."""
    if isinstance(given, (list, tuple)) and len(given) == len(_ATTENTION_VARIABLES):
        return [
            given[_ATTENTION_VARIABLES.index("out_proj_weight")],
            given[_ATTENTION_VARIABLES.index("out_proj_bias")],
        ]
    return given
