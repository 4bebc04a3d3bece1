r"""KullbackLeiblerLoss: torch_blue's negative-ELBO loss from sampled outputs."""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar
from warnings import warn

import torch
from torch import Tensor
from torch.nn import Module

from ..amp import full_precision, without_autocast
from .distributions import PredictiveDistribution
from .utils.checks import distribution_instance, positive_int
from .utils.errors import UnsupportedDistributionError
from .utils.validation import all_finite, value_checks_enabled
from .utils.vi_return import VIReturn


class _SampledOutputLoss(Module):
    r"""What torch_blue's losses share: checks, the data term and the log.

    Both :class:`KullbackLeiblerLoss` and
    :class:`~torch_blue_pyro.vi.AnalyticalKullbackLeiblerLoss` score the targets with
    the same data term,
    :math:`-N \operatorname{mean}_{\text{batch}} \log p(y \mid \theta(f_1, \dots,
    f_S))`; they differ in how they estimate the KL divergence.
    """

    _log_keys: ClassVar[tuple[str, ...]] = ("data_fitting", "prior_matching")

    def __init__(
        self,
        predictive_distribution: PredictiveDistribution,
        dataset_size: int | None,
        heat: float,
        track: bool,
    ) -> None:
        super().__init__()
        distribution_instance(predictive_distribution, "predictive_distribution")
        if not isinstance(predictive_distribution, PredictiveDistribution):
            raise UnsupportedDistributionError(
                f"{type(predictive_distribution).__name__} cannot be used as a "
                "predictive distribution (predictive_distribution)"
            )
        if not (isinstance(heat, numbers.Real) and math.isfinite(heat) and heat >= 0):
            raise ValueError(f"heat must be a finite number >= 0, got {heat!r}")
        self.predictive_distribution: PredictiveDistribution = predictive_distribution
        self.dataset_size: int | None = (
            None if dataset_size is None else positive_int(dataset_size, "dataset_size")
        )
        self.heat: float = float(heat)
        self._track: bool = False
        self.log: dict[str, list] | None = None
        self.track(track)

    def track(self, mode: bool = True) -> None:
        """Switch recording of the loss components on or off.

        While on, every call appends to :attr:`log`: ``"data_fitting"`` (float) and
        ``"prior_matching"`` (float, with ``heat`` applied), and for
        :class:`KullbackLeiblerLoss` ``"log_probs"`` (the ``(2,)`` sample-mean log
        prior and log variational, detached). Switching off keeps the history.

        Parameters
        ----------
        mode: bool, default: True
            Whether to record.
        """
        if mode and self.log is None:
            self.log = {key: [] for key in self._log_keys}
        self._track = bool(mode)

    def _data_fitting(
        self, samples: Tensor, target: Tensor, dataset_size: int | None
    ) -> Tensor:
        """The data term from ``(S, B, *)`` sampled outputs, warning without a size.

        Computed in at least ``float32`` and without autocast, whatever the dtype of
        the outputs (half precision under ``torch.autocast``).
        """
        if dataset_size is not None:
            n_data = positive_int(dataset_size, "dataset_size")
        elif self.dataset_size is not None:
            n_data = self.dataset_size
        else:
            n_data = samples.shape[1]
            warn(
                f"No dataset_size is provided. Batch size ({n_data}) is used instead.",
                stacklevel=3,
            )
        _check_finite_on_device(samples, target)
        samples, target = full_precision(samples), full_precision(target)
        with without_autocast(samples.device.type):
            log_likelihood = self.predictive_distribution.log_prob_from_samples(
                target, samples
            )
            return -n_data * log_likelihood.mean(dim=0).sum()

    def _record(
        self, data_fitting: Tensor, prior_matching: Tensor, **extra: Any
    ) -> None:
        if self._track and self.log is not None:
            self.log["data_fitting"].append(data_fitting.item())
            self.log["prior_matching"].append(prior_matching.item())
            for key, value in extra.items():
                self.log[key].append(value)


def _check_finite_on_device(samples: Tensor, target: Tensor) -> None:
    """Refuse a target on another device and NaN or inf in target or output.

    The finiteness is read from the device once (one synchronization on a GPU), and
    only while :func:`~torch_blue_pyro.vi.utils.value_checks_enabled`; the errors
    are worked out only when something is not finite.
    """
    if target.device != samples.device:
        raise ValueError(
            f"target must be on the device of model_output ({samples.device}), got "
            f"{target.device}"
        )
    if not value_checks_enabled():
        return
    checked = (samples, target) if target.is_floating_point() else (samples,)
    if all_finite(*checked):
        return
    if target.is_floating_point():
        bad = int((~torch.isfinite(target)).sum())
        if bad:
            raise ValueError(f"target must be finite, got {bad} NaN or inf value(s)")
    if not bool(torch.isfinite(samples).all()):
        raise ValueError(
            "model_output holds NaN or inf values: check the inputs and the "
            "parameters (a diverged training run shows this first)"
        )


