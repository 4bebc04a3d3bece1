r"""Functional core of the Bayesian layers: the math for stacked weight samples.

In torch_blue mode a layer's weight carries a leading sample dimension ``S`` (one
weight per sample) and so does its input (possibly a stride-0 expansion of one
batch). These functions compute all ``S`` outputs at once; given an ordinary weight
without the sample dimension, they are the ``torch.nn.functional`` operations.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


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
    if input.stride(0) == 0:
        # One batch shared by all samples: a single GEMM against every sample's weight.
        rows = input[0].reshape(-1, in_features)
        output = F.linear(rows, weight.reshape(-1, in_features))
        output = output.view(-1, num_samples, out_features).transpose(0, 1)
        if bias is not None:
            output = output + bias.unsqueeze(1)
    else:
        rows = input.reshape(num_samples, -1, in_features)
        if bias is None:
            output = rows.bmm(weight.transpose(1, 2))
        else:
            output = bias.unsqueeze(1).baddbmm(rows, weight.transpose(1, 2))
    return output.reshape(num_samples, *batch_shape, out_features)
