r"""Base classes of the torch_blue distributions and the roles they play.

A distribution plays up to three roles, declared by subclassing:

* :class:`Prior`: the prior of a random variable (a layer's weight, say);
* :class:`VariationalDistribution`: the learned approximation of its posterior, whose
  parameters are the layer's ``nn.Parameter``\ s;
* :class:`PredictiveDistribution`: the distribution of the model output, used by the
  losses to score targets given the sampled outputs.

Besides torch_blue's methods, each role has a vectorized method the fast path uses
(:meth:`Prior.log_prob_per_sample`,
:meth:`VariationalDistribution.rsample_with_log_prob`)
and a bridge to Pyro (``pyro_distribution``). Subclasses may override these with closed
forms; the defaults are built from torch_blue's methods, so a user's torch_blue
distribution works unchanged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any
from warnings import warn

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.nn import init

if TYPE_CHECKING:
    from ..base import VIModule


def _as_parameter_tuple(parameters: tuple[Any, ...]) -> tuple[Tensor, ...]:
    """Accept torch_blue 1.1's ``f((a, b))`` and 0.9's ``f(a, b)`` call styles."""
    if len(parameters) == 1 and isinstance(parameters[0], (tuple, list)):
        return tuple(parameters[0])
    return tuple(parameters)


def _sum_per_sample(values: Tensor) -> Tensor:
    """Sum ``(S, *shape)`` values over everything but the leading sample dimension."""
    return values.reshape(values.shape[0], -1).sum(dim=1)


class Distribution(ABC):
    """Base class of all torch_blue distributions.

    Do not subclass this directly: subclass one or more of :class:`Prior`,
    :class:`VariationalDistribution` and :class:`PredictiveDistribution`, which
    declare the roles the distribution can play.

    ``distribution_parameters`` names the parameters that define the distribution;
    the first is the *primary* one, the closest to a deterministic weight (a mean).
    Parameters that live on the log scale start with ``log_``.
    """

    distribution_parameters: tuple[str, ...]

    @property
    def primary_parameter(self) -> str:
        """The parameter closest to a deterministic weight (typically the mean)."""
        return self.distribution_parameters[0]

    @property
    def is_prior(self) -> bool:
        """Whether the distribution can be a prior (torch_blue 0.9's role flag)."""
        return isinstance(self, Prior)

    @property
    def is_variational_distribution(self) -> bool:
        """Whether it can be a variational distribution (torch_blue 0.9's flag)."""
        return isinstance(self, VariationalDistribution)

    @property
    def is_predictive_distribution(self) -> bool:
        """Whether it can be a predictive distribution (torch_blue 0.9's flag)."""
        return isinstance(self, PredictiveDistribution)

    def log_prob(self, sample: Tensor, parameters: tuple[Tensor, ...]) -> Tensor:
        """Elementwise log-probability of ``sample`` given the distribution parameters.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        parameters: tuple[Tensor, ...]
            One tensor per entry of ``distribution_parameters``, in that order,
            broadcastable to ``sample``.

        Returns
        -------
        Tensor
            The log-probability of each element, shaped like ``sample``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not implement log_prob(sample, parameters)"
        )

    def match_parameters(
        self, distribution_parameters: tuple[str, ...]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Split this distribution's parameters into shared and exclusive ones.

        Parameters
        ----------
        distribution_parameters: tuple[str, ...]
            Parameter names to compare with (another distribution's, typically).

        Returns
        -------
        tuple[dict[str, int], dict[str, int]]
            Names of this distribution's parameters that also appear in
            ``distribution_parameters``, and those that do not, each mapped to its
            index in this distribution's ``distribution_parameters``.
        """
        shared: dict[str, int] = {}
        exclusive: dict[str, int] = {}
        for index, name in enumerate(self.distribution_parameters):
            (shared if name in distribution_parameters else exclusive)[name] = index
        return shared, exclusive

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Prior(Distribution):
    r"""Role interface: a distribution usable as the prior of a random variable.

    Each name in ``distribution_parameters`` is an attribute holding that parameter's
    value, so :meth:`kaiming_rescale` can rescale it; ``_scaling_parameters`` (default:
    all of them) says which are rescaled. ``_required_parameters`` names variational
    parameters of the layer that a hierarchical prior needs besides the sample; they
    are passed to :meth:`log_prob` after the prior's own parameters.
    """

    _rescaled: bool = False
    _required_parameters: tuple[str, ...] = ()
    _scaling_parameters: tuple[str, ...]

    def get_parameters(self) -> tuple[Tensor, ...]:
        """The values of the prior's parameters, in ``distribution_parameters`` order.

        Returns
        -------
        tuple[Tensor, ...]
            One value per distribution parameter.
        """
        return tuple(getattr(self, name) for name in self.distribution_parameters)

    def prior_log_prob(
        self, sample: Tensor, hyperparameters: tuple[Tensor, ...] = ()
    ) -> Tensor:
        """Elementwise log-probability of ``sample`` under the prior.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        hyperparameters: tuple[Tensor, ...], default: ()
            The values of ``_required_parameters`` for hierarchical priors.

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        return self.log_prob(sample, (*self.get_parameters(), *hyperparameters))

    def log_prob_per_sample(
        self, samples: Tensor, hyperparameters: tuple[Tensor, ...] = ()
    ) -> Tensor:
        """Total log-probability of each of ``S`` stacked samples.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values of one random variable.
        hyperparameters: tuple[Tensor, ...], default: ()
            The values of ``_required_parameters`` for hierarchical priors.

        Returns
        -------
        Tensor
            ``(S,)``: the log-probability summed over each sample's elements.
        """
        return _sum_per_sample(self.prior_log_prob(samples, hyperparameters))

    def kaiming_rescale(self, fan_in: int, eps: float = 1e-5) -> None:
        r"""Rescale the prior to the layer width (the ``rescale_prior`` option).

        Scaling parameters are multiplied by :math:`1/\sqrt{3\,\text{fan\_in}}`; those
        whose name starts with ``log`` get :math:`\log(1/\sqrt{3\,\text{fan\_in}} +
        \epsilon)` added instead. A second call warns and does nothing.

        Parameters
        ----------
        fan_in: int
            The layer's fan-in.
        eps: float, default: 1e-5
            Keeps the logarithm finite.
        """
        if self._rescaled:
            warn(
                f"{type(self).__name__} has already been rescaled; ignoring.",
                stacklevel=2,
            )
            return
        self._rescaled = True
        scale = 1 / math.sqrt(3 * fan_in) if fan_in > 0 else 0.0
        for name in self.scaling_parameters:
            value = getattr(self, name)
            if name.startswith("log"):
                setattr(self, name, value + math.log(scale + eps))
            else:
                setattr(self, name, value * scale)

    @property
    def scaling_parameters(self) -> tuple[str, ...]:
        """The parameters :meth:`kaiming_rescale` rescales."""
        return getattr(self, "_scaling_parameters", self.distribution_parameters)

    def reset_parameters_to_prior(self, module: VIModule, variable: str) -> None:
        """Set a variable's variational parameters to the prior's values.

        Used by the ``prior_initialization`` option. The default only warns;
        priors that support it override this.

        Parameters
        ----------
        module: VIModule
            The module owning the variable.
        variable: str
            The random variable's name.
        """
        warn(
            f"{type(self).__name__} does not implement reset_parameters_to_prior, so "
            "prior_initialization leaves the parameters as they are.",
            stacklevel=2,
        )

    def pyro_distribution(
        self, event_shape: torch.Size, reference: Tensor
    ) -> TorchDistribution:
        """The prior as a Pyro distribution with ``event_shape``.

        This is the distribution of the variable's :class:`~pyro.nn.PyroSample`
        site, used when the model runs under Pyro's inference machinery.

        Parameters
        ----------
        event_shape: torch.Size
            The shape of the random variable.
        reference: Tensor
            A tensor whose device and dtype the distribution's parameters take.

        Returns
        -------
        TorchDistribution
            A distribution with ``event_shape`` and empty batch shape.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no Pyro form yet, so a model with this prior "
            "cannot run under Pyro's inference machinery; override pyro_distribution"
        )


