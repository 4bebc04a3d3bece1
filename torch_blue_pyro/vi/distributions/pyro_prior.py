"""PyroPrior: any ``pyro.distributions`` distribution as the prior of a layer."""

from __future__ import annotations

import pyro.distributions as pyro_dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor

from .base import Prior, VariableOwner, _sum_per_sample


def fit_to_variable(
    distribution: torch.distributions.Distribution,
    shape: tuple[int, ...],
    what: str,
    leading_batch: bool = False,
) -> TorchDistribution:
    """A distribution as the distribution of a variable of ``shape``: one event.

    The distribution's event shape must be the trailing dimensions of ``shape``
    (empty for an elementwise distribution); its batch shape must broadcast to the
    rest of ``shape``.

    Parameters
    ----------
    distribution: torch.distributions.Distribution
        The (elementwise or event-shaped) distribution.
    shape: tuple[int, ...]
        The variable's shape.
    what: str
        Names the distribution in error messages (``"the prior of '0.weight'"``).
    leading_batch: bool, default: False
        Allow batch dimensions left of ``shape`` (those of plates, such as the
        particle plate): they stay batch dimensions.

    Returns
    -------
    TorchDistribution
        Event shape ``shape``; batch shape the leading batch dimensions, if any.

    Raises
    ------
    ValueError
        If the event shape is not the trailing dimensions of ``shape``, or the batch
        shape does not broadcast to the rest of it, naming ``what`` and both shapes.
    """
    event = tuple(distribution.event_shape)
    batch = tuple(distribution.batch_shape)
    split = len(shape) - len(event)
    if split < 0 or tuple(shape[split:]) != event:
        raise ValueError(
            f"{what} has event shape {event}, which is not the trailing dimensions "
            f"of the variable's shape {tuple(shape)}: give an elementwise "
            "distribution (empty event shape) or one whose event shape ends the "
            "variable's shape"
        )
    target = tuple(shape[:split])
    try:
        full = tuple(torch.broadcast_shapes(batch, target))
    except RuntimeError:
        full = ()
    leading = full[: len(full) - len(target)]
    if full[len(leading) :] != target or (leading and not leading_batch):
        raise ValueError(
            f"{what} has batch shape {batch}, which does not broadcast to the "
            f"variable's shape {tuple(shape)} (event shape {event}): its batch shape "
            f"must broadcast to {target}"
        )
    expanded = distribution.expand(torch.Size(full))
    return pyro_dist.Independent(expanded, len(target))


class PyroPrior(Prior):
    r"""Use a Pyro (or torch) distribution as the prior of a variable.

    ``prior=PyroPrior(dist.Laplace(0.0, 1.0))`` puts an independent Laplace prior on
    every element of each random variable of a layer. The distribution's batch shape
    must broadcast to the variable's shape (a scalar distribution always does). Its
    event shape is usually empty; a non-empty one must be the trailing dimensions of
    the variable's shape: ``dist.MultivariateNormal(torch.zeros(8), cov)`` is a prior
    on each row of an ``(out, 8)`` weight. Layers check this when they are built and
    raise a ``ValueError`` naming the variable and both shapes; a variable that
    does not fit (a bias, say) takes a prior of its own from a list,
    ``prior=[weight_prior, bias_prior]``. Layers also accept the distribution
    directly, ``prior=dist.Laplace(0.0, 1.0)``, and wrap it in this class.

    In torch_blue mode the log-prior of the ``S`` stacked samples is
    :math:`\sum_i \log p(w_i)` through the distribution's ``log_prob``; under
    Pyro's inference machinery the variable's site is the distribution expanded to
    the variable's shape, so the model can also be sampled from its prior.

    Parameters
    ----------
    distribution: TorchDistribution
        The prior of each element (or of each event of the trailing dimensions).

    Raises
    ------
    TypeError
        If ``distribution`` is not a ``torch.distributions.Distribution``.
    """

    distribution_parameters: tuple[str, ...] = ()
    _scaling_parameters: tuple[str, ...] = ()

    def __init__(self, distribution: torch.distributions.Distribution) -> None:
        if not isinstance(distribution, torch.distributions.Distribution):
            raise TypeError(
                "PyroPrior takes a pyro.distributions (or torch.distributions) "
                f"distribution, got {type(distribution).__name__}"
            )
        self.distribution = distribution

    def __repr__(self) -> str:
        return f"PyroPrior({self.distribution!r})"

    def bind(self, module: VariableOwner, variable: str) -> None:
        """Check that the distribution fits the variable's shape.

        Parameters
        ----------
        module: VariableOwner
            The module owning the variable.
        variable: str
            The random variable's name.

        Raises
        ------
        ValueError
            If the distribution's shape does not fit the variable's, naming the
            variable and both shapes.
        """
        shape = tuple(module.get_variational_parameters(variable)[0].shape)
        what = (
            f"the prior {self.distribution!r} of {type(module).__name__}'s random "
            f"variable {variable!r}"
        )
        fit_to_variable(self.distribution, shape, what)

    def log_prob(self, sample: Tensor, parameters: tuple[Tensor, ...] = ()) -> Tensor:
        """Log-density of ``sample`` under the distribution, per element (or event).

        Parameters
        ----------
        sample: Tensor
            Values to score; the distribution's batch shape must broadcast to it.
        parameters: tuple[Tensor, ...], default: ()
            Unused: the distribution carries its own parameters.

        Returns
        -------
        Tensor
            Shaped like ``sample``, less the distribution's event dimensions.
        """
        return self.distribution.log_prob(sample)

    def log_prob_per_sample(
        self, samples: Tensor, hyperparameters: tuple[Tensor, ...] = ()
    ) -> Tensor:
        """Total log-probability of each of ``S`` stacked samples.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values of one random variable.
        hyperparameters: tuple[Tensor, ...], default: ()
            Unused.

        Returns
        -------
        Tensor
            ``(S,)``.
        """
        return _sum_per_sample(self.distribution.log_prob(samples))

    def pyro_prior(
        self,
        site: str,
        event_shape: torch.Size,
        reference: Tensor,
        hyperparameters: tuple[Tensor, ...] = (),
    ) -> TorchDistribution:
        """The distribution expanded to the variable's shape, as the site's prior.

        Parameters
        ----------
        site: str
            The variable's site name, for error messages.
        event_shape: torch.Size
            The variable's shape.
        reference: Tensor
            Unused; the distribution keeps its own device and dtype.
        hyperparameters: tuple[Tensor, ...], default: ()
            Unused.

        Returns
        -------
        TorchDistribution
            Event shape ``event_shape``, empty batch shape.

        Raises
        ------
        ValueError
            If the distribution's shape does not fit the variable's, naming the site
            and both shapes.
        """
        what = f"the prior {self.distribution!r} of site {site!r}"
        return fit_to_variable(self.distribution, tuple(event_shape), what)

    def pyro_distribution(
        self, event_shape: torch.Size, reference: Tensor
    ) -> TorchDistribution:
        """The distribution expanded to the variable's shape.

        Parameters
        ----------
        event_shape: torch.Size
            The variable's shape.
        reference: Tensor
            Unused; the distribution keeps its own device and dtype.

        Returns
        -------
        TorchDistribution
            Event shape ``event_shape``, empty batch shape.

        Raises
        ------
        ValueError
            If the distribution's shape does not fit ``event_shape``.
        """
        return fit_to_variable(
            self.distribution, tuple(event_shape), f"the prior {self.distribution!r}"
        )