def _plain(model_output: Tensor) -> Tensor:
    """The output as a plain tensor (a view of a :class:`VIReturn`)."""
    if isinstance(model_output, VIReturn):
        return model_output.as_tensor()
    return model_output


class KullbackLeiblerLoss(_SampledOutputLoss):
    r"""torch_blue's negative evidence lower bound, from ``S`` sampled outputs.

    For model outputs :math:`f_s(x)`, :math:`s = 1..S`, with log-probabilities
    :math:`(\log p(w_s), \log q(w_s))`, a batch of targets :math:`y` and a data set of
    :math:`N` points,

    .. math::
        \mathcal L = -N \cdot \operatorname{mean}_{\text{batch}}
        \log p\bigl(y \mid \theta(f_1, \dots, f_S)\bigr)
        + \eta\,\bigl(\operatorname{mean}_s \log q(w_s) - \operatorname{mean}_s
        \log p(w_s)\bigr),

    where :math:`\theta` are the predictive parameters estimated from the samples
    (for :class:`~torch_blue_pyro.vi.distributions.Categorical`, the sample-averaged
    class probabilities) and :math:`\eta` is ``heat``. The second term is a
    Monte-Carlo estimate of :math:`\mathrm{KL}(q\,\|\,p)`.

    This is *not* Pyro's ELBO, whose data term averages the log-likelihood over the
    samples, :math:`\operatorname{mean}_s \log p(y \mid f_s)`: here the
    log-likelihood of the *averaged prediction* is used, as in torch_blue, so the
    numbers match torch_blue's. Train with Pyro's ``Trace_ELBO`` and
    :meth:`~torch_blue_pyro.vi.VIModule.guide` for the standard ELBO.

    Parameters
    ----------
    predictive_distribution: PredictiveDistribution
        The distribution of the outputs: ``Categorical()`` for classification,
        ``MeanFieldNormal()`` for regression.
    dataset_size: int, optional
        :math:`N`; may instead be given to :meth:`forward`. If neither is given the
        batch size is used, with a warning.
    heat: float, default: 1.0
        :math:`\eta`; below 1 gives a "cold posterior", 0 drops the KL term.
    track: bool, default: False
        Record the loss components in :attr:`log` (see :meth:`track`).

    Raises
    ------
    UnsupportedDistributionError
        If ``predictive_distribution`` cannot be a predictive distribution.
    ValueError
        If ``dataset_size`` is not a positive int or ``heat`` is negative or not
        finite.
    """

    _log_keys: ClassVar[tuple[str, ...]] = (
        "data_fitting",
        "prior_matching",
        "log_probs",
    )

    def __init__(
        self,
        predictive_distribution: PredictiveDistribution,
        dataset_size: int | None = None,
        heat: float = 1.0,
        track: bool = False,
    ) -> None:
        super().__init__(predictive_distribution, dataset_size, heat, track)

    def forward(
        self,
        model_output: Tensor,
        target: Tensor,
        dataset_size: int | None = None,
    ) -> Tensor:
        """Compute the loss.

        Parameters
        ----------
        model_output: VIReturn
            ``(S, *)`` sampled outputs carrying ``log_probs`` of shape ``(S, 2)``.
        target: Tensor
            ``(*)`` targets.
        dataset_size: int, optional
            Overrides the ``dataset_size`` given at construction.

        Returns
        -------
        Tensor
            The scalar loss.

        Raises
        ------
        ValueError
            If the output has no log-probabilities, or ``dataset_size`` is invalid.
        """
        log_probs = getattr(model_output, "log_probs", None)
        if log_probs is None:
            raise ValueError(
                "KullbackLeiblerLoss needs model_output with log_probs: pass the "
                "output of the outermost VIModule called with return_log_probs=True"
            )
        log_probs = full_precision(log_probs)
        mean_log_probs = log_probs.mean(dim=0) if log_probs.dim() != 1 else log_probs
        prior_matching = self.heat * (mean_log_probs[1] - mean_log_probs[0])
        data_fitting = self._data_fitting(_plain(model_output), target, dataset_size)
        self._record(
            data_fitting, prior_matching, log_probs=mean_log_probs.detach().clone()
        )
        return data_fitting + prior_matching
