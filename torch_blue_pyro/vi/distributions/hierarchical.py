r"""Hierarchical priors: priors whose parameters are random variables of their own."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import pyro
import pyro.distributions as pyro_dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor
from torch.distributions import biject_to
from torch.nn import Parameter

from ...poutine.runtime import in_pyro_inference
from ...sites import HALF_LOG_TWO_PI, sum_of_squares
from .base import Prior, VariableOwner, _sum_per_sample, _TorchBlueForm
from .pyro_prior import fit_to_variable

_PER = ("variable", "unit", "element")
_LOG_TWO_OVER_PI = math.log(2 / math.pi)


@dataclass(frozen=True)
class HyperVariable:
    r"""One hyper-variable of a :class:`HierarchicalPrior`.

    Parameters
    ----------
    per: {"variable", "unit", "element"}, default: "variable"
        How many values it has: one for the whole random variable (a global scale),
        one per output unit (per entry of the variable's first dimension, shared
        along the others), or one per element. Its shape has one dimension per
        dimension of the variable, of size 1 where it is shared: for a weight of
        shape ``(out, in)``, ``(1, 1)``, ``(out, 1)`` or ``(out, in)``.
    support: Constraint, default: constraints.positive
        Where its values lie. Its variational factor is a normal transformed by
        ``biject_to(support)``: a log-normal for a positive hyper-variable.
    init: float, default: 1.0
        The median of its variational factor at initialization; inside ``support``
        (checked when a layer is built).

    Raises
    ------
    ValueError
        If ``per`` is not one of the three.
    """

    per: str = "variable"
    support: constraints.Constraint = constraints.positive
    init: float = 1.0

    def __post_init__(self) -> None:
        if self.per not in _PER:
            raise ValueError(f"per must be one of {_PER}, got {self.per!r}")

    def shape(self, variable_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The hyper-variable's shape for a random variable of ``variable_shape``.

        Parameters
        ----------
        variable_shape: tuple[int, ...]
            The random variable's shape.

        Returns
        -------
        tuple[int, ...]
            As many dimensions as ``variable_shape``, 1 where the value is shared.
        """
        if self.per == "element":
            return tuple(variable_shape)
        ones = (1,) * len(variable_shape)
        if self.per == "unit" and variable_shape:
            return (variable_shape[0], *ones[1:])
        return ones


