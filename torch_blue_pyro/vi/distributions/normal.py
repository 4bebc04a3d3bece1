r"""The mean-field normal distribution in all three roles."""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.nn import init

from ...sites import (
    HALF_LOG_TWO_PI,
    NormalWeightPosterior,
    NormalWeightPrior,
    sum_of_squares,
)
from ..torch_blue_0_9 import as_parameter_tuple
from ..utils.use_norm_constants import norm_constants_enabled
from .base import (
    PredictiveDistribution,
    Prior,
    VariableOwner,
    VariationalDistribution,
    _sum_per_sample,
    _total,
)


class MeanFieldNormal(Prior, VariationalDistribution, PredictiveDistribution):
    r"""Independent normal distribution of each element: prior, variational, predictive.

    Its parameters are ``mean`` and ``log_std``. With variance
    :math:`\sigma^2 + \epsilon`, an element's log-probability is

    .. math::
        \log \mathcal N(w \mid \mu, \sigma) = -\tfrac12\left(
        \frac{(w-\mu)^2}{\sigma^2 + \epsilon} + \log(\sigma^2 + \epsilon)\right)
        \;[-\tfrac12 \log 2\pi],

    the constant only with :func:`~torch_blue_pyro.vi.utils.use_norm_constants`.

    * As a **prior**, :math:`\mathcal N(\text{mean}, \text{std}^2)` for every element
      (an L2 penalty in the loss).
    * As the **variational distribution**, the layer learns one mean and one log-std
      per element; samples are :math:`\mu + \sigma\varepsilon`,
      :math:`\varepsilon \sim \mathcal N(0, 1)`, and their log-probability is computed
      from :math:`\varepsilon` in closed form.
    * As the **predictive distribution**, the targets are scored under a normal with
      the sampled outputs' mean and standard deviation (which needs at least two
      samples).

    Parameters
    ----------
    mean: float, default: 0.0
        Prior mean; the default of a variational mean (which Kaiming initialization
        overrides). Ignored as predictive distribution.
    std: float, default: 1.0
        Prior standard deviation; the default variational std. Must be positive.
    eps: float, default: 1e-10
        Added to the variance for numerical stability.
    """

    distribution_parameters = ("mean", "log_std")

    def __init__(self, mean: float = 0.0, std: float = 1.0, eps: float = 1e-10) -> None:
        if not math.isfinite(float(mean)):
            raise ValueError(f"mean must be a finite number, got {mean}")
        if not (math.isfinite(float(std)) and float(std) > 0):
            raise ValueError(f"std must be a positive finite number, got {std}")
        self.mean = torch.tensor(float(mean))
        self.log_std = torch.tensor(float(std)).log()
        self.eps = eps

    def __repr__(self) -> str:
        return f"MeanFieldNormal(mean={float(self.mean):g}, std={float(self.std):g})"

    @property
    def std(self) -> Tensor:
        """Standard deviation of the distribution."""
        return self.log_std.exp()

    @property
    def _default_variational_parameters(self) -> tuple[Tensor, Tensor]:
        return self.mean, self.log_std

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log-probability of ``sample`` given ``(mean, log_std)``.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        parameters: tuple[Tensor, Tensor]
            Mean and log standard deviation, broadcastable to ``sample``.

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        mean, log_std = as_parameter_tuple(parameters)
        variance = torch.exp(2 * log_std) + self.eps
        log_prob = -0.5 * ((sample - mean) ** 2 / variance + variance.log())
        if norm_constants_enabled():
            log_prob = log_prob - HALF_LOG_TWO_PI
        return log_prob

    def sample(self, *parameters: Any) -> Tensor:
        r"""Draw :math:`\mu + \sigma\varepsilon` shaped like the parameters.

        Parameters
        ----------
        parameters: tuple[Tensor, Tensor]
            Mean and log standard deviation.

        Returns
        -------
        Tensor
            A reparameterized sample.
        """
        mean, log_std = as_parameter_tuple(parameters)
        return torch.addcmul(mean, log_std.exp(), torch.randn_like(mean))

    def rsample_with_log_prob(
        self, parameters: tuple[Tensor, ...], num_samples: int, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        r"""Draw ``S`` samples; their log-probability from the noise in closed form.

        With :math:`w = \mu + \sigma\varepsilon`,
        :math:`\log q(w) = -\tfrac12\sum\varepsilon^2 - \sum\log\sigma`
        (:math:`-\tfrac n2\log 2\pi` with normalization constants), which has the
        same value and gradient as scoring :math:`w`, at a fraction of the cost.

        Parameters
        ----------
        parameters: tuple[Tensor, ...]
            Mean and log-std, each of the variable's shape.
        num_samples: int
            ``S``.
        with_log_prob: bool
            Whether to compute the log-probabilities.

        Returns
        -------
        tuple[Tensor, Tensor or None]
            ``(S, *shape)`` samples and ``(S,)`` log-probabilities (or ``None``).
        """
        mean, log_std = parameters
        noise = torch.randn(
            (num_samples, *mean.shape), dtype=mean.dtype, device=mean.device
        )
        tracked = torch.is_grad_enabled() and (
            mean.requires_grad or log_std.requires_grad
        )
        if not (with_log_prob or tracked):
            # Prediction: nothing needs the noise afterwards; draw into its memory.
            return torch.addcmul(mean, log_std.exp(), noise, out=noise), None
        samples = torch.addcmul(mean, log_std.exp(), noise)
        if not with_log_prob:
            return samples, None
        log_prob = -0.5 * _sum_per_sample(noise.square()) - _total(log_std)
        if norm_constants_enabled():
            log_prob = log_prob - HALF_LOG_TWO_PI * mean.numel()
        return samples, log_prob

    def log_prob_per_sample(
        self, samples: Tensor, hyperparameters: tuple[Tensor, ...] = ()
    ) -> Tensor:
        r"""Prior log-probability of ``S`` stacked samples in closed form.

        :math:`-\frac{1}{2v}\sum (w-\mu)^2 - \frac n2 \log v` with
        :math:`v = \sigma^2 + \epsilon` over the :math:`n` elements of each sample.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values.
        hyperparameters: tuple[Tensor, ...], default: ()
            Unused: the normal prior is not hierarchical.

        Returns
        -------
        Tensor
            ``(S,)`` log-probabilities.
        """
        mean = float(self.mean)
        variance = math.exp(2 * float(self.log_std)) + self.eps
        centered = samples if mean == 0.0 else samples - mean
        numel = centered[0].numel()
        log_norm = 0.5 * math.log(variance)
        if norm_constants_enabled():
            log_norm += HALF_LOG_TWO_PI
        return _sum_per_sample(centered.square()) * (-0.5 / variance) - numel * log_norm

    def reset_parameters_to_prior(self, module: VariableOwner, variable: str) -> None:
        """Set the variable's ``mean`` and ``log_std`` to the prior's.

        A variational distribution without one of them (``NonBayesian`` has only a
        ``mean``, ``MeanFieldStudentT`` a ``log_scale``) keeps its other parameters.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.
        """
        for name in self.distribution_parameters:
            parameter_name = module.variational_parameter_name(variable, name)
            if hasattr(module, parameter_name):
                value = float(getattr(self, name))
                init.constant_(getattr(module, parameter_name), value)

    def pyro_distribution(self, *args: Any) -> TorchDistribution:
        """The Pyro form: as prior ``(event_shape, reference)``, as guide ``(params,)``.

        Parameters
        ----------
        args: Any
            ``(event_shape, reference)`` for the prior role: the prior normal expanded
            to ``event_shape`` on ``reference``'s device and dtype; or
            ``(parameters,)`` for the variational role: the normal with the layer's
            means and ``exp(log_std)``.

        Returns
        -------
        TorchDistribution
            The prior as a :class:`~torch_blue_pyro.sites.NormalWeightPrior`, the
            variational distribution as a
            :class:`~torch_blue_pyro.sites.NormalWeightPosterior`: each behaves as
            ``pyro.distributions.Normal(...).to_event(...)`` with the variable's
            event shape, with faster log-densities.
        """
        if len(args) == 2:
            event_shape, reference = args
            # Every forward pass asks for the prior of every site: build it once per
            # shape, device, dtype and parameter values.
            key = (
                tuple(event_shape),
                reference.device,
                reference.dtype,
                float(self.mean),
                float(self.log_std),
            )
            cached = self.__dict__.get("_pyro_prior")
            if cached is not None and cached[0] == key:
                return cached[1]
            factory = {"device": reference.device, "dtype": reference.dtype}
            loc = torch.as_tensor(float(self.mean), **factory)
            scale = torch.as_tensor(float(self.std), **factory)
            prior = NormalWeightPrior(loc, scale, torch.Size(event_shape))
            self.__dict__["_pyro_prior"] = (key, prior)
            return prior
        (parameters,) = args
        mean, log_std = parameters
        return NormalWeightPosterior(mean, log_std.exp())

    def predictive_parameters_from_samples(
        self, samples: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The sampled outputs' mean and (unbiased) standard deviation.

        Parameters
        ----------
        samples: Tensor
            ``(S, *)`` outputs, ``S >= 2``.

        Returns
        -------
        tuple[Tensor, Tensor]
            Mean and standard deviation over the sample dimension, ``(*)`` each.

        Raises
        ------
        ValueError
            If fewer than two samples are given: their std is undefined.
        """
        if samples.shape[0] < 2:
            raise ValueError(
                "MeanFieldNormal as predictive distribution estimates the predictive "
                "std from the samples and needs samples >= 2, got "
                f"{samples.shape[0]}; call the model with samples >= 2"
            )
        return samples.mean(dim=0), samples.std(dim=0)

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Log-likelihood of ``reference`` under a normal with ``(mean, std)``.

        Parameters
        ----------
        reference: Tensor
            The targets.
        parameters: tuple[Tensor, Tensor]
            Predictive mean and standard deviation (as returned by
            :meth:`predictive_parameters_from_samples`).

        Returns
        -------
        Tensor
            Elementwise log-likelihood.
        """
        mean, std = as_parameter_tuple((parameters,))
        if reference.shape != mean.shape:
            raise ValueError(
                f"target of shape {tuple(reference.shape)} does not match predictions "
                f"of shape {tuple(mean.shape)}"
            )
        return self.log_prob(reference, (mean, std.log()))


class _NormalDrawUnderNormalPrior(torch.autograd.Function):
    r"""``S`` reparameterized normal draws with the sums their log-densities need.

    Forward: :math:`w_s = \mu + \sigma\varepsilon_s` and, per sample,
    :math:`\sum\varepsilon_s^2` and :math:`\sum (w_s - m)^2` for the prior mean
    :math:`m`. Backward, with :math:`G_s = \partial L/\partial w_s +
    2\,\partial L/\partial(\sum (w_s - m)^2)\,(w_s - m)`:
    :math:`\partial L/\partial\mu = \sum_s G_s` and
    :math:`\partial L/\partial\log\sigma = \sigma \sum_s G_s \varepsilon_s`
    (:math:`\sum\varepsilon^2` does not depend on the parameters). Autograd would
    take several passes over the ``S x n`` values for the squares and their
    gradients; this takes one for each term.
    """

    @staticmethod
    def forward(
        ctx: Any, mean: Tensor, log_std: Tensor, noise: Tensor, prior_mean: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        std = log_std.exp()
        samples = torch.addcmul(mean, std, noise)
        centered = samples if prior_mean == 0.0 else samples - prior_mean
        noise_squares = sum_of_squares(noise, noise.dim() - 1)
        centered_squares = sum_of_squares(centered, centered.dim() - 1)
        ctx.save_for_backward(std, noise, samples)
        ctx.prior_mean = prior_mean
        ctx.mark_non_differentiable(noise_squares)
        return samples, noise_squares, centered_squares

    @staticmethod
    def backward(
        ctx: Any,
        samples_grad: Tensor | None,
        _noise_squares_grad: Tensor | None,
        centered_squares_grad: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        std, noise, samples = ctx.saved_tensors
        if centered_squares_grad is None:
            assert samples_grad is not None
            return samples_grad.sum(0), std * (samples_grad * noise).sum(0), None, None
        weight = (2 * centered_squares_grad).view(-1, *(1,) * (samples.dim() - 1))
        centered = samples if ctx.prior_mean == 0.0 else samples - ctx.prior_mean
        if samples_grad is None:
            grad = centered * weight
        else:
            grad = torch.addcmul(samples_grad, weight, centered)
        mean_grad = grad.sum(0)
        # ``grad`` is ours: reuse its memory for the products with the noise.
        log_std_grad = std * grad.mul_(noise).sum(0)
        return mean_grad, log_std_grad, None, None


def draw_under_normal_prior(
    mean: Tensor,
    log_std: Tensor,
    prior: MeanFieldNormal,
    num_samples: int,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""``S`` draws from a mean-field normal and their log prior and log variational.

    With :math:`w = \mu + \sigma\varepsilon` and the prior
    :math:`\mathcal N(m, v)`, per sample

    .. math::
        \log q(w) = -\tfrac12\sum\varepsilon^2 - \sum\log\sigma, \qquad
        \log p(w) = -\frac{1}{2v}\sum (w - m)^2 - \tfrac n2 \log v

    (each :math:`-\tfrac n2\log 2\pi` with normalization constants): the values and
    gradients of :meth:`MeanFieldNormal.rsample_with_log_prob` and
    :meth:`MeanFieldNormal.log_prob_per_sample`, computed in one fused pass.

    Parameters
    ----------
    mean, log_std: Tensor
        The variational parameters, of the variable's shape.
    prior: MeanFieldNormal
        The prior.
    num_samples: int
        ``S``.

    Returns
    -------
    tuple[Tensor, Tensor, Tensor]
        ``(S, *shape)`` samples, their ``(S,)`` log prior and ``(S,)`` log
        variational probabilities.
    """
    noise = torch.randn(
        (num_samples, *mean.shape), dtype=mean.dtype, device=mean.device
    )
    samples, noise_squares, centered_squares = _NormalDrawUnderNormalPrior.apply(
        mean, log_std, noise, float(prior.mean)
    )
    variance = math.exp(2 * float(prior.log_std)) + prior.eps
    numel = mean.numel()
    log_variational = -0.5 * noise_squares - _total(log_std)
    log_prior = centered_squares * (-0.5 / variance) - 0.5 * numel * math.log(variance)
    if norm_constants_enabled():
        log_variational = log_variational - HALF_LOG_TWO_PI * numel
        log_prior = log_prior - HALF_LOG_TWO_PI * numel
    return samples, log_prior, log_variational
