r"""BasicQuietPrior: a hierarchical normal prior whose spread follows its mean."""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as pyro_dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor

from ...poutine.runtime import in_pyro_inference
from ..torch_blue_0_9 import as_parameter_tuple
from ..utils.use_norm_constants import norm_constants_enabled
from .base import Prior, VariableOwner, _sum_per_sample

_LOG_TWO_PI = math.log(2 * math.pi)
_DOUBLE = torch.float64


def _finite(value: float, argument: str, positive: bool = False) -> float:
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        kind = "a positive finite" if positive else "a finite"
        raise ValueError(f"{argument} must be {kind} number, got {value!r}")
    return number


class BasicQuietPrior(Prior):
    r"""Hierarchical prior: normal weights whose standard deviation follows their mean.

    Each element :math:`w` of a random variable has its own mean :math:`m`, itself
    normal, and a standard deviation proportional to :math:`|m|`:

    .. math::
        m \sim \mathcal N(\mu_0, \sigma_0^2), \qquad
        w \mid m \sim \mathcal N\bigl(m, (r m)^2 + \epsilon\bigr),

    with :math:`\mu_0` = ``mean_mean``, :math:`\sigma_0` = ``mean_std``, :math:`r` =
    ``std_ratio``. As in torch_blue, the layer's variational mean :math:`\hat m` (the
    variational parameter ``mean``, this prior's ``_required_parameters``) is the point
    estimate of :math:`m`, and the prior scores the pair :math:`(w, \hat m)`:

    .. math::
        \log p(w, \hat m) = -\tfrac12\left(\frac{(w-\hat m)^2}{v}
        + \frac{(\hat m-\mu_0)^2}{\sigma_0^2} + \log v + \log \sigma_0^2\right)
        \;[-\log 2\pi], \qquad v = (r\hat m)^2 + \epsilon,

    per element (the constant only with
    :func:`~torch_blue_pyro.vi.utils.use_norm_constants`). Its gradient reaches the
    variational mean through both terms. The variational distribution must have a
    ``mean`` parameter (:class:`~torch_blue_pyro.vi.distributions.MeanFieldNormal`,
    :class:`~torch_blue_pyro.vi.distributions.MeanFieldStudentT`, ...).

    **In Pyro** the prior is the hierarchical model itself. A variable with site
    ``"0.weight"`` gets a hyper-site ``"0.weight_prior_mean"`` for :math:`m`, drawn
    from :math:`\mathcal N(\mu_0, \sigma_0^2)` (one event of the variable's shape)
    first; the variable's site is then :math:`\mathcal N(m, (rm)^2 + \epsilon)`.
    Sampling from the prior (``Predictive`` without a guide) draws both. The layer's
    guide (:meth:`~torch_blue_pyro.vi.VIModule.guide`) puts a point mass
    (:class:`~pyro.distributions.Delta`) at the variational mean on the hyper-site,
    so ``Trace_ELBO`` optimizes the same objective as torch_blue: the variational
    mean is a point estimate of :math:`m` (type-II maximum a posteriori), and
    :math:`\log p(\hat m) + \log p(w \mid \hat m)` is the log prior above with its
    constants. An autoguide (``AutoNormal``, ...) instead learns a distribution of
    its own for the hyper-site: a fully Bayesian treatment of :math:`m`. In
    torch_blue mode nothing is drawn for :math:`m`; it is :math:`\hat m`.

    There is no analytic KL divergence for this prior; use
    :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`.

    Parameters
    ----------
    std_ratio: float, default: 1.0
        :math:`r`, the ratio of each weight's standard deviation to its mean; > 0.
    mean_mean: float, default: 0.0
        :math:`\mu_0`, the mean of the means.
    mean_std: float, default: 1.0
        :math:`\sigma_0`, the standard deviation of the means; > 0.
    eps: float, default: 1e-10
        :math:`\epsilon`, added to the variance of :math:`w` so that it stays positive
        at :math:`m = 0`; >= 0.

    Raises
    ------
    ValueError
        If an argument is not finite or out of its range.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> layer = vi.VILinear(4, 3, prior=vi.distributions.BasicQuietPrior(0.5))
    >>> layer(torch.randn(8, 4), samples=2).log_probs.shape
    torch.Size([2, 2])
    """

    distribution_parameters = ("mean", "log_std")
    _required_parameters = ("mean",)
    _scaling_parameters = ("mean_mean", "mean_std")

    def __init__(
        self,
        std_ratio: float = 1.0,
        mean_mean: float = 0.0,
        mean_std: float = 1.0,
        eps: float = 1e-10,
    ) -> None:
        self._std_ratio = _finite(std_ratio, "std_ratio", positive=True)
        # Double precision 0-d tensors: exact for float64 weights, and a 0-d tensor
        # does not change the dtype of float32 results.
        self.mean_mean = torch.tensor(_finite(mean_mean, "mean_mean"), dtype=_DOUBLE)
        self.mean_std = torch.tensor(
            _finite(mean_std, "mean_std", positive=True), dtype=_DOUBLE
        )
        eps = _finite(eps, "eps")
        if eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.eps = eps

    def __repr__(self) -> str:
        return (
            f"BasicQuietPrior(std_ratio={self._std_ratio:g}, "
            f"mean_mean={float(self.mean_mean):g}, mean_std={float(self.mean_std):g})"
        )

    @property
    def std_ratio(self) -> float:
        """:math:`r`, the ratio of each weight's standard deviation to its mean."""
        return self._std_ratio

    def get_parameters(self) -> tuple[Tensor, Tensor]:
        r"""The hyperprior's parameters ``(mean_mean, mean_std)``, as in torch_blue 1.1.

        Returns
        -------
        tuple[Tensor, Tensor]
            :math:`\mu_0` and :math:`\sigma_0`.
        """
        return self.mean_mean, self.mean_std

    def _variance(self, mean: Tensor) -> Tensor:
        return (self._std_ratio * mean).square() + self.eps

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        r"""Elementwise :math:`\log p(w, \hat m)`, see the class description.

        Parameters
        ----------
        sample: Tensor
            The values :math:`w`.
        parameters: tuple[Tensor, Tensor, Tensor]
            :math:`\mu_0`, :math:`\sigma_0` and the point estimate :math:`\hat m`
            (broadcastable to ``sample``), as one tuple or unpacked.

        Returns
        -------
        Tensor
            Shaped like ``sample``.

        Raises
        ------
        ValueError
            If the point estimate of the mean is missing.
        """
        values = as_parameter_tuple(parameters)
        if len(values) != 3:
            raise ValueError(
                "BasicQuietPrior.log_prob needs (mean_mean, mean_std, mean): the "
                "hyperprior's parameters and the variable's variational mean (its "
                f"_required_parameters), got {len(values)} values"
            )
        mean_mean, mean_std, mean = values
        variance = self._variance(mean)
        mean_variance = torch.as_tensor(mean_std).square()
        log_prob = -0.5 * (
            (sample - mean).square() / variance
            + (mean - mean_mean).square() / mean_variance
            + variance.log()
            + mean_variance.log()
        )
        if norm_constants_enabled():
            log_prob = log_prob - _LOG_TWO_PI
        return log_prob

    def log_prob_per_sample(
        self, samples: Tensor, hyperparameters: tuple[Tensor, ...] = ()
    ) -> Tensor:
        r"""Log prior of ``S`` stacked samples in closed form.

        The terms that depend only on :math:`\hat m` are computed once for all
        samples: :math:`-\frac12\sum_i \frac{(w_i-\hat m_i)^2}{v_i} + c(\hat m)`.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values.
        hyperparameters: tuple[Tensor]
            The variational mean :math:`\hat m`, of the variable's shape.

        Returns
        -------
        Tensor
            ``(S,)`` log-probabilities.
        """
        (mean,) = _required_mean(hyperparameters)
        variance = self._variance(mean)
        mean_std = float(self.mean_std)
        shared = (mean - float(self.mean_mean)).square().sum() / mean_std**2
        shared = shared + variance.log().sum() + mean.numel() * 2 * math.log(mean_std)
        if norm_constants_enabled():
            shared = shared + mean.numel() * 2 * _LOG_TWO_PI
        spread = _sum_per_sample((samples - mean).square() / variance)
        return -0.5 * (spread + shared)

    def reset_parameters_to_prior(self, module: VariableOwner, variable: str) -> None:
        r"""Draw the means from :math:`\mathcal N(\mu_0, \sigma_0^2)`; std :math:`r|m|`.

        Sets the variable's ``mean`` and, if the variational distribution has one,
        its ``log_std`` to :math:`\log(r|m|)`.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.
        """
        mean = getattr(module, module.variational_parameter_name(variable, "mean"))
        log_std_name = module.variational_parameter_name(variable, "log_std")
        with torch.no_grad():
            mean.normal_(float(self.mean_mean), float(self.mean_std))
            if hasattr(module, log_std_name):
                getattr(module, log_std_name).copy_(
                    torch.log(self._std_ratio * mean.abs())
                )

    def _hyperprior(self, event_shape: torch.Size, reference: Tensor) -> Any:
        loc = reference.new_tensor(float(self.mean_mean))
        scale = reference.new_tensor(float(self.mean_std))
        base = pyro_dist.Normal(loc, scale).expand(torch.Size(event_shape))
        return base.to_event(len(event_shape))

    def pyro_distribution(self, *args: Any) -> TorchDistribution:
        """Not available: :math:`w` alone has no closed form; see :meth:`pyro_prior`.

        Parameters
        ----------
        args: Any
            Ignored.

        Raises
        ------
        NotImplementedError
            Always.
        """
        raise NotImplementedError(
            "BasicQuietPrior is hierarchical: the marginal of the weights has no "
            "closed form. Its Pyro model is pyro_prior(site, event_shape, reference, "
            "hyperparameters), which draws the mean's hyper-site first"
        )

    def pyro_prior(
        self,
        site: str,
        event_shape: torch.Size,
        reference: Tensor,
        hyperparameters: tuple[Tensor, ...] = (),
    ) -> TorchDistribution:
        r"""Draw the hyper-site ``f"{site}_prior_mean"``, return :math:`p(w \mid m)`.

        In torch_blue mode (no Pyro handler active) nothing is drawn and :math:`m`
        is the variational mean.

        Parameters
        ----------
        site: str
            The variable's site name.
        event_shape: torch.Size
            The variable's shape.
        reference: Tensor
            Gives the device and dtype.
        hyperparameters: tuple[Tensor]
            The variational mean :math:`\hat m`.

        Returns
        -------
        TorchDistribution
            :math:`\mathcal N(m, (rm)^2 + \epsilon)` with the variable's event shape.
        """
        pyro_mode = in_pyro_inference()
        if pyro_mode:
            mean = pyro.sample(
                f"{site}_prior_mean", self._hyperprior(event_shape, reference)
            )
        else:
            (mean,) = _required_mean(hyperparameters)
        scale = self._variance(mean).sqrt()
        # torch_blue mode only needs the site's distribution, never its values.
        conditional = pyro_dist.Normal(
            mean, scale, validate_args=None if pyro_mode else False
        )
        return conditional.to_event(len(event_shape))

    def pyro_hyper_guide(
        self, site: str, hyperparameters: tuple[Tensor, ...]
    ) -> dict[str, TorchDistribution]:
        r"""A point mass at the variational mean on the hyper-site of :math:`m`.

        Parameters
        ----------
        site: str
            The variable's site name.
        hyperparameters: tuple[Tensor]
            The variational mean :math:`\hat m`.

        Returns
        -------
        dict[str, TorchDistribution]
            ``{f"{site}_prior_mean": Delta(mean)}``, one event of the variable's
            shape.
        """
        (mean,) = _required_mean(hyperparameters)
        return {f"{site}_prior_mean": pyro_dist.Delta(mean, event_dim=mean.dim())}


def _required_mean(hyperparameters: Any) -> tuple[Tensor]:
    values = as_parameter_tuple(
        (hyperparameters,) if isinstance(hyperparameters, Tensor) else hyperparameters
    )
    if len(values) != 1:
        raise ValueError(
            "BasicQuietPrior needs the variable's variational mean (its "
            f"_required_parameters), got {len(values)} values"
        )
    return (values[0],)
