"""The categorical predictive distribution for classification."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ..utils.validation import value_checks_enabled
from .base import PredictiveDistribution


class Categorical(PredictiveDistribution):
    r"""Class probabilities as the predictive distribution of a classifier.

    The last dimension of the model output holds the classes. The prediction is the
    sample average of the class probabilities,
    :math:`\bar p = \frac1S \sum_s \operatorname{softmax}(z_s)`, and a label :math:`y`
    scores :math:`\log(\bar p_y + \epsilon)`; with
    :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss` this is a Bayesian
    cross-entropy.

    Parameters
    ----------
    input_type: {"logits", "probs"}, default: "logits"
        Whether the model outputs logits or (unnormalized) probabilities.
    eps: float, default: 1e-5
        Added to probabilities before the logarithm.
    """

    distribution_parameters = ("probs",)

    def __init__(self, input_type: str = "logits", eps: float = 1e-5) -> None:
        if input_type not in ("logits", "probs"):
            raise ValueError(
                f'input_type must be "logits" or "probs", got {input_type!r}'
            )
        self.input_type = input_type
        self.eps = eps

    def __repr__(self) -> str:
        return f"Categorical(input_type={self.input_type!r})"

    def predictive_parameters_from_samples(
        self, samples: Tensor, eps: float | None = None
    ) -> Tensor:
        """Sample-averaged class probabilities.

        Parameters
        ----------
        samples: Tensor
            ``(S, *, C)`` logits or probabilities.
        eps: float, optional
            torch_blue 0.9's per-call ``eps`` (added to the logits); default: the
            constructor's.

        Returns
        -------
        Tensor
            ``(*, C)`` class probabilities (torch_blue 0.9 returns a tensor, 1.1 a
            1-tuple; every method here accepts both).
        """
        if self.input_type == "logits":
            shift = self.eps if eps is None else eps
            return F.softmax(samples + shift, dim=-1).mean(dim=0)
        return (samples / samples.sum(dim=-1, keepdim=True)).mean(dim=0)

    def log_prob(self, sample: Tensor, parameters: Any) -> Tensor:
        """Log-probability of integer labels under class probabilities.

        Parameters
        ----------
        sample: Tensor
            ``(*)`` integer class labels.
        parameters: Tensor or tuple[Tensor]
            ``(*, C)`` class probabilities.

        Returns
        -------
        Tensor
            ``(*)`` log-probabilities.

        Raises
        ------
        ValueError
            If the shapes do not match, or (while
            :func:`~torch_blue_pyro.vi.utils.value_checks_enabled`) a label is not an
            integer in ``[0, C)``.
        """
        return self._label_log_probs(sample, parameters, self.eps)

    def log_prob_from_parameters(
        self, reference: Tensor, parameters: Any, eps: float | None = None
    ) -> Tensor:
        """Log-probability of integer labels under predicted class probabilities.

        Parameters
        ----------
        reference: Tensor
            ``(*)`` integer class labels.
        parameters: Tensor or tuple[Tensor]
            ``(*, C)`` class probabilities, as
            :meth:`predictive_parameters_from_samples` returns them.
        eps: float, optional
            torch_blue 0.9's per-call ``eps`` (added to the probabilities before the
            logarithm); default: the constructor's.

        Returns
        -------
        Tensor
            ``(*)`` log-probabilities.
        """
        return self._label_log_probs(
            reference, parameters, self.eps if eps is None else eps
        )

    def _label_log_probs(self, sample: Tensor, parameters: Any, eps: float) -> Tensor:
        probs = parameters[0] if isinstance(parameters, (tuple, list)) else parameters
        num_classes = probs.shape[-1]
        labels = sample.long()
        if value_checks_enabled():
            _check_labels(sample, labels, num_classes)
        if labels.shape != probs.shape[:-1]:
            raise ValueError(
                f"target of shape {tuple(labels.shape)} does not match predictions of "
                f"shape {tuple(probs.shape[:-1])} (batch) x {num_classes} (classes)"
            )
        log_probs = torch.log(probs + eps)
        return log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _check_labels(sample: Tensor, labels: Tensor, num_classes: int) -> None:
    """Refuse fractional labels and labels outside ``[0, num_classes)``.

    The range is read from the device once (one synchronization on a GPU; labels of a
    floating-point dtype take one more for the test for fractions).
    """
    if sample.is_floating_point() and not torch.equal(sample, sample.round()):
        raise ValueError("target must hold integer class labels, got fractions")
    if not labels.numel():
        return
    low, high = torch.stack((labels.min(), labels.max())).tolist()
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"target labels must lie in [0, {num_classes}) for {num_classes} "
            f"classes, got values in [{low}, {high}]"
        )
