"""A random variable of a VIModule, bound to its Pyro site name.

:class:`RandomVariable` is the meeting point of the two worlds: it implements what the
Pyro-side handlers need (:class:`~torch_blue_pyro.poutine.VariationalSite`,
:class:`~torch_blue_pyro.guides.GuideSite`) from a layer's torch_blue distributions and
``nn.Parameter`` s.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor

from .._pyro_compat import module_site_prefix, site_name
from ..sites import normal_kl
from .distributions.base import VariableOwner
from .distributions.hierarchical import HierarchicalPrior
from .distributions.normal import MeanFieldNormal, draw_under_normal_prior
from .utils.errors import UnsupportedDistributionError

if TYPE_CHECKING:
    from .distributions import Prior, VariationalDistribution


class VariableModule(VariableOwner, Protocol):
    """The module a :class:`RandomVariable` belongs to, as this module uses it.

    :class:`~torch_blue_pyro.vi.VIModule` is the one implementation; naming only
    this much keeps ``random_variable`` below ``vi.base`` in the import graph.
    """

    prior: dict[str, Prior | None]
    variational_distribution: dict[str, VariationalDistribution | None]


class RandomVariable:
    """One random variable (``"weight"``, say) of one module.

    Parameters
    ----------
    module: VariableModule
        The module that owns the variable (a VIModule).
    variable: str
        The variable's name in the module.
    """

    __slots__ = ("module", "name", "variable")

    def __init__(self, module: VariableModule, variable: str) -> None:
        self.module = module
        self.variable = variable
        self.name = site_name(module_site_prefix(module), variable)

    @property
    def shape(self) -> tuple[int, ...]:
        """The variable's shape (the event shape of its site)."""
        shape = self.module.__dict__["_variable_shapes"][self.variable]
        assert shape is not None, "variables of shape None have no site"
        return shape

    @property
    def prior(self) -> Prior:
        """The variable's prior."""
        return self.module.prior[self.variable]  # type: ignore[return-value]

    @property
    def variational_distribution(self) -> VariationalDistribution:
        """The variable's variational distribution."""
        return self.module.variational_distribution[self.variable]  # type: ignore[return-value]

    def variational_parameters(self) -> tuple[Tensor, ...]:
        """The variational parameters, in the distribution's parameter order."""
        return tuple(self.module.get_variational_parameters(self.variable))

    def named_variational_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """The variational parameters with their Pyro parameter names.

        Those of a hierarchical prior's hyper-variables (their variational factors)
        come last.
        """
        prefix = module_site_prefix(self.module)
        attributes = [
            self.module.variational_parameter_name(self.variable, parameter)
            for parameter in self.variational_distribution.distribution_parameters
        ]
        if isinstance(self.prior, HierarchicalPrior):
            attributes += self.prior.factor_attributes(self.module, self.variable)
        for attribute in attributes:
            yield site_name(prefix, attribute), getattr(self.module, attribute)

    def _hyperparameters(self) -> tuple[Tensor, ...]:
        """The prior's *hyperparameters*: what its density takes from the layer.

        torch_blue's word for the tensors a prior's log-density takes besides the
        sample: the variational parameters named by the prior's
        ``_required_parameters`` (the quiet prior's mean), or a
        :class:`HierarchicalPrior`'s variational factors. (A hierarchical prior's
        random variables are its *hyper-variables*, sample sites of their own.)
        """
        if isinstance(self.prior, HierarchicalPrior):
            return self.prior.factor_parameters(self.module, self.variable)
        required = self.prior._required_parameters
        if not required:
            return ()
        offered = self.variational_distribution.distribution_parameters
        missing = [parameter for parameter in required if parameter not in offered]
        if missing:
            raise UnsupportedDistributionError(
                f"{type(self.prior).__name__} as prior of {self.name!r} needs the "
                f"variational parameters {tuple(required)}, but "
                f"{type(self.variational_distribution).__name__} has "
                f"{tuple(offered)}"
            )
        name = self.module.variational_parameter_name
        return tuple(
            getattr(self.module, name(self.variable, parameter))
            for parameter in required
        )

    def sample_with_log_probs(
        self, num_samples: int, with_log_probs: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Draw ``S`` stacked variational samples and their log-probabilities.

        Parameters
        ----------
        num_samples: int
            ``S``.
        with_log_probs: bool
            Whether to compute the log-probabilities.

        Returns
        -------
        tuple[Tensor, Tensor or None, Tensor or None]
            ``(S, *shape)`` samples, their ``(S,)`` log prior and ``(S,)`` log
            variational probabilities.
        """
        if with_log_probs and self._normal_under_normal_prior():
            mean, log_std = self.variational_parameters()
            return draw_under_normal_prior(mean, log_std, self.prior, num_samples)  # type: ignore[arg-type]
        value, log_variational = self.variational_distribution.rsample_with_log_prob(
            self.variational_parameters(), num_samples, with_log_probs
        )
        if not with_log_probs:
            return value, None, None
        if isinstance(self.prior, HierarchicalPrior):
            log_prior, log_hyper_variational = self._hierarchical_log_probs(value)
            assert log_variational is not None
            return value, log_prior, log_variational + log_hyper_variational
        log_prior = self.prior.log_prob_per_sample(value, self._hyperparameters())
        return value, log_prior, log_variational

    def _hierarchical_log_probs(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """``(S,)`` log p(w, h) and log q(h), one draw of ``h`` per sample."""
        prior = self.prior
        assert isinstance(prior, HierarchicalPrior)
        hyper, log_variational = prior.sample_hyper(
            self._hyperparameters(), samples.shape[0]
        )
        return prior.log_joint_per_sample(samples, hyper), log_variational

    def _normal_under_normal_prior(self) -> bool:
        """Whether variational distribution and prior are both ``MeanFieldNormal``."""
        return (
            type(self.variational_distribution) is MeanFieldNormal
            and type(self.prior) is MeanFieldNormal
        )

    def current_value(self) -> Tensor:
        """The variable's value in the running forward pass (its site's draw)."""
        value: Tensor = getattr(self.module, self.variable)
        return value

    def sample(self) -> Tensor:
        """One reparameterized draw from the variational distribution."""
        return self.variational_distribution.sample(self.variational_parameters())

    def log_probs(self, sample: Tensor) -> Tensor:
        """``[log prior, log variational]`` of one sample, each summed over elements.

        Under a :class:`HierarchicalPrior` the hyper-variables are drawn once from
        their variational factors and their terms added, as in a forward pass.
        """
        parameters = self.variational_parameters()
        variational = self.variational_distribution.variational_log_prob(
            sample, parameters
        )
        if isinstance(self.prior, HierarchicalPrior):
            log_prior, log_hyper = self._hierarchical_log_probs(sample[None])
            return torch.stack((log_prior[0], variational.sum() + log_hyper[0]))
        prior = self.prior.prior_log_prob(sample, self._hyperparameters())
        return torch.stack((prior.sum(), variational.sum()))

    def gaussian_parameters(self) -> tuple[Tensor, Tensor] | None:
        """``(mean, std)`` if the variational distribution is a ``MeanFieldNormal``."""
        if type(self.variational_distribution) is not MeanFieldNormal:
            return None
        mean, log_std = self.variational_parameters()
        return mean, log_std.exp()

    def closed_form_kl(self) -> Tensor | None:
        r"""Closed-form :math:`\mathrm{KL}(q\,\|\,p)` of two normals, else ``None``.

        .. math::
            \sum \log\frac{\sigma_p}{\sigma_q}
            + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{2\sigma_p^2} - \frac12
        """
        if not self._normal_under_normal_prior():
            return None
        mean, log_std = self.variational_parameters()
        prior = self.prior
        assert isinstance(prior, MeanFieldNormal)
        return normal_kl(mean, log_std, float(prior.mean), float(prior.log_std)).sum()

    def prior_pyro_distribution(self) -> TorchDistribution:
        """The prior as the Pyro distribution of this variable's sample site.

        A hierarchical prior draws its hyper-sites here, before the variable's site.
        """
        # Only the device and dtype matter: ``.data`` keeps the parameter (which
        # requires grad) out of traced programs (``NUTS(..., jit_compile=True)``).
        reference = self.variational_parameters()[0].data
        return self.prior.pyro_prior(
            self.name, torch.Size(self.shape), reference, self._hyperparameters()
        )

    def hyper_site_names(self) -> list[str]:
        """The sites of a :class:`HierarchicalPrior`'s hyper-variables (else none)."""
        if not isinstance(self.prior, HierarchicalPrior):
            return []
        return [f"{self.name}_{hyper}" for hyper in self.prior.hyper_variables()]

    def hyper_guide_distributions(self) -> dict[str, TorchDistribution]:
        """The guide's distributions of the prior's hyper-sites, by site name."""
        return self.prior.pyro_hyper_guide(self.name, self._hyperparameters())

    def variational_pyro_distribution(self) -> TorchDistribution:
        """The variational distribution as a Pyro distribution (the guide's site)."""
        return self.variational_distribution.pyro_distribution(
            self.variational_parameters()
        )


def weight_and_bias(
    module: VariableModule,
) -> tuple[RandomVariable, RandomVariable | None]:
    """The ``weight`` and (``None`` if absent) ``bias`` of a Linear or convolution.

    Parameters
    ----------
    module: VariableModule
        A layer whose random variables are ``("weight", "bias")``.

    Returns
    -------
    tuple[RandomVariable, RandomVariable or None]
        The two variables; the bias is ``None`` where its shape is ``None``.
    """
    bias = None if module.prior.get("bias") is None else RandomVariable(module, "bias")
    return RandomVariable(module, "weight"), bias
