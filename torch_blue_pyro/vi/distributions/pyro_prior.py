"""PyroPrior: any ``pyro.distributions`` distribution as the prior of a layer."""

from __future__ import annotations

import pyro.distributions as pyro_dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor

from .base import Prior


class PyroPrior(Prior):
    r"""Use a Pyro (or torch) distribution as the elementwise prior of a variable.

    ``prior=PyroPrior(dist.Laplace(0.0, 1.0))`` puts an independent Laplace prior on
    every element of each random variable of a layer. The distribution's batch shape
    must broadcast to the variable's shape (a scalar distribution always does); its
    event shape must be empty. Layers also accept the distribution directly,
    ``prior=dist.Laplace(0.0, 1.0)``, and wrap it in this class.

    In torch_blue mode the log-prior of the ``S`` stacked samples is
    :math:`\sum_i \log p(w_i)` through the distribution's ``log_prob``; under
    Pyro's inference machinery the variable's site is the distribution expanded to
    the variable's shape, so the model can also be sampled from its prior.

    Parameters
    ----------
    distribution: TorchDistribution
        The elementwise prior, with empty event shape.

    Raises
    ------
    ValueError
        If ``distribution`` has a non-empty event shape.
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
        if distribution.event_shape != ():
            raise ValueError(
                "PyroPrior takes an elementwise distribution (empty event_shape), got "
                f"event_shape {tuple(distribution.event_shape)}; use .to_event(0) "
                "parts or a scalar distribution"
            )
        self.distribution = distribution

    def __repr__(self) -> str:
        return f"PyroPrior({self.distribution!r})"

    def log_prob(self, sample: Tensor, parameters: tuple[Tensor, ...] = ()) -> Tensor:
        """Elementwise log-density of ``sample`` under the distribution.

        Parameters
        ----------
        sample: Tensor
            Values to score; the distribution's batch shape must broadcast to it.
        parameters: tuple[Tensor, ...], default: ()
            Unused: the distribution carries its own parameters.

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        return self.distribution.log_prob(sample)

    def pyro_distribution(
        self, event_shape: torch.Size, reference: Tensor
    ) -> TorchDistribution:
        """The distribution expanded to the variable's shape, as the site's prior.

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
            If the distribution's batch shape does not broadcast to the variable.
        """
        try:
            expanded = self.distribution.expand(torch.Size(event_shape))
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"the prior's batch shape {tuple(self.distribution.batch_shape)} "
                f"does not broadcast to the variable's shape {tuple(event_shape)}"
            ) from error
        return pyro_dist.Independent(expanded, len(event_shape))
