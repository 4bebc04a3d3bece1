r"""The handler behind torch_blue's autosampling: vectorized variational draws.

Under :class:`VariationalMessenger`, every weight site that a known
:class:`VariationalSite` serves is drawn ``S`` times at once from the variational
distribution instead of from its prior, with a new leading sample dimension, and the
log prior and log variational probability of each draw are accumulated. The forward
pass then runs once on the stacked weights.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from ..amp import accumulation_dtype
from .runtime import TransparentMessenger


class VariationalSite(Protocol):
    """What the sampler needs from a random variable: stacked draws with log-probs."""

    def sample_with_log_probs(
        self, num_samples: int, with_log_probs: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Return ``(S, *shape)`` values and their ``(S,)`` log prior and log q."""
        ...


class VariationalMessenger(TransparentMessenger):
    """Draw every known site ``num_samples`` times from its variational distribution.

    Parameters
    ----------
    num_samples: int
        ``S``, the size of the new leading sample dimension.
    sites: Mapping[str, VariationalSite]
        The sites this handler serves, by site name. Other sample sites are left to
        Pyro.
    with_log_probs: bool
        Whether to accumulate log-probabilities (off for prediction).
    """

    context_field = "sampler"

    def __init__(
        self,
        num_samples: int,
        sites: Mapping[str, VariationalSite],
        with_log_probs: bool = True,
    ) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.sites = sites
        self.with_log_probs = with_log_probs
        self._log_prior: list[Tensor] = []
        self._log_variational: list[Tensor] = []
        self._drawn: list[str | None] = []  # the site of each term, None: recorded

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        site = self.sites.get(msg["name"])
        if site is None or msg["is_observed"]:
            return
        value, log_prior, log_variational = site.sample_with_log_probs(
            self.num_samples, self.with_log_probs
        )
        if log_prior is not None and log_variational is not None:
            self._log_prior.append(log_prior)
            self._log_variational.append(log_variational)
            self._drawn.append(msg["name"])
        msg["value"] = value
        msg["done"] = True

    def record(self, log_prior: Tensor, log_variational: Tensor) -> None:
        """Add terms that a layer computed itself (a closed-form KL, say).

        Parameters
        ----------
        log_prior: Tensor
            ``(S,)`` or a scalar broadcast to all samples.
        log_variational: Tensor
            Likewise.
        """
        if self.with_log_probs:
            self._log_prior.append(log_prior.expand(self.num_samples))
            self._log_variational.append(log_variational.expand(self.num_samples))
            self._drawn.append(None)

    def log_probs(self, reference: Tensor) -> Tensor:
        """The ``(S, 2)`` [log prior, log variational] of the draws so far.

        Parameters
        ----------
        reference: Tensor
            Gives device and dtype when no site was drawn (the result is zeros then).

        Returns
        -------
        Tensor
            Per sample, the sums over all drawn sites, in at least ``float32``.
        """
        terms = self._log_prior + self._log_variational
        dtype = functools.reduce(
            torch.promote_types,
            (term.dtype for term in terms),
            accumulation_dtype(reference.dtype),
        )
        if not terms:
            return reference.new_zeros((self.num_samples, 2), dtype=dtype)
        log_prior = torch.stack([t.to(dtype) for t in self._log_prior]).sum(dim=0)
        log_variational = torch.stack([t.to(dtype) for t in self._log_variational])
        return torch.stack((log_prior, log_variational.sum(dim=0)), dim=1)

    def site_log_probs(self) -> dict[str, Tensor]:
        """The ``(S, 2)`` [log prior, log variational] of each site drawn, by name.

        Terms recorded with :meth:`record` belong to no site and are left out.

        Returns
        -------
        dict[str, Tensor]
            Per site name, its draws' log-probabilities.
        """
        return {
            name: torch.stack((log_prior, log_variational), dim=1)
            for name, log_prior, log_variational in zip(
                self._drawn, self._log_prior, self._log_variational, strict=True
            )
            if name is not None
        }
