r"""MeanFieldStudentT: independent Student's t variational distributions."""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as pyro_dist
import torch
from pyro.distributions import TorchDistribution
from torch import Tensor

from ..torch_blue_0_9 import as_parameter_tuple
from ..utils.use_norm_constants import norm_constants_enabled
from .base import (
    VariationalDistribution,
    _sum_per_sample,
    _total,
)


class MeanFieldStudentT(VariationalDistribution):
    r"""Independent Student's t distribution of each element (variational role).

    Its parameters are ``mean`` and ``log_scale``; the degrees of freedom :math:`\nu`
    are fixed. An element's log-density is

    .. math::
        \log t_\nu(w \mid \mu, s) = -\frac{\nu + 1}{2}
        \log\Bigl(1 + \frac{1}{\nu}\Bigl(\frac{w-\mu}{s}\Bigr)^2\Bigr) - \log s
        \;\Bigl[-\tfrac12\log(\nu\pi) - \log\Gamma\bigl(\tfrac\nu2\bigr)
        + \log\Gamma\bigl(\tfrac{\nu+1}2\bigr)\Bigr],

    the bracket only with :func:`~torch_blue_pyro.vi.utils.use_norm_constants`.
    Samples are :math:`\mu + s\,t`, :math:`t \sim t_\nu(0, 1)`, drawn for all ``S``
    samples at once before the forward pass (so they also work under the
    ``torch.vmap`` that runs single-sample modules), and their log-density is
    computed from :math:`t` in closed form. The heavier tails than a normal's allow
    occasional large weights. In Pyro the guide's site is a
    :class:`pyro.distributions.StudentT`.

    Both torch_blue spellings are accepted: 1.1's ``mean``, ``scale`` (positional
    order ``mean, scale, degrees_of_freedom``) and 0.9's ``initial_scale``
    (keyword only here, since 0.9 took it as the first positional argument).

    Parameters
    ----------
    mean: float, default: 0.0
        Default of the variational mean (Kaiming initialization overrides it).
    scale: float, default: 1.0
        Initial scale :math:`s`; > 0.
    degrees_of_freedom: float, default: 4.0
        :math:`\nu`; > 0.
    device: torch.device, optional
        Accepted for torch_blue compatibility and ignored: the distribution follows
        its parameters' device.
    initial_scale: float, optional
        torch_blue 0.9's name of ``scale``; give one of the two (``scale`` keeps
        its default then).

    Raises
    ------
    ValueError
        If an argument is not finite or out of its range, or ``initial_scale`` is
        given with a ``scale`` other than the default.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> layer = vi.VILinear(4, 3, variational_distribution=vi.distributions.StudentT())
    >>> layer(torch.randn(8, 4), samples=2).shape
    torch.Size([2, 8, 3])
    """

    distribution_parameters = ("mean", "log_scale")

    def __init__(
        self,
        mean: float = 0.0,
        scale: float = 1.0,
        degrees_of_freedom: float = 4.0,
        device: torch.device | str | None = None,
        *,
        initial_scale: float | None = None,
    ) -> None:
        argument = "scale"
        if initial_scale is not None:
            if scale != 1.0:
                raise ValueError(
                    "give scale (torch_blue 1.1) or initial_scale (torch_blue 0.9), "
                    f"not both: got scale={scale!r}, initial_scale={initial_scale!r}"
                )
            argument, scale = "initial_scale", initial_scale
        for name, value, positive in (
            ("mean", mean, False),
            (argument, scale, True),
            ("degrees_of_freedom", degrees_of_freedom, True),
        ):
            number = float(value)
            if not math.isfinite(number) or (positive and number <= 0):
                kind = "a positive finite" if positive else "a finite"
                raise ValueError(f"{name} must be {kind} number, got {value!r}")
        self.mean = float(mean)
        self.log_scale = math.log(float(scale))
        self._df = float(degrees_of_freedom)

    def __repr__(self) -> str:
        return (
            f"MeanFieldStudentT(scale={math.exp(self.log_scale):g}, "
            f"degrees_of_freedom={self._df:g})"
        )

    @property
    def degrees_of_freedom(self) -> Tensor:
        r""":math:`\nu`, as a tensor (as torch_blue stores it)."""
        return torch.tensor(self._df)

    @degrees_of_freedom.setter
    def degrees_of_freedom(self, value: float | Tensor) -> None:
        number = float(value)
        if not (math.isfinite(number) and number > 0):
            raise ValueError(
                f"degrees_of_freedom must be a positive finite number, got {value!r}"
            )
        self._df = number

    @property
    def _default_variational_parameters(self) -> tuple[float, float]:
        return self.mean, self.log_scale

    def _log_norm(self) -> float:
        r"""The normalization constant :math:`C_\nu` of one element."""
        df = self._df
        return (
            0.5 * math.log(df * math.pi)
            + math.lgamma(df / 2)
            - math.lgamma((df + 1) / 2)
        )

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Elementwise log-density of ``sample`` given ``(mean, log_scale)``.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        parameters: tuple[Tensor, Tensor]
            Mean and log-scale, broadcastable to ``sample`` (a tuple or unpacked).

        Returns
        -------
        Tensor
            Shaped like ``sample``.
        """
        mean, log_scale = as_parameter_tuple(parameters)
        standardized = (sample - mean) / log_scale.exp()
        log_prob = (
            -0.5 * (self._df + 1) * torch.log1p(standardized.square() / self._df)
            - log_scale
        )
        if norm_constants_enabled():
            log_prob = log_prob - self._log_norm()
        return log_prob

    def _standard_t(self, shape: torch.Size, reference: Tensor) -> Tensor:
        df = torch.tensor(self._df, dtype=reference.dtype, device=reference.device)
        return torch.distributions.StudentT(df).sample(shape)

    def sample(self, *parameters: Any) -> Tensor:
        r"""Draw :math:`\mu + s\,t` shaped like the parameters.

        Parameters
        ----------
        parameters: tuple[Tensor, Tensor]
            Mean and log-scale (a tuple or unpacked).

        Returns
        -------
        Tensor
            A reparameterized sample.
        """
        mean, log_scale = as_parameter_tuple(parameters)
        shape = torch.broadcast_shapes(mean.shape, log_scale.shape)
        return torch.addcmul(mean, log_scale.exp(), self._standard_t(shape, mean))

    def rsample_with_log_prob(
        self, parameters: tuple[Tensor, ...], num_samples: int, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        r"""Draw ``S`` samples; their log-density from the noise in closed form.

        With :math:`w = \mu + s\,t`,
        :math:`\log q(w) = -\frac{\nu+1}2\sum\log(1 + t^2/\nu) - \sum\log s`
        (:math:`- n C_\nu` with normalization constants): the value and gradient of
        scoring :math:`w`, since :math:`(w-\mu)/s = t`.

        Parameters
        ----------
        parameters: tuple[Tensor, ...]
            Mean and log-scale, each of the variable's shape.
        num_samples: int
            ``S``.
        with_log_prob: bool
            Whether to compute the log-probabilities.

        Returns
        -------
        tuple[Tensor, Tensor or None]
            ``(S, *shape)`` samples and ``(S,)`` log-probabilities (or ``None``).
        """
        mean, log_scale = parameters
        noise = self._standard_t(torch.Size((num_samples, *mean.shape)), mean)
        samples = torch.addcmul(mean, log_scale.exp(), noise)
        if not with_log_prob:
            return samples, None
        spread = _sum_per_sample(torch.log1p(noise.square() / self._df))
        log_prob = -0.5 * (self._df + 1) * spread - _total(log_scale)
        if norm_constants_enabled():
            log_prob = log_prob - self._log_norm() * mean.numel()
        return samples, log_prob

    def pyro_distribution(self, parameters: tuple[Tensor, ...]) -> TorchDistribution:
        """The guide's form: Student's t with the layer's means and scales.

        Parameters
        ----------
        parameters: tuple[Tensor, Tensor]
            Mean and log-scale, each of the variable's shape.

        Returns
        -------
        TorchDistribution
            A reparameterized :class:`pyro.distributions.StudentT`, one event.
        """
        mean, log_scale = parameters
        df = torch.tensor(self._df, dtype=mean.dtype, device=mean.device)
        return pyro_dist.StudentT(df, mean, log_scale.exp()).to_event(mean.dim())
