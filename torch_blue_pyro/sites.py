r"""Pyro distributions of whole weight sites, with log-densities in few passes.

A layer's weight is one Pyro sample site whose event shape is the weight's shape. With
a normal prior and the mean-field normal guide of :meth:`VIModule.guide
<torch_blue_pyro.vi.VIModule.guide>`, the two distributions at that site are

* :class:`NormalWeightPrior`: :math:`\mathcal N(m, s^2)` for every element, and
* :class:`NormalWeightPosterior`: :math:`\mathcal N(\mu_i, \sigma_i^2)` per element.

Both behave as ``Normal(...).to_event(weight.dim())`` (same support, samples,
log-density, entropy, :func:`~torch.distributions.kl.kl_divergence`), but compute
the log-density of a whole draw in a pass or two over its values instead of the
dozen that the generic expression takes, which matters at ``S x n_params`` values
per step. The posterior remembers the noise :math:`\varepsilon` of its latest
reparameterized draw :math:`w = \mu + \sigma\varepsilon` and scores that draw as

.. math::
    \log q(w) = -\tfrac12\sum\varepsilon^2 - \sum\log\sigma - \tfrac n2\log 2\pi,

whose total derivative with respect to :math:`(\mu, \sigma)` (through :math:`w`) is
that of the generic expression; any other value is scored by the generic expression.
:func:`~torch.distributions.kl.kl_divergence` is registered in closed form for
posterior and prior, and for an autoguide's ``Normal(...).to_event(...)`` and the
prior, so :class:`~pyro.infer.TraceMeanField_ELBO` needs no sampling for the KL
term. These distributions do not validate their samples: they only ever score
the weights that a guide drew.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from .amp import accumulation_dtype

_Shape = torch.Size | list[int] | tuple[int, ...]
HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
r"""The log-normalizer of a standard normal per element, :math:`\tfrac12\log 2\pi`."""


def sum_of_squares(values: Tensor, event_dim: int) -> Tensor:
    """Sums of squares over the last ``event_dim`` dimensions, in one pass.

    Accumulated in at least ``float32`` (see
    :func:`~torch_blue_pyro.amp.accumulation_dtype`).

    Parameters
    ----------
    values: Tensor
        Any shape.
    event_dim: int
        How many trailing dimensions to sum over.

    Returns
    -------
    Tensor
        ``values.shape[:-event_dim]`` (``values.square()`` for ``event_dim=0``).
    """
    if event_dim == 0:
        return values.square()
    flat = values.reshape(*values.shape[: values.dim() - event_dim], -1)
    dtype = accumulation_dtype(values.dtype)
    return torch.linalg.vector_norm(flat, dim=-1, dtype=dtype).square()


def normal_kl(
    loc: Tensor,
    log_scale: Tensor,
    prior_loc: Tensor | float,
    prior_log_scale: Tensor | float,
) -> Tensor:
    r"""Elementwise KL divergence of one normal from another (the prior).

    For :math:`\mathcal N(\mu, \sigma^2)` from :math:`\mathcal N(m, s^2)`:

    .. math::
        \log\frac{s}{\sigma} + \frac{\sigma^2 + (\mu - m)^2}{2 s^2} - \frac12

    Parameters
    ----------
    loc, log_scale: Tensor
        :math:`\mu` and :math:`\log\sigma`.
    prior_loc, prior_log_scale: Tensor or float
        :math:`m` and :math:`\log s`, broadcastable to ``loc``.

    Returns
    -------
    Tensor
        The broadcast shape of the arguments.
    """
    prior_log_scale = torch.as_tensor(prior_log_scale).to(log_scale)
    spread = torch.exp(2 * log_scale) + (loc - prior_loc).square()
    return (
        prior_log_scale
        - log_scale
        + spread / (2 * torch.exp(2 * prior_log_scale))
        - 0.5
    )


class NormalWeightPosterior(dist.TorchDistribution):
    r"""Mean-field normal over a whole weight: :math:`\mathcal N(\mu_i, \sigma_i^2)`.

    Parameters
    ----------
    loc: Tensor
        :math:`\mu`, of the weight's shape (the event shape).
    scale: Tensor
        :math:`\sigma > 0`, of the same shape.
    batch_shape: torch.Size, default: ()
        Leading batch dimensions, which :meth:`expand` adds (Pyro's particle plates).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    has_rsample = True

    def __init__(
        self, loc: Tensor, scale: Tensor, batch_shape: torch.Size = torch.Size()
    ) -> None:
        if loc.shape != scale.shape:
            raise ValueError(
                f"loc and scale must have one shape, got {tuple(loc.shape)} and "
                f"{tuple(scale.shape)}"
            )
        self.loc = loc
        self.scale = scale
        self._drawn: tuple[Tensor, Tensor, int] | None = None
        super().__init__(torch.Size(batch_shape), loc.shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        """All reals, for each element of the weight."""
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def mean(self) -> Tensor:
        r""":math:`\mu` expanded to batch and event shape."""
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        r""":math:`\sigma^2` expanded to batch and event shape."""
        return self.scale.square().expand(self.batch_shape + self.event_shape)

    def expand(  # type: ignore[override]
        self, batch_shape: torch.Size, _instance: object = None
    ) -> NormalWeightPosterior:
        """The same distribution with batch dimensions ``batch_shape``."""
        return NormalWeightPosterior(self.loc, self.scale, torch.Size(batch_shape))

    def rsample(self, sample_shape: _Shape = torch.Size()) -> Tensor:
        r"""A reparameterized draw :math:`\mu + \sigma\varepsilon`, remembered."""
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        value = torch.addcmul(self.loc, self.scale, noise)
        self._drawn = (value, noise, self.loc._version)
        return value

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-density summed over the weight's elements (its event dimensions)."""
        event_dim = len(self.event_shape)
        drawn = self._drawn
        if drawn is not None and value is drawn[0] and self.loc._version == drawn[2]:
            squares = sum_of_squares(drawn[1], event_dim)
        else:
            squares = sum_of_squares((value - self.loc) / self.scale, event_dim)
        normalizer = self.scale.log().sum() + self.loc.numel() * HALF_LOG_TWO_PI
        return -0.5 * squares - normalizer

    def entropy(self) -> Tensor:
        r""":math:`\sum\log\sigma + \tfrac n2 (1 + \log 2\pi)`, per batch element."""
        entropy = self.scale.log().sum() + self.loc.numel() * (0.5 + HALF_LOG_TWO_PI)
        return entropy.expand(self.batch_shape)


class NormalWeightPrior(dist.TorchDistribution):
    r""":math:`\mathcal N(m, s^2)` for every element of a weight.

    Parameters
    ----------
    loc: Tensor
        :math:`m`, a scalar tensor (gives device and dtype).
    scale: Tensor
        :math:`s > 0`, a scalar tensor.
    event_shape: torch.Size
        The weight's shape.
    batch_shape: torch.Size, default: ()
        Leading batch dimensions, which :meth:`expand` adds.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        event_shape: torch.Size,
        batch_shape: torch.Size = torch.Size(),
    ) -> None:
        if loc.dim() != 0 or scale.dim() != 0:
            raise ValueError(
                f"loc and scale must be scalar tensors, got shapes {tuple(loc.shape)} "
                f"and {tuple(scale.shape)}"
            )
        self.loc = loc
        self.scale = scale
        super().__init__(
            torch.Size(batch_shape), torch.Size(event_shape), validate_args=False
        )

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        """All reals, for each element of the weight."""
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def mean(self) -> Tensor:
        """:math:`m` expanded to batch and event shape."""
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        """:math:`s^2` expanded to batch and event shape."""
        return self.scale.square().expand(self.batch_shape + self.event_shape)

    def expand(  # type: ignore[override]
        self, batch_shape: torch.Size, _instance: object = None
    ) -> NormalWeightPrior:
        """The same distribution with batch dimensions ``batch_shape``."""
        return NormalWeightPrior(
            self.loc, self.scale, self.event_shape, torch.Size(batch_shape)
        )

    def rsample(self, sample_shape: _Shape = torch.Size()) -> Tensor:
        r"""A draw :math:`m + s\varepsilon` of every element."""
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return noise * self.scale + self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`-\frac{1}{2s^2}\sum (w - m)^2 - n(\log s + \tfrac12\log 2\pi)`."""
        event_dim = len(self.event_shape)
        centered = value - self.loc
        squares = centered.square().reshape(*value.shape[: value.dim() - event_dim], -1)
        numel = self.event_shape.numel()
        normalizer = numel * (self.scale.log() + HALF_LOG_TWO_PI)
        return squares.sum(-1) * (-0.5 / self.scale.square()) - normalizer

    def entropy(self) -> Tensor:
        r""":math:`n(\log s + \tfrac12(1 + \log 2\pi))`, per batch element."""
        numel = self.event_shape.numel()
        entropy = numel * (self.scale.log() + 0.5 + HALF_LOG_TWO_PI)
        return entropy.expand(self.batch_shape)


def _normal_kl_sum(
    loc: Tensor, scale: Tensor, prior: NormalWeightPrior, event_dim: int
) -> Tensor:
    """:func:`normal_kl` summed over the last ``event_dim`` dimensions."""
    elementwise = normal_kl(loc, scale.log(), prior.loc, prior.scale.log())
    return elementwise.reshape(
        *elementwise.shape[: elementwise.dim() - event_dim], -1
    ).sum(-1)


@register_kl(NormalWeightPosterior, NormalWeightPrior)
def _kl_posterior_prior(p: NormalWeightPosterior, q: NormalWeightPrior) -> Tensor:
    kl = _normal_kl_sum(p.loc, p.scale, q, len(p.event_shape))
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))


@register_kl(dist.Independent, NormalWeightPrior)
def _kl_independent_normal_prior(p: dist.Independent, q: NormalWeightPrior) -> Tensor:
    base = p.base_dist
    if (
        not isinstance(base, torch.distributions.Normal)
        or p.event_shape != q.event_shape
    ):
        raise NotImplementedError
    kl = _normal_kl_sum(base.loc, base.scale, q, len(q.event_shape))
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