class VariationalDistribution(Distribution):
    """Role interface: a distribution usable as a variational distribution.

    Its ``distribution_parameters`` become ``nn.Parameter`` s of the layer (named by
    :meth:`~torch_blue_pyro.vi.VIModule.variational_parameter_name`), initialized
    from ``_default_variational_parameters``; the primary parameter is initialized like
    a deterministic layer's weight instead.
    """

    @property
    @abstractmethod
    def _default_variational_parameters(self) -> tuple[Any, ...]:
        """Initial values of the parameters, in ``distribution_parameters`` order."""

    @abstractmethod
    def sample(self, *parameters: Any) -> Tensor:
        """Draw one reparameterized sample shaped like the parameters.

        Parameters
        ----------
        parameters: tuple[Tensor, ...]
            One tensor per distribution parameter (as one tuple, or unpacked).

        Returns
        -------
        Tensor
            A differentiable sample.
        """

    def variational_log_prob(
        self, sample: Tensor, parameters: tuple[Tensor, ...]
    ) -> Tensor:
        """Elementwise log-probability of ``sample`` under the variational distribution.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        parameters: tuple[Tensor, ...]
            One tensor per distribution parameter.

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        return self.log_prob(sample, parameters)

    def rsample_with_log_prob(
        self, parameters: tuple[Tensor, ...], num_samples: int, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Draw ``num_samples`` stacked samples and their total log-probabilities.

        Parameters
        ----------
        parameters: tuple[Tensor, ...]
            The variational parameters, each of the variable's shape.
        num_samples: int
            ``S``, the number of samples.
        with_log_prob: bool
            Whether to compute the log-probabilities.

        Returns
        -------
        tuple[Tensor, Tensor or None]
            ``(S, *shape)`` samples and their ``(S,)`` log-probabilities (or ``None``).
        """
        expanded = tuple(p.expand(num_samples, *p.shape) for p in parameters)
        samples = self.sample(expanded)
        if not with_log_prob:
            return samples, None
        return samples, _sum_per_sample(self.variational_log_prob(samples, parameters))

    def reset_variational_parameters(
        self,
        module: VIModule,
        variable: str,
        fan_in: int,
        kaiming_scaling: bool = True,
    ) -> None:
        r"""Initialize a variable's variational parameters.

        The primary parameter (named ``mean``, ``mode`` or ``loc``) is initialized like
        a ``torch.nn`` weight: Kaiming-uniform with :math:`a=\sqrt5` for matrices,
        uniform in :math:`\pm 1/\sqrt{\text{fan\_in}}` for vectors. Every other
        parameter
        starts at its default, scaled by :math:`1/\sqrt{\text{fan\_in}}` when
        ``kaiming_scaling`` (added as :math:`\log(1/\sqrt{\text{fan\_in}} + 10^{-5})`
        for ``log_`` parameters).

        Parameters
        ----------
        module: VIModule
            The module owning the parameters.
        variable: str
            The random variable's name.
        fan_in: int
            The layer's fan-in.
        kaiming_scaling: bool, default: True
            Whether to scale the defaults with the fan-in.
        """
        for name, default in zip(
            self.distribution_parameters,
            self._default_variational_parameters,
            strict=True,
        ):
            parameter = getattr(
                module, module.variational_parameter_name(variable, name)
            )
            if name in ("mean", "mode", "loc"):
                _init_like_deterministic_weight(parameter, fan_in)
            elif not kaiming_scaling:
                init.constant_(parameter, float(default))
            else:
                scale = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                if name.startswith("log"):
                    init.constant_(parameter, float(default) + math.log(scale + 1e-5))
                else:
                    init.constant_(parameter, scale * float(default))

    def pyro_distribution(self, parameters: tuple[Tensor, ...]) -> TorchDistribution:
        """The variational distribution as a Pyro distribution (the guide's site).

        Parameters
        ----------
        parameters: tuple[Tensor, ...]
            The variational parameters, each of the variable's shape.

        Returns
        -------
        TorchDistribution
            A reparameterized distribution whose event shape is the variable's shape.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no Pyro form yet, so it cannot serve in a Pyro "
            "guide; override pyro_distribution"
        )


def _init_like_deterministic_weight(parameter: Tensor, fan_in: int) -> None:
    if parameter.dim() < 2:
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        init.uniform_(parameter, -bound, bound)
    else:
        init.kaiming_uniform_(parameter, a=math.sqrt(5))


class PredictiveDistribution(Distribution):
    """Role interface: a distribution of the model output, scored by the losses.

    Subclasses define :meth:`predictive_parameters_from_samples` (the prediction
    estimated from ``S`` sampled outputs) and :meth:`~Distribution.log_prob` (the
    log-likelihood of a target given those parameters).
    """

    @abstractmethod
    def predictive_parameters_from_samples(self, samples: Tensor) -> Any:
        """Estimate the predictive parameters from sampled outputs.

        Parameters
        ----------
        samples: Tensor
            Model outputs of shape ``(S, *)``.

        Returns
        -------
        Any
            The predictive parameters, shape ``(*)`` each.
        """

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Log-likelihood of ``reference`` given predictive parameters.

        Parameters
        ----------
        reference: Tensor
            The targets.
        parameters: Any
            As returned by :meth:`predictive_parameters_from_samples`.

        Returns
        -------
        Tensor
            The log-likelihood of each target.
        """
        return self.log_prob(reference, parameters)

    def log_prob_from_samples(self, reference: Tensor, samples: Tensor) -> Tensor:
        """Log-likelihood of ``reference`` given ``S`` sampled outputs.

        Parameters
        ----------
        reference: Tensor
            The targets, shape ``(*)``.
        samples: Tensor
            Model outputs, shape ``(S, *)``.

        Returns
        -------
        Tensor
            The log-likelihood of each target.
        """
        parameters = self.predictive_parameters_from_samples(samples)
        return self.log_prob_from_parameters(reference, parameters)