class HierarchicalPrior(Prior):
    r"""Base class of priors with hyper-variables that are random variables too.

    A subclass declares its hyper-variables :math:`h_1, \dots, h_k`
    (:meth:`hyper_variables`), the prior of each given those before it
    (:meth:`hyperprior`) and the distribution of the variable given all of them
    (:meth:`conditional`):

    .. math::
        p(w, h) = p(w \mid h_1, \dots, h_k) \prod_{j=1}^k p(h_j \mid h_{<j}).

    A layer given such a prior learns a variational factor for each hyper-variable:
    :math:`q(h_j)` is :math:`\mathcal N(\mu_j, \sigma_j^2)` mapped into the
    hyper-variable's support by ``biject_to(support)`` (a log-normal for a positive
    one), mean-field, with :math:`\mu_j` and :math:`\log\sigma_j` ``nn.Parameter`` s
    of the layer named ``_{variable}_{hyper}_loc`` and ``_{variable}_{hyper}_log_scale``
    (``_weight_tau_loc``), so optimizers and ``state_dict`` see them. The layer's
    variational distribution :math:`q(w)` does not depend on :math:`h`.

    **Pyro mode.** The model draws each hyper-variable as a sample site of its own,
    named after the variable's site (``"0.weight_tau"``), outside any data plate
    like the weights, then the variable's site from :meth:`conditional`. The layer's
    guide (:meth:`~torch_blue_pyro.vi.VIModule.guide`) samples the hyper-sites from
    their variational factors first, so ``Trace_ELBO`` is the ELBO of the whole
    hierarchical model; autoguides learn factors of their own for the hyper-sites.

    **torch_blue mode.** ``model(x, samples=S)`` draws :math:`S` values of each
    hyper-variable from its variational factor along with the weights, and each
    sample's log-probabilities include them:

    .. math::
        \log p = \log p(w \mid h) + \sum_j \log p(h_j \mid h_{<j}), \qquad
        \log q = \log q(w) + \sum_j \log q(h_j),

    so :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss` optimizes the same
    hierarchical ELBO as ``Trace_ELBO``. Predictions draw no hyper-variables: the
    weights' variational distribution does not depend on them. The hyper-terms are
    Pyro log-densities, with their normalization constants.

    :meth:`~Prior.prior_log_prob` and :meth:`~Distribution.log_prob` score the
    variable given values of the hyper-variables (``prior_log_prob(w, tau, lam)``);
    the marginal :math:`p(w)` has no closed form in general, so a site has no Pyro
    distribution of its own (:meth:`pyro_distribution` raises). There is no analytic
    KL divergence; use :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`.
    """

    distribution_parameters: tuple[str, ...] = ()
    _scaling_parameters: tuple[str, ...] = ()
    #: :math:`\sigma_j` of every variational factor at initialization.
    init_scale: ClassVar[float] = 0.1

    @abstractmethod
    def hyper_variables(self) -> dict[str, HyperVariable]:
        """The hyper-variables by name, in the order they are drawn.

        Returns
        -------
        dict[str, HyperVariable]
            E.g. ``{"tau": HyperVariable("variable"), "lambda":
            HyperVariable("element")}``.
        """

    @abstractmethod
    def hyperprior(
        self, name: str, hyper: Mapping[str, Tensor], reference: Tensor
    ) -> torch.distributions.Distribution:
        """The prior of one hyper-variable, given those drawn before it.

        Parameters
        ----------
        name: str
            The hyper-variable.
        hyper: Mapping[str, Tensor]
            The values of the hyper-variables before it.
        reference: Tensor
            Gives the device and dtype of constants.

        Returns
        -------
        torch.distributions.Distribution
            Elementwise (empty event shape); its batch shape broadcasts to the
            hyper-variable's shape.
        """

    @abstractmethod
    def conditional(
        self, hyper: Mapping[str, Tensor]
    ) -> torch.distributions.Distribution:
        """The distribution of the random variable given all hyper-variables.

        Parameters
        ----------
        hyper: Mapping[str, Tensor]
            The value of every hyper-variable, of its :meth:`HyperVariable.shape`,
            possibly with leading batch dimensions (samples or particles).

        Returns
        -------
        torch.distributions.Distribution
            Elementwise, or with an event shape that ends the variable's shape; its
            batch shape broadcasts to the variable's shape (with the leading ones).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------ the layer's side
    def factor_attributes(self, module: VariableOwner, variable: str) -> list[str]:
        """Names of the variational factors' parameters on ``module``, in order.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.

        Returns
        -------
        list[str]
            ``_{variable}_{hyper}_loc`` and ``_{variable}_{hyper}_log_scale`` per
            hyper-variable.
        """
        return [
            module.variational_parameter_name(variable, f"{name}_{parameter}")
            for name in self.hyper_variables()
            for parameter in ("loc", "log_scale")
        ]

    def factor_parameters(
        self, module: VariableOwner, variable: str
    ) -> tuple[Tensor, ...]:
        """The variational factors' parameters, in :meth:`factor_attributes` order.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.

        Returns
        -------
        tuple[Tensor, ...]
            ``(loc, log_scale)`` of each hyper-variable, flattened.
        """
        return tuple(
            getattr(module, name) for name in self.factor_attributes(module, variable)
        )

    def bind(self, module: VariableOwner, variable: str) -> None:
        """Register the variational factors' parameters and check the shapes.

        The shapes are checked by building the hyperpriors and the conditional at
        the factors' initial medians.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.

        Raises
        ------
        ValueError
            If the prior declares no hyper-variables, an ``init`` is outside its
            support, a parameter name is taken, or a hyperprior or the conditional
            does not fit its shape (naming the variable and the shapes).
        """
        reference = module.get_variational_parameters(variable)[0]
        shape = tuple(reference.shape)
        owner = f"{type(module).__name__}'s random variable {variable!r}"
        if not self.hyper_variables():
            raise ValueError(
                f"{type(self).__name__} of {owner} declares no hyper-variables"
            )
        attributes = iter(self.factor_attributes(module, variable))
        hyper: dict[str, Tensor] = {}
        for name, spec in self.hyper_variables().items():
            if not bool(spec.support.check(torch.tensor(float(spec.init)))):
                raise ValueError(
                    f"the init of {type(self).__name__}'s hyper-variable {name!r} of "
                    f"{owner} must lie in its support {spec.support}, got "
                    f"{spec.init!r}"
                )
            hyper_shape = spec.shape(shape)
            for attribute in (next(attributes), next(attributes)):
                if hasattr(module, attribute):
                    raise ValueError(
                        f"{type(self).__name__} of {owner} cannot register its "
                        f"hyper-variable {name!r}: {attribute!r} is taken"
                    )
                empty = torch.empty(
                    hyper_shape, dtype=reference.dtype, device=reference.device
                )
                setattr(module, attribute, Parameter(empty))
            what = f"the hyperprior of {type(self).__name__}'s {name!r} of {owner}"
            fit_to_variable(
                self.hyperprior(name, hyper, reference.data), hyper_shape, what
            )
            hyper[name] = reference.data.new_full(hyper_shape, spec.init)
        what = f"the conditional of {type(self).__name__} of {owner}"
        fit_to_variable(self.conditional(hyper), shape, what)

    def reset_learned_parameters(self, module: VariableOwner, variable: str) -> None:
        r"""Start each factor at its hyper-variable's ``init`` with :attr:`init_scale`.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.
        """
        parameters = iter(self.factor_parameters(module, variable))
        with torch.no_grad():
            for spec in self.hyper_variables().values():
                loc, log_scale = next(parameters), next(parameters)
                median = torch.tensor(float(spec.init), dtype=torch.float64)
                loc.fill_(float(biject_to(spec.support).inv(median)))
                log_scale.fill_(math.log(self.init_scale))

    # ----------------------------------------------------------- torch_blue mode
    def log_prob(self, sample: Tensor, parameters: tuple[Tensor, ...]) -> Tensor:
        r"""Elementwise :math:`\log p(w \mid h)` given values of the hyper-variables.

        Parameters
        ----------
        sample: Tensor
            Values :math:`w` of the random variable.
        parameters: tuple[Tensor, ...]
            One value per hyper-variable, in :meth:`hyper_variables` order,
            broadcastable to ``sample``.

        Returns
        -------
        Tensor
            Shaped like ``sample`` (less the conditional's event dimensions).

        Raises
        ------
        ValueError
            If the number of values is not the number of hyper-variables.
        """
        names = tuple(self.hyper_variables())
        if len(parameters) != len(names):
            raise ValueError(
                f"{type(self).__name__}.log_prob needs one value per hyper-variable "
                f"{names}, got {len(parameters)}"
            )
        hyper = dict(zip(names, parameters, strict=True))
        return self.conditional(hyper).log_prob(sample)

    def sample_hyper(
        self, factors: tuple[Tensor, ...], num_samples: int
    ) -> tuple[dict[str, Tensor], Tensor]:
        r"""Draw ``S`` values of each hyper-variable from its variational factor.

        With :math:`u = \mu + \sigma\varepsilon` and :math:`h = T(u)`,
        :math:`\log q(h) = \sum \bigl(-\tfrac12\varepsilon^2 - \log\sigma
        - \tfrac12\log 2\pi - \log|T'(u)|\bigr)`.

        Parameters
        ----------
        factors: tuple[Tensor, ...]
            The factors' parameters (:meth:`factor_parameters`).
        num_samples: int
            ``S``.

        Returns
        -------
        tuple[dict[str, Tensor], Tensor]
            ``(S, *hyper_shape)`` reparameterized values by name, and their ``(S,)``
            total log variational probability.
        """
        parameters = iter(factors)
        hyper: dict[str, Tensor] = {}
        log_q: list[Tensor] = []
        for name, spec in self.hyper_variables().items():
            loc, log_scale = next(parameters), next(parameters)
            noise = torch.randn(
                (num_samples, *loc.shape), dtype=loc.dtype, device=loc.device
            )
            unconstrained = loc + log_scale.exp() * noise
            transform = biject_to(spec.support)
            value = transform(unconstrained)
            log_density = (
                -0.5 * noise.square()
                - log_scale
                - HALF_LOG_TWO_PI
                - transform.log_abs_det_jacobian(unconstrained, value)
            )
            log_q.append(_sum_per_sample(log_density))
            hyper[name] = value
        return hyper, torch.stack(log_q).sum(dim=0)

    def log_joint_per_sample(
        self, samples: Tensor, hyper: Mapping[str, Tensor]
    ) -> Tensor:
        r"""Per sample, the log joint prior of the variable and the hyper-variables.

        :math:`\log p(w_s \mid h_s) + \sum_j \log p(h_{j,s} \mid h_{<j,s})`.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values of the random variable.
        hyper: Mapping[str, Tensor]
            ``(S, *hyper_shape)`` values of every hyper-variable
            (:meth:`sample_hyper`).

        Returns
        -------
        Tensor
            ``(S,)``.
        """
        shape = tuple(samples.shape[1:])
        name = type(self).__name__
        drawn: dict[str, Tensor] = {}
        log_p: list[Tensor] = []
        for hyper_name, spec in self.hyper_variables().items():
            value = hyper[hyper_name]
            hyperprior = fit_to_variable(
                self.hyperprior(hyper_name, drawn, samples),
                spec.shape(shape),
                f"the hyperprior of {name}'s {hyper_name!r}",
                leading_batch=True,
            )
            log_p.append(hyperprior.log_prob(value))
            drawn[hyper_name] = value
        conditional = fit_to_variable(
            self.conditional(drawn),
            shape,
            f"the conditional of {name}",
            leading_batch=True,
        )
        log_p.append(conditional.log_prob(samples))
        return torch.stack(log_p).sum(dim=0)

    # ----------------------------------------------------------------- Pyro mode
    def pyro_prior(
        self,
        site: str,
        event_shape: torch.Size,
        reference: Tensor,
        hyperparameters: tuple[Tensor, ...] = (),
    ) -> TorchDistribution:
        r"""Draw the hyper-sites ``f"{site}_{hyper}"``; return :math:`p(w \mid h)`.

        In torch_blue mode (no Pyro handler) nothing is drawn: the sampler draws the
        hyper-variables with the weights, and the site's distribution is never
        scored; a placeholder with the variable's event shape is returned.

        Parameters
        ----------
        site: str
            The variable's site name.
        event_shape: torch.Size
            The variable's shape.
        reference: Tensor
            Gives the device and dtype of constants.
        hyperparameters: tuple[Tensor, ...], default: ()
            Unused: the model draws the hyper-variables from their priors.

        Returns
        -------
        TorchDistribution
            :meth:`conditional`, with the variable's event shape.

        Raises
        ------
        ValueError
            If a hyperprior or the conditional does not fit its shape, naming the
            site and the shapes.
        """
        shape = tuple(event_shape)
        if not in_pyro_inference():
            return _TorchBlueForm(
                f"the hierarchical prior {type(self).__name__}",
                torch.Size(shape),
                self._no_marginal,
            )
        hyper: dict[str, Tensor] = {}
        for name, spec in self.hyper_variables().items():
            hyper_site = f"{site}_{name}"
            hyperprior = fit_to_variable(
                self.hyperprior(name, hyper, reference),
                spec.shape(shape),
                f"the hyperprior of site {hyper_site!r}",
                leading_batch=True,
            )
            hyper[name] = pyro.sample(hyper_site, hyperprior)
        return fit_to_variable(
            self.conditional(hyper),
            shape,
            f"the conditional prior of site {site!r}",
            leading_batch=True,
        )

    def pyro_hyper_guide(
        self, site: str, hyperparameters: tuple[Tensor, ...]
    ) -> dict[str, TorchDistribution]:
        """The variational factors of the hyper-sites.

        Parameters
        ----------
        site: str
            The variable's site name.
        hyperparameters: tuple[Tensor, ...]
            The factors' parameters (:meth:`factor_parameters`).

        Returns
        -------
        dict[str, TorchDistribution]
            ``{f"{site}_{hyper}": T(Normal(loc, exp(log_scale)))}``, each one event
            of the hyper-variable's shape.
        """
        parameters = iter(hyperparameters)
        guides: dict[str, TorchDistribution] = {}
        for name, spec in self.hyper_variables().items():
            loc, log_scale = next(parameters), next(parameters)
            factor = pyro_dist.TransformedDistribution(
                pyro_dist.Normal(loc, log_scale.exp()), [biject_to(spec.support)]
            )
            guides[f"{site}_{name}"] = factor.to_event(loc.dim())
        return guides

    def _no_marginal(self, value: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} is hierarchical: the marginal of the variable has "
            "no closed form. Under a Pyro handler its site is the conditional given "
            "the hyper-sites; in torch_blue mode the layer's log-probabilities include "
            "the hyper-variables"
        )


class Horseshoe(HierarchicalPrior):
    r"""The horseshoe prior: shrinks most weights to zero and leaves a few large.

    .. math::
        \tau \sim \mathrm{C}^+(0, \tau_0), \qquad
        \lambda_i \sim \mathrm{C}^+(0, 1), \qquad
        w_i \mid \tau, \lambda_i \sim \mathcal N(0, \tau^2 \lambda_i^2)

    (Carvalho, Polson and Scott, 2010), with :math:`\mathrm{C}^+` the half-Cauchy
    distribution and :math:`\tau_0` = ``global_scale``. The global scale
    :math:`\tau` is shared by the whole variable; the local scales :math:`\lambda`
    are one per element, or one per output unit (a row of a weight: the unit's
    incoming weights shrink together, Ghosh, Yao and Doshi-Velez, 2019). The
    half-Cauchy's heavy tail lets a weight escape the shrinkage that its small
    :math:`\tau` imposes on the rest.

    A :class:`HierarchicalPrior`: the hyper-sites are ``"<site>_tau"`` and
    ``"<site>_lambda"`` (``"0.weight_tau"``, ``"0.weight_lambda"``), each with a
    learned log-normal variational factor starting at its prior median
    (:math:`\tau_0` and 1). With ``rescale_prior=True`` the layer scales
    :math:`\tau_0` by :math:`1/\sqrt{3\,\text{fan\_in}}`.

    Parameters
    ----------
    global_scale: float, default: 1.0
        :math:`\tau_0`, the scale of the global shrinkage; > 0.
    local: {"element", "unit"}, default: "element"
        One local scale per element or per output unit.

    Raises
    ------
    ValueError
        If ``global_scale`` is not a positive finite number or ``local`` is unknown.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> layer = vi.VILinear(4, 3, prior=vi.distributions.Horseshoe(0.1))
    >>> layer(torch.randn(8, 4), samples=2).log_probs.shape
    torch.Size([2, 2])
    """

    _scaling_parameters = ("global_scale",)

    def __init__(self, global_scale: float = 1.0, local: str = "element") -> None:
        scale = float(global_scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(
                f"global_scale must be a positive finite number, got {global_scale!r}"
            )
        if local not in ("element", "unit"):
            raise ValueError(f"local must be 'element' or 'unit', got {local!r}")
        self.global_scale = scale
        self.local = local

    def __repr__(self) -> str:
        return f"Horseshoe(global_scale={self.global_scale:g}, local={self.local!r})"

    def hyper_variables(self) -> dict[str, HyperVariable]:
        r"""The global scale ``"tau"`` and the local scales ``"lambda"``.

        Returns
        -------
        dict[str, HyperVariable]
            Both positive, starting at their prior medians :math:`\tau_0` and 1.
        """
        return {
            "tau": HyperVariable("variable", constraints.positive, self.global_scale),
            "lambda": HyperVariable(self.local, constraints.positive, 1.0),
        }

    def hyperprior(
        self, name: str, hyper: Mapping[str, Tensor], reference: Tensor
    ) -> torch.distributions.Distribution:
        r"""The half-Cauchy priors of the scales.

        :math:`\mathrm{C}^+(0, \tau_0)` for ``"tau"``, :math:`\mathrm{C}^+(0, 1)` for
        ``"lambda"``.

        Parameters
        ----------
        name: str
            ``"tau"`` or ``"lambda"``.
        hyper: Mapping[str, Tensor]
            Unused: the scales are independent a priori.
        reference: Tensor
            Gives the device and dtype.

        Returns
        -------
        torch.distributions.Distribution
            A scalar half-Cauchy distribution.
        """
        scale = self.global_scale if name == "tau" else 1.0
        return pyro_dist.HalfCauchy(reference.new_tensor(scale))

    def log_joint_per_sample(
        self, samples: Tensor, hyper: Mapping[str, Tensor]
    ) -> Tensor:
        r"""Per sample, the log joint prior of weight and scales in closed form.

        :math:`\log p(w \mid \tau, \lambda) + \log p(\tau) + \log p(\lambda)`.
        With :math:`s_i = \tau\lambda_i` over the :math:`n` elements,

        .. math::
            -\tfrac12\sum_i (w_i / s_i)^2 - \sum_i \log s_i
            - \tfrac n2\log 2\pi
            + \log\tfrac{2}{\pi\tau_0} - \log\bigl(1 + (\tau/\tau_0)^2\bigr)
            + \sum_j \bigl(\log\tfrac2\pi - \log(1 + \lambda_j^2)\bigr),

        the value of the generic :meth:`HierarchicalPrior.log_joint_per_sample` with
        the normal and half-Cauchy densities written out: a pass or two over the
        ``S x n`` values, where the distributions' ``log_prob`` (and their support
        checks) take several.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values of the random variable.
        hyper: Mapping[str, Tensor]
            ``(S, *hyper_shape)`` values of ``"tau"`` and ``"lambda"``.

        Returns
        -------
        Tensor
            ``(S,)``.
        """
        tau, local = hyper["tau"], hyper["lambda"]
        numel = samples[0].numel()
        scale = tau * local  # the shape of the local scales, broadcast over the rest
        repeats = numel // scale[0].numel()  # elements sharing each scale
        log_conditional = (
            -0.5 * sum_of_squares(samples / scale, samples.dim() - 1)
            - repeats * _sum_per_sample(scale.log())
            - numel * HALF_LOG_TWO_PI
        )
        log_global = -_sum_per_sample(
            torch.log1p((tau / self.global_scale).square())
        ) + (_LOG_TWO_OVER_PI - math.log(self.global_scale))
        log_local = _sum_per_sample(_LOG_TWO_OVER_PI - torch.log1p(local.square()))
        return log_conditional + log_global + log_local

    def conditional(
        self, hyper: Mapping[str, Tensor]
    ) -> torch.distributions.Distribution:
        r""":math:`\mathcal N(0, \tau^2\lambda^2)`, elementwise.

        Parameters
        ----------
        hyper: Mapping[str, Tensor]
            ``"tau"`` and ``"lambda"``.

        Returns
        -------
        torch.distributions.Distribution
            A normal distribution.
        """
        scale = hyper["tau"] * hyper["lambda"]
        return pyro_dist.Normal(scale.new_zeros(()), scale)
