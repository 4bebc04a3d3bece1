r"""AnalyticalKullbackLeiblerLoss: the negative ELBO with the KL term in closed form."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import Module

from ..amp import full_precision
from ..sites import HALF_LOG_TWO_PI, normal_kl
from .base import VIModule
from .distributions import (
    MeanFieldNormal,
    NonBayesian,
    PredictiveDistribution,
    Prior,
    UniformPrior,
    VariationalDistribution,
)
from .kl_loss import _plain, _SampledOutputLoss
from .utils.use_norm_constants import norm_constants_enabled


def _missing_forward(self: KullbackLeiblerModule, *parameters: Any) -> Tensor:
    raise NotImplementedError(
        f"{type(self).__name__} must define forward(*prior_parameters, "
        "*variational_parameters) returning the summed KL divergence"
    )


class KullbackLeiblerModule:
    r"""Base class of closed-form KL divergences :math:`\mathrm{KL}(q \,\|\, p)`.

    A subclass computes the divergence between a prior :math:`p` and a variational
    distribution :math:`q` from their parameters, summed over all elements, in
    ``forward``. :class:`AnalyticalKullbackLeiblerLoss` calls it with the prior's
    parameters (in its ``distribution_parameters`` order, each broadcast to one
    value per element) followed by the variational parameters (in theirs), all
    flattened to one dimension and concatenated over the model's random variables;
    a prior parameter that is ``None`` is passed as zeros. Calling the module,
    ``divergence(prior_parameters, variational_parameters)``, unpacks the two
    sequences into ``forward``.
    """

    forward: Callable[..., Tensor] = _missing_forward

    def __call__(
        self,
        prior_parameters: Iterable[Tensor],
        variational_parameters: Iterable[Tensor],
    ) -> Tensor:
        """Compute the divergence from the two parameter sequences.

        Parameters
        ----------
        prior_parameters: Iterable[Tensor]
            The prior's parameters.
        variational_parameters: Iterable[Tensor]
            The variational distribution's parameters.

        Returns
        -------
        Tensor
            The divergence, summed over all elements.
        """
        return self.forward(*prior_parameters, *variational_parameters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NormalNormalDivergence(KullbackLeiblerModule):
    r"""KL divergence of a normal variational distribution from a normal prior.

    For :class:`~torch_blue_pyro.vi.distributions.MeanFieldNormal` as prior
    :math:`\mathcal N(\mu_p, \sigma_p^2)` and as variational distribution
    :math:`\mathcal N(\mu_q, \sigma_q^2)`, summed over the elements,

    .. math::
        \mathrm{KL}(q \,\|\, p) = \sum \Bigl(\log\frac{\sigma_p}{\sigma_q}
        + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{2\sigma_p^2} - \frac12\Bigr).

    The normalization constants cancel, so
    :func:`~torch_blue_pyro.vi.utils.use_norm_constants` changes nothing. The prior's
    variance has no :math:`\epsilon` here (the Monte-Carlo log prior adds
    ``eps = 1e-10``), as in torch_blue.
    """

    def forward(
        self,
        prior_mean: Tensor | float,
        prior_log_std: Tensor | float,
        variational_mean: Tensor,
        variational_log_std: Tensor,
    ) -> Tensor:
        r"""Compute the divergence.

        Parameters
        ----------
        prior_mean: Tensor or float
            :math:`\mu_p`, broadcastable to the variational parameters.
        prior_log_std: Tensor or float
            :math:`\log\sigma_p`.
        variational_mean: Tensor
            :math:`\mu_q`.
        variational_log_std: Tensor
            :math:`\log\sigma_q`.

        Returns
        -------
        Tensor
            The divergence, a scalar.
        """
        return normal_kl(
            variational_mean, variational_log_std, prior_mean, prior_log_std
        ).sum()


class UniformNormalDivergence(KullbackLeiblerModule):
    r"""KL divergence of a normal variational distribution from the flat prior.

    For :class:`~torch_blue_pyro.vi.distributions.UniformPrior` (:math:`\log p = 0`)
    and :math:`q = \mathcal N(\mu_q, \sigma_q^2)` it is minus the entropy of
    :math:`q`:

    .. math::
        \mathrm{KL}(q \,\|\, p) = \mathbb E_q[\log q] = -\sum\Bigl(\log\sigma_q
        + \frac12\Bigr)\;\Bigl[-\frac n2\log 2\pi\Bigr],

    the bracket only with :func:`~torch_blue_pyro.vi.utils.use_norm_constants`
    (the flat prior's infinite constant is always left out).
    """

    def forward(
        self,
        prior_mean: Tensor | None,
        variational_mean: Tensor,
        variational_log_std: Tensor,
    ) -> Tensor:
        r"""Compute the divergence.

        Parameters
        ----------
        prior_mean: Tensor or None
            Ignored: the flat prior has no parameter that matters.
        variational_mean: Tensor
            :math:`\mu_q`; ignored, the entropy does not depend on it.
        variational_log_std: Tensor
            :math:`\log\sigma_q`.

        Returns
        -------
        Tensor
            The divergence, a scalar.
        """
        divergence = -(variational_log_std + 0.5).sum()
        if norm_constants_enabled():
            divergence = divergence - HALF_LOG_TWO_PI * variational_log_std.numel()
        return divergence


class NonBayesianDivergence(KullbackLeiblerModule):
    r"""Zero: no prior-matching term for point-estimate weights.

    Used for every variable whose variational distribution is
    :class:`~torch_blue_pyro.vi.distributions.NonBayesian`, whatever its prior, as in
    torch_blue. With a
    :class:`~torch_blue_pyro.vi.distributions.NonBayesian` predictive distribution
    the loss is then a plain, non-Bayesian loss. (The Monte-Carlo
    :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss` instead scores such a weight
    under its prior, :math:`-\log p(\hat w)`, which for a normal prior is a weight
    decay; with :class:`~torch_blue_pyro.vi.distributions.UniformPrior` both are
    zero.)
    """

    def forward(self, *parameters: Any) -> Tensor:
        """Return a zero on the device and dtype of the last parameter.

        Parameters
        ----------
        parameters: Any
            Ignored, except the last tensor, which gives device and dtype.

        Returns
        -------
        Tensor
            A scalar zero.
        """
        reference = next(
            (p for p in reversed(parameters) if isinstance(p, Tensor)), None
        )
        if reference is None:
            return torch.zeros(())
        return reference.new_zeros(())


def _detect_divergence(
    prior: Prior, variational_distribution: VariationalDistribution
) -> KullbackLeiblerModule:
    """The built-in divergence for a prior and a variational distribution."""
    if isinstance(variational_distribution, NonBayesian):
        return NonBayesianDivergence()
    if isinstance(variational_distribution, MeanFieldNormal):
        if isinstance(prior, MeanFieldNormal):
            return NormalNormalDivergence()
        if isinstance(prior, UniformPrior):
            return UniformNormalDivergence()
    raise NotImplementedError(
        "AnalyticalKullbackLeiblerLoss has no closed form for prior "
        f"{type(prior).__name__} and variational distribution "
        f"{type(variational_distribution).__name__}; supported are MeanFieldNormal "
        "or UniformPrior with MeanFieldNormal, and any prior with NonBayesian. Pass "
        "divergence_type=..., or use KullbackLeiblerLoss (Monte-Carlo)"
    )


_Variable = tuple[Module, str]


class AnalyticalKullbackLeiblerLoss(_SampledOutputLoss):
    r"""torch_blue's negative ELBO with the KL divergence in closed form.

    With the same data term as :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`,

    .. math::
        \mathcal L = -N \cdot \operatorname{mean}_{\text{batch}}
        \log p\bigl(y \mid \theta(f_1, \dots, f_S)\bigr)
        + \eta\,\mathrm{KL}(q \,\|\, p),

    where the KL divergence is computed from the variational and prior parameters by
    a :class:`KullbackLeiblerModule` rather than estimated from the sampled weights:
    exact, without sampling noise, and cheaper. The loss keeps a reference to
    ``model`` for its parameters and switches its ``return_log_probs`` off (the
    log-probabilities are not needed), as torch_blue does.

    Unless ``divergence_type`` is given, each random variable's divergence is
    detected from its prior and variational distribution:

    | prior | variational distribution | divergence |
    | --- | --- | --- |
    | ``MeanFieldNormal`` | ``MeanFieldNormal`` | :class:`NormalNormalDivergence` |
    | ``UniformPrior`` | ``MeanFieldNormal`` | :class:`UniformNormalDivergence` |
    | any | ``NonBayesian`` | :class:`NonBayesianDivergence` |

    (subclasses included; ``NonBayesian`` as prior is a ``UniformPrior``). Unlike
    torch_blue, a model may mix these combinations, e.g. normal weights with
    ``NonBayesian`` biases: the variables are grouped by divergence. A given
    ``divergence_type`` is used for every variable.

    Parameters
    ----------
    model: torch.nn.Module
        The model to train, a :class:`~torch_blue_pyro.vi.VIModule` or a module
        containing them; its random variables are collected now.
    predictive_distribution: PredictiveDistribution
        The distribution of the outputs, as for
        :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`.
    dataset_size: int, optional
        :math:`N`; may instead be given to :meth:`forward`. If neither is given the
        batch size is used, with a warning.
    divergence_type: KullbackLeiblerModule, optional
        The divergence to use for every variable, e.g. a custom one; detected per
        variable when ``None``.
    heat: float, default: 1.0
        :math:`\eta`; below 1 gives a "cold posterior", 0 drops the KL term.
    track: bool, default: False
        Record the loss components in :attr:`log` (see :meth:`track`).

    Raises
    ------
    UnsupportedDistributionError
        If ``predictive_distribution`` cannot be a predictive distribution.
    NotImplementedError
        If no divergence is known for a variable's prior and variational
        distribution (and ``divergence_type`` is ``None``).
    TypeError
        If ``model`` is not a module or ``divergence_type`` not a
        :class:`KullbackLeiblerModule` instance.
    ValueError
        If the model has no random variables, ``dataset_size`` is not a positive
        int, or ``heat`` is negative or not finite.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> model = vi.VISequential(vi.VILinear(4, 8), torch.nn.ReLU(), vi.VILinear(8, 3))
    >>> loss_fn = vi.AnalyticalKullbackLeiblerLoss(
    ...     model, vi.distributions.Categorical(), dataset_size=100
    ... )
    >>> loss = loss_fn(model(torch.randn(16, 4), samples=5), torch.randint(0, 3, (16,)))
    """

    _log_keys: ClassVar[tuple[str, ...]] = ("data_fitting", "prior_matching")

    def __init__(
        self,
        model: Module,
        predictive_distribution: PredictiveDistribution,
        dataset_size: int | None = None,
        divergence_type: KullbackLeiblerModule | None = None,
        heat: float = 1.0,
        track: bool = False,
    ) -> None:
        super().__init__(predictive_distribution, dataset_size, heat, track)
        if not isinstance(model, Module):
            raise TypeError(
                "model must be the torch.nn.Module to train, got "
                f"{type(model).__name__}"
            )
        if divergence_type is not None and not isinstance(
            divergence_type, KullbackLeiblerModule
        ):
            shown = (
                f"the class {divergence_type.__name__}; pass an instance, "
                f"{divergence_type.__name__}()"
                if isinstance(divergence_type, type)
                else type(divergence_type).__name__
            )
            raise TypeError(
                f"divergence_type must be a KullbackLeiblerModule instance, got {shown}"
            )
        variables = [
            (module, variable)
            for module in model.modules()
            if isinstance(module, VIModule)
            for variable in module._present_variables()
        ]
        if not variables:
            raise ValueError(
                "AnalyticalKullbackLeiblerLoss needs a model with random variables; "
                f"{type(model).__name__} has none"
            )
        groups: dict[type, tuple[KullbackLeiblerModule, list[_Variable]]] = {}
        for module, variable in variables:
            assert isinstance(module, VIModule)
            divergence = divergence_type or _detect_divergence(
                module.prior[variable],  # type: ignore[arg-type]
                module.variational_distribution[variable],  # type: ignore[arg-type]
            )
            groups.setdefault(type(divergence), (divergence, []))[1].append(
                (module, variable)
            )
        self._groups = list(groups.values())
        self.kl_module: KullbackLeiblerModule | None = (
            self._groups[0][0] if len(self._groups) == 1 else None
        )
        """The divergence of every variable; ``None`` if the model mixes several."""
        for submodule in model.modules():
            if isinstance(submodule, VIModule):
                submodule.return_log_probs = False
        self.model = model

    @property
    def divergences(self) -> dict[str, KullbackLeiblerModule]:
        """The divergence used for each random variable, by site name."""
        names = {
            id(module): name
            for name, module in self.model.named_modules()
            if isinstance(module, VIModule)
        }
        return {
            f"{names[id(module)]}.{variable}".lstrip("."): divergence
            for divergence, variables in self._groups
            for module, variable in variables
        }

    def prior_matching(self) -> Tensor:
        r"""The KL divergence :math:`\mathrm{KL}(q \,\|\, p)` of the whole model.

        Returns
        -------
        Tensor
            A scalar, without ``heat``.
        """
        total: Tensor | None = None
        for divergence, variables in self._groups:
            value = divergence(*_flat_parameters(variables))
            total = value if total is None else total + value
        assert total is not None
        return total

    def forward(
        self,
        model_output: Tensor,
        target: Tensor,
        dataset_size: int | None = None,
    ) -> Tensor:
        """Compute the loss.

        Parameters
        ----------
        model_output: Tensor
            ``(S, *)`` sampled outputs of the model (log-probabilities, if any, are
            not used).
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
            If ``dataset_size`` is invalid.
        """
        prior_matching = self.heat * self.prior_matching()
        data_fitting = self._data_fitting(_plain(model_output), target, dataset_size)
        self._record(data_fitting, prior_matching)
        return data_fitting + prior_matching


def _flat_parameters(
    variables: list[_Variable],
) -> tuple[list[Tensor], list[Tensor]]:
    """Prior and variational parameters of ``variables``, flattened and concatenated.

    Each prior parameter is broadcast to one value per element (``None`` to zeros).
    All are in at least ``float32``, the dtype the KL terms are accumulated in.
    """
    prior_columns: list[list[Tensor]] = []
    variational_columns: list[list[Tensor]] = []
    for module, variable in variables:
        assert isinstance(module, VIModule)
        parameters = [
            full_precision(value)
            for value in module.get_variational_parameters(variable)
        ]
        reference = parameters[0]
        prior = module.prior[variable]
        assert prior is not None
        for index, value in enumerate(prior.get_parameters()):
            if index == len(prior_columns):
                prior_columns.append([])
            expanded = (
                reference.new_zeros(())
                if value is None
                else torch.as_tensor(value).to(reference)
            )
            prior_columns[index].append(expanded.expand(reference.shape).reshape(-1))
        for index, value in enumerate(parameters):
            if index == len(variational_columns):
                variational_columns.append([])
            variational_columns[index].append(value.reshape(-1))
    return (
        [torch.cat(column) for column in prior_columns],
        [torch.cat(column) for column in variational_columns],
    )
