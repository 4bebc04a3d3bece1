"""Bayesian attention and transformers: the counterparts of ``torch.nn``'s.

Every projection is random (a variational parameter pair per weight); layer norms stay
deterministic ``nn.LayerNorm`` s, as in torch_blue. In torch_blue mode all modules work
on the leading sample dimension natively: the projections multiply each sample's
weights at once (:func:`~torch_blue_pyro.functional.linear`) and attention runs with
the samples folded into the batch
(:func:`~torch_blue_pyro.functional.multi_head_attention`).

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
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import Dropout, LayerNorm, Module, ModuleList, ReLU
from torch.nn import functional as F

from .. import functional
from .base import VIModule, current_num_samples
from .distributions import MeanFieldNormal, Prior, VariationalDistribution
from .linear import VILinear
from .utils.checks import check_input_matches, positive_int

Activation = str | Callable[[Tensor], Tensor]

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


def _is_same_tensor(a: Tensor, b: Tensor) -> bool:
    """``a is b``, or both are identical views of one tensor.

    Autosampling expands each positional input on its own, so ``mha(x, x, x)`` as the
    outermost module sees three equal views of ``x``; self-attention is still
    recognised (one projection for query, key and value).
    """
    if a is b:
        return True
    base = a._base
    return (
        base is not None
        and base is b._base
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.storage_offset() == b.storage_offset()
        and a.dtype == b.dtype
    )


def _split_sample_dim(
    mask: Tensor | None,
    num_samples: int | None,
    ranks: tuple[int, ...],
    first_size: int | None = None,
) -> tuple[Tensor | None, bool]:
    """Remove the sample dimension a mask may carry in torch_blue mode.

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
        torch's, unless it is an expansion (stride 0), when both readings agree.

    Returns
    -------
    tuple[Tensor or None, bool]
        The mask and whether it still has a leading sample dimension (one mask per
        sample). A stride-0 expansion, such as a positional mask of the outermost
        module, becomes the one mask it repeats.
    """
    if mask is None or num_samples is None:
        return mask, False
    rank = mask.dim()
    if rank - 1 not in ranks or mask.shape[0] != num_samples:
        return mask, False
    expanded = mask.stride(0) == 0 or num_samples == 1
    if rank in ranks and mask.shape[0] == first_size and not expanded:
        return mask, False
    if expanded:
        return mask[0], False
    return mask, True


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


def _rename_keys(state_dict: dict[str, Any], renames: dict[str, str]) -> None:
    """Rename state-dict keys in place, by prefix (old torch_blue checkpoints)."""
    for key in list(state_dict):
        for old, new in renames.items():
            if key.startswith(old):
                state_dict[new + key[len(old) :]] = state_dict.pop(key)
                break


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
        attn_mask, attn_sampled = _split_sample_dim(
            attn_mask, num_samples, (2, 3), batch * self.num_heads
        )
        key_padding_mask, padding_sampled = _split_sample_dim(
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

        same_query_key = _is_same_tensor(query, key)
        same_key_value = _is_same_tensor(key, value)
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
        # torch_blue 0.9 held the output projection as variables of its own.
        _rename_keys(
            state_dict,
            {
                f"{prefix}_out_proj_weight_": f"{prefix}out_proj._weight_",
                f"{prefix}_out_proj_bias_": f"{prefix}out_proj._bias_",
            },
        )
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
        _rename_keys(state_dict, _feedforward_renames(prefix))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _feedforward_renames(prefix: str) -> dict[str, str]:
    """torch_blue 0.9's feed-forward ``VIResidualConnection`` to ``linear1/2``."""
    return {
        f"{prefix}_ff_block.0.": f"{prefix}linear1.",
        f"{prefix}_ff_block.2.": f"{prefix}linear2.",
    }


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
        _rename_keys(state_dict, _feedforward_renames(prefix))
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
) -> tuple[Tensor | None, bool]:
    """Read a positional mask's sample dimension and detect the causal mask."""
    batch_first, heads = _first_attention(layers)
    seq_len, batch = _sequence_length(src, batch_first)
    mask, per_sample = _split_sample_dim(
        mask, current_num_samples(), (2, 3), (batch or 1) * heads
    )
    if per_sample:
        return mask, bool(is_causal)
    return mask, _detect_causal(mask, is_causal, seq_len)


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
        mask, causal = _causal_hint(src, mask, is_causal, self.layers)
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
        tgt_mask, causal = _causal_hint(tgt, tgt_mask, tgt_is_causal, self.layers)
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
