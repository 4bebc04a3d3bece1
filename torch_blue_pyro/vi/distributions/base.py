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
and a bridge to Pyro (``pyro_distribution``; :meth:`Prior.pyro_prior` and
:meth:`Prior.pyro_hyper_guide` for hierarchical priors). Subclasses may override these
with closed forms; the defaults are built from torch_blue's methods, so a user's
torch_blue distribution works unchanged.

Both generations of torch_blue's user API work:

* **torch_blue 1.1**: subclass the role interfaces and define ``log_prob(sample,
  parameters)`` (and ``sample(parameters)`` for a variational distribution), with the
  parameters as one tuple.
* **torch_blue 0.9**: subclass :class:`Distribution`, declare the roles with the flags
  ``is_prior``, ``is_variational_distribution`` and ``is_predictive_distribution``,
  and define ``prior_log_prob(sample, *required)``, ``sample(*parameters)`` and
  ``variational_log_prob(sample, *parameters)`` with unpacked parameters. The class
  then subclasses the declared roles, and those methods accept the tuple style too. A
  flag set to ``False`` removes a role the class would otherwise inherit.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol
from warnings import warn

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.nn import init

from ...amp import accumulation_dtype
from ..torch_blue_0_9 import (
    ROLES,
    RoleFlag,
    RoleMeta,
    as_parameter_tuple,
    role_hook,
)


class VariableOwner(Protocol):
    """What a distribution may ask of the module whose random variable it serves.

    :class:`~torch_blue_pyro.vi.VIModule` is the one implementation; naming only
    this much keeps the distributions below ``vi.base`` in the import graph. A
    distribution reads and registers the module's parameters by the names
    :meth:`variational_parameter_name` gives (``getattr`` / ``setattr``).
    """

    def variational_parameter_name(
        self, variable: str, variational_parameter: str
    ) -> str:
        """The attribute name of one variational parameter of ``variable``."""
        ...

    def get_variational_parameters(self, variable: str) -> list[Tensor]:
        """The variational parameters of ``variable``, in its distribution's order."""
        ...


def _sum_per_sample(values: Tensor) -> Tensor:
    """Sum ``(S, *shape)`` values over everything but the leading sample dimension.

    Accumulated in at least ``float32`` (see
    :func:`~torch_blue_pyro.amp.accumulation_dtype`).
    """
    flat = values.reshape(values.shape[0], -1)
    return flat.sum(dim=1, dtype=accumulation_dtype(values.dtype))


def _total(values: Tensor) -> Tensor:
    """The sum of all ``values``, accumulated in at least ``float32``."""
    return values.sum(dtype=accumulation_dtype(values.dtype))


def _sum_each_sample(score: Callable[[Tensor], Tensor], samples: Tensor) -> Tensor:
    """Total log-probability of each of ``S`` stacked samples under ``score``.

    ``score`` should be elementwise, which sums in one pass; a score that reduces
    (torch_blue 0.9 allowed returning a total) is applied to each sample alone.
    """
    values = score(samples)
    if values.shape == samples.shape:
        return _sum_per_sample(values)
    dtype = accumulation_dtype(values.dtype)
    return torch.stack([score(sample).sum(dtype=dtype) for sample in samples])


