"""VILinear: the Bayesian counterpart of :class:`torch.nn.Linear`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .. import functional
from ..poutine.estimators import AffineOperation, affine
from .base import VIModule, current_num_samples
from .distributions import MeanFieldNormal, Prior, VariationalDistribution
from .random_variable import weight_and_bias
from .utils.checks import check_input_matches, positive_int


class VILinear(VIModule):
    r"""Affine map :math:`y = x W^\top + b` with random weight and bias.

    The Bayesian :class:`torch.nn.Linear`, with torch_blue's argument order. Its
    random variables are ``("weight", "bias")``, with ``bias`` of shape ``None`` when
    ``bias=False``; their sites are ``"<path>.weight"`` and ``"<path>.bias"``.

    Parameters
    ----------
    in_features: int
        Size of each input sample.
    out_features: int
        Size of each output sample.
    variational_distribution: VariationalDistribution or list, default MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior: Prior or list, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    bias: bool, default: True
        Whether to learn an additive bias.
    rescale_prior: bool, default: False
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

    Shape
    -----
    - Input: :math:`(*, H_{in})`; in a layer nested in torch_blue mode
      :math:`(S, *, H_{in})`.
    - Output: :math:`(*, H_{out})`; the outermost module's output gains the leading
      sample dimension: :math:`(S, *, H_{out})`.

    Examples
    --------
    >>> layer = VILinear(20, 30)
    >>> out = layer(torch.randn(128, 20), samples=4)
    >>> out.shape, out.log_probs.shape
    (torch.Size([4, 128, 30]), torch.Size([4, 2]))
    """

    handles_sample_dim: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution] = MeanFieldNormal(),
        prior: Prior | Sequence[Prior] = MeanFieldNormal(),
        bias: bool = True,
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        in_features = positive_int(in_features, "in_features")
        out_features = positive_int(out_features, "out_features")
        super().__init__(
            variable_shapes={
                "weight": (out_features, in_features),
                "bias": (out_features,) if bias else None,
            },
            variational_distribution=variational_distribution,
            prior=prior,
            rescale_prior=rescale_prior,
            kaiming_initialization=kaiming_initialization,
            prior_initialization=prior_initialization,
            return_log_probs=return_log_probs,
            device=device,
            dtype=dtype,
        )
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, input_: Tensor) -> Tensor:
        r"""Apply the layer with the current draw of weight and bias.

        The product is an effectful :func:`~torch_blue_pyro.poutine.affine`
        operation: under :func:`~torch_blue_pyro.poutine.local_reparameterization`
        or :func:`~torch_blue_pyro.poutine.flipout` that estimator computes it.

        Parameters
        ----------
        input_: Tensor
            :math:`(*, H_{in})`, with the leading sample dimension in torch_blue mode.

        Returns
        -------
        Tensor
            :math:`(*, H_{out})`.

        Raises
        ------
        TypeError
            If ``input_`` is not a tensor.
        ValueError
            If the last dimension of ``input_`` is not ``in_features``.
        """
        if not isinstance(input_, Tensor):
            raise TypeError(
                f"VILinear expects a tensor input, got {type(input_).__name__}"
            )
        num_samples = current_num_samples()
        if input_.dim() == 0 or input_.shape[-1] != self.in_features:
            # In torch_blue mode the input carries the sample dimension; report the
            # shape the user passed.
            shape = tuple(input_.shape[0 if num_samples is None else 1 :])
            raise ValueError(
                f"VILinear(in_features={self.in_features}) expects input of shape "
                f"(*, {self.in_features}), got {shape}"
            )
        reference = self.get_variational_parameters("weight")[0]
        check_input_matches("VILinear", "input", input_, reference)
        weight, bias = weight_and_bias(self)
        return affine(
            AffineOperation("linear", input_, weight, bias, functional.linear)
        )

    def extra_repr(self) -> str:
        """Describe the layer's sizes, as ``nn.Linear`` does."""
        bias = self.variational_distribution["bias"] is not None
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={bias}"
        )
