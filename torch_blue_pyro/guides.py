"""Guides: the variational distributions of a model's layers as a Pyro guide."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import pyro
from pyro.distributions import TorchDistribution
from torch import Tensor

from .poutine.estimators import GAUSSIAN_DRAW
from .poutine.runtime import local_param


class GuideSite(Protocol):
    """What a guide needs from a random variable."""

    name: str

    def named_variational_parameters(self) -> Iterable[tuple[str, Tensor]]:
        """The variational parameters with their site names."""
        ...

    def variational_pyro_distribution(self) -> TorchDistribution:
        """The variational distribution with the variable's event shape."""
        ...

    def gaussian_parameters(self) -> tuple[Tensor, Tensor] | None:
        """Location and scale of a Gaussian variational distribution, else ``None``."""
        ...

    def hyper_guide_distributions(self) -> Mapping[str, TorchDistribution]:
        """Guide distributions of the prior's hyper-sites by name (none usually)."""
        ...


def sample_from_variational(sites: Iterable[GuideSite]) -> dict[str, Tensor]:
    """Run a mean-field guide: each site drawn from its own variational distribution.

    A site whose prior is hierarchical first draws the prior's hyper-sites from
    their guide distributions (for
    :class:`~torch_blue_pyro.vi.distributions.BasicQuietPrior`, a point mass at the
    layer's variational mean; for a
    :class:`~torch_blue_pyro.vi.distributions.HierarchicalPrior`, the variational
    factors the layer learns). The variational parameters (the factors' too) are
    announced with :func:`~torch_blue_pyro.poutine.local_param`, so an optimizer
    driven by Pyro (e.g. :class:`pyro.infer.SVI`) updates the layers' own
    ``nn.Parameter`` s.

    Parameters
    ----------
    sites: Iterable[GuideSite]
        The random variables to draw.

    Returns
    -------
    dict[str, Tensor]
        The drawn value of each site (and hyper-site), by name.
    """
    values: dict[str, Tensor] = {}
    for site in sites:
        for name, parameter in site.named_variational_parameters():
            local_param(name, parameter)
        for name, hyper_guide in site.hyper_guide_distributions().items():
            values[name] = pyro.sample(name, hyper_guide)
        gaussian = site.gaussian_parameters()
        infer = {} if gaussian is None else {GAUSSIAN_DRAW: gaussian}
        values[site.name] = pyro.sample(
            site.name,
            site.variational_pyro_distribution(),
            infer=infer,  # type: ignore[arg-type]
        )
    return values
