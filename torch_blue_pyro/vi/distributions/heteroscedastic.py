r"""The heteroscedastic normal predictive distribution: regression, learned noise."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as pyro_dist
import torch
from torch import Tensor

from ...sites import HALF_LOG_TWO_PI
from ...uncertainty import regression_uncertainty, split_mean_log_sigma
from ..torch_blue_0_9 import as_parameter_tuple
from ..utils.use_norm_constants import norm_constants_enabled
from .base import PredictiveDistribution


class HeteroscedasticNormal(PredictiveDistribution):
    r"""A normal predictive distribution whose noise the model predicts.

    The model output's last dimension holds :math:`D` means, then :math:`D`
    log-sigmas, ``(S, *, 2D)`` (for one output: ``(mean, log_sigma)``). A network
    with ``2D`` outputs learns noise that depends on the input (heteroscedastic,
    Kendall & Gal, 2017, "What Uncertainties Do We Need in Bayesian Deep Learning for
    Computer Vision?"); a network with :math:`D` outputs followed by
    :class:`~torch_blue_pyro.uncertainty.HomoscedasticNoise` learns one
    :math:`\sigma` per output (homoscedastic). Targets have shape ``(*, D)``.

    From ``S`` sampled outputs :math:`(\mu_s, \log\sigma_s)` the predictive
    parameters are the mean and standard deviation of the mixture
    :math:`\frac1S\sum_s \mathcal N(\mu_s, \sigma_s^2)`,

    .. math::
        \bar\mu = \tfrac1S \textstyle\sum_s \mu_s, \qquad
        \bar\sigma^2 = \underbrace{\tfrac1S \textstyle\sum_s
        \sigma_s^2}_{\text{aleatoric}} + \underbrace{\tfrac1S \textstyle\sum_s
        (\mu_s - \bar\mu)^2}_{\text{epistemic}}

    (see :func:`~torch_blue_pyro.uncertainty.regression_uncertainty`), and a target
    scores

    .. math::
        \log \mathcal N(y \mid \bar\mu, \bar\sigma) = -\tfrac12\left(
        \frac{(y-\bar\mu)^2}{\bar\sigma^2 + \epsilon} + \log(\bar\sigma^2 +
        \epsilon)\right) \;[-\tfrac12 \log 2\pi],

    the constant only with :func:`~torch_blue_pyro.vi.utils.use_norm_constants`, as
    for :class:`~torch_blue_pyro.vi.distributions.MeanFieldNormal`. With
    :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss` the data term is the
    log-likelihood of this moment-matched prediction, in the spirit of torch_blue's
    losses (Pyro's ``Trace_ELBO`` instead averages
    :math:`\log\mathcal N(y \mid \mu_s, \sigma_s)` over the draws; use
    :meth:`observation_distribution` there). Unlike ``MeanFieldNormal``, whose
    predictive std comes from the samples alone, one sample is enough:
    :math:`\bar\sigma = \sigma_1`.

    Parameters
    ----------
    eps: float, default: 1e-6
        Added to the variance for numerical stability; >= 0.

    Raises
    ------
    ValueError
        If ``eps`` is negative or not finite.

    Examples
    --------
    >>> from torch import nn
    >>> from torch_blue_pyro import vi
    >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
    >>> model = vi.VISequential(vi.VILinear(3, 16), nn.ReLU(), vi.VILinear(16, 2))
    >>> loss_fn = vi.KullbackLeiblerLoss(
    ...     vi.distributions.HeteroscedasticNormal(), dataset_size=32
    ... )
    >>> loss = loss_fn(model(x, samples=4), y)  # output (4, 32, 2), target (32, 1)
    """

    distribution_parameters = ("mean", "std")

    def __init__(self, eps: float = 1e-6) -> None:
        if not (math.isfinite(float(eps)) and float(eps) >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"HeteroscedasticNormal(eps={self.eps:g})"

    def predictive_parameters_from_samples(
        self, samples: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The mean and standard deviation of the sampled outputs' normal mixture.

        Parameters
        ----------
        samples: Tensor
            ``(S, *, 2D)`` outputs: means, then log-sigmas.

        Returns
        -------
        tuple[Tensor, Tensor]
            Mean and standard deviation, ``(*, D)`` each.

        Raises
        ------
        ValueError
            If the last dimension is odd.
        """
        result = regression_uncertainty(samples.as_subclass(Tensor))
        return result.mean, result.total_std

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log-density of ``sample`` under a normal ``(mean, std)``.

        Parameters
        ----------
        sample: Tensor
            Targets.
        parameters: tuple[Tensor, Tensor]
            Mean and standard deviation, broadcastable to ``sample`` (a tuple or
            unpacked).

        Returns
        -------
        Tensor
            The broadcast shape of ``sample`` and the parameters.
        """
        mean, std = as_parameter_tuple(parameters)
        variance = std.square() + self.eps
        log_prob = -0.5 * ((sample - mean).square() / variance + variance.log())
        if norm_constants_enabled():
            log_prob = log_prob - HALF_LOG_TWO_PI
        return log_prob

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Log-likelihood of targets ``(*, D)`` given the predictive ``(mean, std)``.

        Parameters
        ----------
        reference: Tensor
            Targets, of the shape of the predictive mean.
        parameters: tuple[Tensor, Tensor]
            As returned by :meth:`predictive_parameters_from_samples`.

        Returns
        -------
        Tensor
            ``(*, D)`` log-likelihoods.

        Raises
        ------
        ValueError
            If the targets' shape differs from the mean's (no silent broadcasting:
            targets ``(N,)`` against means ``(N, 1)`` would give ``(N, N)``).
        """
        mean, std = as_parameter_tuple((parameters,))
        if reference.shape != mean.shape:
            hint = ""
            if reference.shape == mean.shape[:-1] and mean.shape[-1] == 1:
                hint = "; for one output give the targets as y.unsqueeze(-1)"
            raise ValueError(
                f"target of shape {tuple(reference.shape)} does not match the "
                f"predictive mean of shape {tuple(mean.shape)} (the model output's "
                f"last dimension holds the means, then the log-sigmas){hint}"
            )
        return self.log_prob(reference, (mean, std))

    def observation_distribution(self, output: Tensor) -> pyro_dist.Normal:
        r"""The normal of one output, for an observation site in a Pyro model.

        In Pyro mode the model returns one draw ``(*, 2D)``;
        ``pyro.sample("obs", likelihood.observation_distribution(out).to_event(1),
        obs=y)`` scores the targets under :math:`\mathcal N(\mu, \sigma^2 +
        \epsilon)`.

        Parameters
        ----------
        output: Tensor
            ``(*, 2D)``: means, then log-sigmas.

        Returns
        -------
        pyro.distributions.Normal
            Batch shape ``(*, D)``.
        """
        mean, log_sigma = split_mean_log_sigma(output)
        scale = torch.sqrt(torch.exp(2 * log_sigma) + self.eps)
        return pyro_dist.Normal(mean, scale)