class Distribution(metaclass=RoleMeta):
    """Base class of all torch_blue distributions.

    Subclass one or more of :class:`Prior`, :class:`VariationalDistribution` and
    :class:`PredictiveDistribution`, which declare the roles the distribution can
    play (or, in torch_blue 0.9's style, subclass this and set the role flags).

    ``distribution_parameters`` names the parameters that define the distribution;
    the first is the *primary* one, the closest to a deterministic weight (a mean).
    Parameters that live on the log scale start with ``log_``.

    As in torch_blue, :meth:`__post_init__` runs after ``__init__``.
    """

    distribution_parameters: tuple[str, ...]

    def __post_init__(self) -> None:
        """Check the instance after ``__init__``: it must play at least one role.

        Raises
        ------
        TypeError
            If the class subclasses none of the role interfaces.
        """
        if not isinstance(
            self, (Prior, VariationalDistribution, PredictiveDistribution)
        ):
            raise TypeError(
                f"{type(self).__name__} plays no role: subclass Prior, "
                "VariationalDistribution or PredictiveDistribution (or set torch_blue "
                "0.9's is_prior, is_variational_distribution or "
                "is_predictive_distribution to True)"
            )

    @property
    def primary_parameter(self) -> str:
        """The parameter closest to a deterministic weight (typically the mean)."""
        return self.distribution_parameters[0]

    #: Whether the distribution can be a prior (torch_blue 0.9's role flag; a bool
    #: on the class and on instances).
    is_prior = RoleFlag("is_prior")
    #: Whether it can be a variational distribution (torch_blue 0.9's flag).
    is_variational_distribution = RoleFlag("is_variational_distribution")
    #: Whether it can be a predictive distribution (torch_blue 0.9's flag).
    is_predictive_distribution = RoleFlag("is_predictive_distribution")

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

    @abstractmethod
    def log_prob(self, sample: Tensor, parameters: tuple[Tensor, ...]) -> Tensor:
        """Elementwise log-probability (see :meth:`Distribution.log_prob`).

        A prior must implement it: a subclass that does not cannot be instantiated
        (``TypeError``, as in torch_blue 1.1).
        """

    @classmethod
    def __subclasshook__(cls, subclass: type) -> Any:
        return role_hook(cls, "is_prior", subclass)

    def get_parameters(self) -> tuple[Tensor, ...]:
        """The values of the prior's parameters, in ``distribution_parameters`` order.

        Returns
        -------
        tuple[Tensor, ...]
            One value per distribution parameter.
        """
        return tuple(getattr(self, name) for name in self.distribution_parameters)

    def prior_log_prob(self, sample: Tensor, *hyperparameters: Any) -> Tensor:
        """Elementwise log-probability of ``sample`` under the prior.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        hyperparameters: tuple[Tensor, ...], default: ()
            The values of ``_required_parameters`` for hierarchical priors, as one
            tuple (torch_blue 1.1) or unpacked (``prior_log_prob(sample, mean)``, as
            torch_blue 0.9 and 1.1's layers call it).

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        extra = as_parameter_tuple(hyperparameters)
        return self.log_prob(sample, (*self.get_parameters(), *extra))

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
        return _sum_each_sample(
            lambda values: self.prior_log_prob(values, hyperparameters), samples
        )

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

    def reset_parameters_to_prior(self, module: VariableOwner, variable: str) -> None:
        """Set a variable's variational parameters to the prior's values.

        Used by the ``prior_initialization`` option. The default only warns;
        priors that support it override this.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.
        """
        warn(
            f"{type(self).__name__} does not implement reset_parameters_to_prior, so "
            "prior_initialization leaves the parameters as they are.",
            stacklevel=2,
        )

    def bind(self, module: VariableOwner, variable: str) -> None:
        """Fit the prior to one random variable of a layer that is being built.

        The layer calls this once per random variable, after creating its variational
        parameters and before initializing them. A prior checks here that it fits the
        variable's shape, and registers on ``module`` any ``nn.Parameter`` s it learns
        itself (those of :class:`~torch_blue_pyro.vi.distributions.HierarchicalPrior`'s
        hyper-variables). The default does nothing.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.
        """

    def reset_learned_parameters(self, module: VariableOwner, variable: str) -> None:
        """(Re-)initialize the parameters that :meth:`bind` registered on ``module``.

        Called by :meth:`~torch_blue_pyro.vi.VIModule.reset_variational_parameters`.
        The default, for priors that learn nothing, does nothing.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.
        """

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

        Raises
        ------
        NotImplementedError
            In this base class: :meth:`pyro_prior` then scores the site with
            :meth:`prior_log_prob` instead.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no Pyro form of its own; override "
            "pyro_distribution to give one"
        )

    def pyro_prior(
        self,
        site: str,
        event_shape: torch.Size,
        reference: Tensor,
        hyperparameters: tuple[Tensor, ...] = (),
    ) -> TorchDistribution:
        """The distribution of the variable's sample site, hyper-sites drawn first.

        This is what the variable's :class:`~pyro.nn.PyroSample` site asks for, in
        both modes (in torch_blue mode the draw itself comes from the variational
        distribution). The default is :meth:`pyro_distribution`; for a prior that
        does not override that (a user's torch_blue prior, say) it is a score-only
        distribution whose log-density is :meth:`prior_log_prob`, so the model runs
        in torch_blue mode and under Pyro with a guide, but cannot be sampled from
        its prior. A hierarchical prior overrides this method: under
        Pyro's inference machinery it draws its hyper-variables as sample sites of
        their own, named after ``site``, and returns the variable's conditional
        distribution given them; in torch_blue mode (no Pyro handler) it conditions
        on ``hyperparameters``, the point estimates torch_blue uses, and draws
        nothing.

        Parameters
        ----------
        site: str
            The variable's site name, e.g. ``"0.weight"``.
        event_shape: torch.Size
            The shape of the random variable.
        reference: Tensor
            Gives the device and dtype.
        hyperparameters: tuple[Tensor, ...], default: ()
            The layer's values of ``_required_parameters``.

        Returns
        -------
        TorchDistribution
            A distribution with ``event_shape``.
        """
        if type(self).pyro_distribution is Prior.pyro_distribution:
            return _TorchBlueForm(
                f"the prior {type(self).__name__}",
                torch.Size(event_shape),
                lambda value: self.prior_log_prob(value, hyperparameters),
            )
        return self.pyro_distribution(event_shape, reference)

    def pyro_hyper_guide(
        self, site: str, hyperparameters: tuple[Tensor, ...]
    ) -> dict[str, TorchDistribution]:
        """The guide's distributions of the hyper-sites :meth:`pyro_prior` draws.

        The guide of a layer
        (:meth:`~torch_blue_pyro.vi.VIModule.guide`) samples these before the
        variable itself. The default, for priors without hyper-variables, is none.

        Parameters
        ----------
        site: str
            The variable's site name.
        hyperparameters: tuple[Tensor, ...]
            The layer's values of ``_required_parameters``.

        Returns
        -------
        dict[str, TorchDistribution]
            Guide distribution by hyper-site name, in sampling order.
        """
        return {}


class VariationalDistribution(Distribution):
    """Role interface: a distribution usable as a variational distribution.

    Its ``distribution_parameters`` become ``nn.Parameter`` s of the layer (named by
    :meth:`~torch_blue_pyro.vi.VIModule.variational_parameter_name`), initialized
    from ``_default_variational_parameters``; the primary parameter is initialized like
    a deterministic layer's weight instead.
    """

    @classmethod
    def __subclasshook__(cls, subclass: type) -> Any:
        return role_hook(cls, "is_variational_distribution", subclass)

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

    def variational_log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log-probability of ``sample`` under the variational distribution.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        parameters: tuple[Tensor, ...]
            One tensor per distribution parameter (as one tuple, or unpacked).

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        return self.log_prob(sample, as_parameter_tuple(parameters))

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
        return samples, _sum_each_sample(
            lambda values: self.variational_log_prob(values, parameters), samples
        )

    def reset_variational_parameters(
        self,
        module: VariableOwner,
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
        module: VariableOwner
            The module owning the parameters.
        variable: str
            The random variable's name.
        fan_in: int
            The layer's fan-in.
        kaiming_scaling: bool, default: True
            Whether to scale the defaults with the fan-in.
        """
        defaults = self._default_variational_parameters
        if defaults is None or len(defaults) != len(self.distribution_parameters):
            raise ValueError(
                f"{type(self).__name__} must give one default per distribution "
                f"parameter {tuple(self.distribution_parameters)} in "
                f"_default_variational_parameters, got {defaults!r}"
            )
        for name, default in zip(self.distribution_parameters, defaults, strict=True):
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

        The default draws with :meth:`sample` (reparameterized if that is) and
        scores with :meth:`variational_log_prob`, so normalization constants follow
        :func:`~torch_blue_pyro.vi.utils.use_norm_constants`; subclasses override it
        with a Pyro distribution.

        Parameters
        ----------
        parameters: tuple[Tensor, ...]
            The variational parameters, each of the variable's shape.

        Returns
        -------
        TorchDistribution
            A distribution whose event shape is the variable's shape.
        """
        shape = parameters[0].shape

        def draw(sample_shape: torch.Size) -> Tensor:
            return self.sample(
                tuple(p.expand(*sample_shape, *shape) for p in parameters)
            )

        return _TorchBlueForm(
            f"the variational distribution {type(self).__name__}",
            shape,
            lambda value: self.variational_log_prob(value, parameters),
            draw,
        )


class _TorchBlueForm(TorchDistribution):
    """A torch_blue distribution seen by Pyro: scored by its torch_blue log-density.

    One event of ``event_shape``; ``draw`` (if given) samples it, otherwise sampling
    raises. Used for distributions without a Pyro form of their own.
    """

    arg_constraints: ClassVar[dict[str, Any]] = {}
    support = constraints.real

    def __init__(
        self,
        what: str,
        event_shape: torch.Size,
        score: Callable[[Tensor], Tensor],
        draw: Callable[[torch.Size], Tensor] | None = None,
    ) -> None:
        self._what, self._score, self._draw = what, score, draw
        super().__init__(torch.Size(), event_shape, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        """Whether the distribution can draw (reparameterized if ``sample`` is)."""
        return self._draw is not None

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        """Draw with the torch_blue distribution's ``sample``."""
        if self._draw is None:
            raise NotImplementedError(
                f"{self._what} has no Pyro form to draw from, only its log-density: "
                "run the model with a guide that supplies the values, or override "
                "pyro_distribution"
            )
        return self._draw(torch.Size(sample_shape))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        """Draw without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """The torch_blue log-density of ``value``, summed over the event."""
        event_dim = len(self.event_shape)
        batch_shape = value.shape[: value.dim() - event_dim]
        flat = value.reshape(-1, *self.event_shape)
        return _sum_each_sample(self._score, flat).reshape(batch_shape)


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

    @classmethod
    def __subclasshook__(cls, subclass: type) -> Any:
        return role_hook(cls, "is_predictive_distribution", subclass)

    @abstractmethod
    def predictive_parameters_from_samples(self, sample: Tensor) -> Any:
        """Estimate the predictive parameters from sampled outputs.

        Parameters
        ----------
        sample: Tensor
            Model outputs of shape ``(S, *)`` (named as in torch_blue 1.1's base
            class; its distributions call it ``samples``).

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


ROLES.update(
    is_prior=Prior,
    is_variational_distribution=VariationalDistribution,
    is_predictive_distribution=PredictiveDistribution,
)
