r"""UniformPrior and NonBayesian: a flat prior and point-estimate weights."""

from __future__ import annotations

from typing import Any

import pyro.distributions as pyro_dist
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor, nn

from ..torch_blue_0_9 import as_parameter_tuple
from .base import (
    PredictiveDistribution,
    Prior,
    VariationalDistribution,
)

_LOSSES: dict[str, type[nn.Module]] = {
    "MSE": nn.MSELoss,
    "L2": nn.MSELoss,
    "MAE": nn.L1Loss,
    "L1": nn.L1Loss,
}


class UniformPrior(Prior):
    r"""Flat (improper) prior: every value is equally likely.

    .. math::
        \log p(w) = 0

    The normalization constant would be infinite, so it is left out whatever
    :func:`~torch_blue_pyro.vi.utils.use_norm_constants` says. The prior adds nothing
    to the loss: the prior-matching term is minus the entropy of the variational
    distribution. A :class:`~torch_blue_pyro.vi.distributions.MeanFieldNormal` prior is
    usually the better choice; this one is :class:`NonBayesian`'s prior role on its
    own.

    In Pyro the site's distribution is
    :class:`~pyro.distributions.ImproperUniform` over the reals: it scores (zero) but
    cannot be sampled, so a Pyro model with this prior needs a guide that supplies
    the values.
    """

    distribution_parameters: tuple[str, ...] = ("mean",)
    mean = None
    _scaling_parameters = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def log_prob(self, sample: Tensor, *parameters: Any) -> Tensor:
        """Zero for every element.

        Parameters
        ----------
        sample: Tensor
            Values to score.
        parameters: Any
            Ignored.

        Returns
        -------
        Tensor
            Zeros shaped like ``sample``.
        """
        return sample.new_zeros(sample.shape)

    def log_prob_per_sample(
        self, samples: Tensor, hyperparameters: tuple[Tensor, ...] = ()
    ) -> Tensor:
        """Zero for each of ``S`` stacked samples.

        Parameters
        ----------
        samples: Tensor
            ``(S, *shape)`` values.
        hyperparameters: tuple[Tensor, ...], default: ()
            Unused.

        Returns
        -------
        Tensor
            ``(S,)`` zeros.
        """
        return samples.new_zeros(samples.shape[0])

    def pyro_distribution(self, *args: Any) -> TorchDistribution:
        """The flat prior over the reals, one event of the variable's shape.

        Parameters
        ----------
        args: Any
            ``(event_shape, reference)``.

        Returns
        -------
        TorchDistribution
            :class:`~pyro.distributions.ImproperUniform`: log-probability zero, no
            sampling.
        """
        event_shape, _ = args
        return pyro_dist.ImproperUniform(constraints.real, (), tuple(event_shape))


class NonBayesian(UniformPrior, VariationalDistribution, PredictiveDistribution):
    r"""Non-Bayesian behaviour in all three roles: flat prior, fixed weights, a loss.

    Its one parameter is ``mean``, the value of the weight.

    * As a **prior** it is :class:`UniformPrior`: :math:`\log p(w) = 0`.
    * As the **variational distribution** the weight is the point estimate
      :math:`\hat w` = ``mean``: every sample is :math:`\hat w` and
      :math:`\log q(\hat w) = 0` by convention (the density of a point mass is not
      finite). With a normal prior the Monte-Carlo loss then penalizes
      :math:`-\log p(\hat w)`, a weight decay (maximum a posteriori). Mixing
      such variables with Bayesian ones in one layer or model is fine. In Pyro the
      guide's site is a :class:`~pyro.distributions.Delta` at ``mean``.
    * As the **predictive distribution** it scores the sample-mean prediction
      :math:`\bar f` with a deterministic loss, as torch_blue does:
      :math:`\log p(y \mid \bar f) := -\operatorname{MSE}(\bar f, y)` or
      :math:`-\operatorname{MAE}(\bar f, y)`, averaged over all elements (so a
      loss's data term is ``dataset_size`` times the loss). Normalization constants
      are never added.

    Parameters
    ----------
    loss_type: {"MSE", "L2", "MAE", "L1"}, optional
        The loss used as predictive distribution; ``"L2"`` is ``"MSE"``, ``"L1"`` is
        ``"MAE"``. Only needed in that role.

    Raises
    ------
    ValueError
        If ``loss_type`` is not one of the above.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> fixed_bias = vi.VILinear(
    ...     4, 2,
    ...     variational_distribution=[vi.distributions.MeanFieldNormal(),
    ...                               vi.distributions.NonBayesian()],
    ...     prior=[vi.distributions.MeanFieldNormal(), vi.distributions.UniformPrior()],
    ... )
    >>> out = fixed_bias(torch.randn(8, 4), samples=3)
    >>> loss = vi.KullbackLeiblerLoss(vi.distributions.MeanFieldNormal(), 100)
    >>> loss(out, torch.randn(8, 2)).shape
    torch.Size([])
    """

    _default_variational_parameters = (0.0,)

    def __init__(self, loss_type: str | None = None) -> None:
        if loss_type is not None and loss_type not in _LOSSES:
            raise ValueError(
                f"loss_type must be one of {tuple(_LOSSES)} or None, got {loss_type!r}"
            )
        self.loss_type = loss_type
        self.loss: nn.Module | None = (
            None if loss_type is None else _LOSSES[loss_type]()
        )

    def __repr__(self) -> str:
        if self.loss_type is None:
            return "NonBayesian()"
        return f"NonBayesian(loss_type={self.loss_type!r})"

    def sample(self, *parameters: Any) -> Tensor:
        """The weight itself: ``mean``.

        Parameters
        ----------
        parameters: tuple[Tensor]
            ``(mean,)``, as a tuple or unpacked.

        Returns
        -------
        Tensor
            ``mean``.
        """
        (mean,) = as_parameter_tuple(parameters)
        return mean

    def rsample_with_log_prob(
        self, parameters: tuple[Tensor, ...], num_samples: int, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``S`` copies of the weight (a view) and their zero log-probabilities.

        Parameters
        ----------
        parameters: tuple[Tensor]
            ``(mean,)``.
        num_samples: int
            ``S``.
        with_log_prob: bool
            Whether to return the log-probabilities.

        Returns
        -------
        tuple[Tensor, Tensor or None]
            ``(S, *shape)`` samples and ``(S,)`` zeros (or ``None``).
        """
        (mean,) = parameters
        samples = mean.expand(num_samples, *mean.shape)
        return samples, mean.new_zeros(num_samples) if with_log_prob else None

    def pyro_distribution(self, *args: Any) -> TorchDistribution:
        """As prior ``(event_shape, reference)``: flat; as guide ``(params,)``: a point.

        Parameters
        ----------
        args: Any
            ``(event_shape, reference)`` for the prior role, or ``(parameters,)``
            for the variational role.

        Returns
        -------
        TorchDistribution
            :class:`~pyro.distributions.ImproperUniform`, or a
            :class:`~pyro.distributions.Delta` at ``mean`` (one event).
        """
        if len(args) == 2:
            return super().pyro_distribution(*args)
        (mean,) = args[0]
        return pyro_dist.Delta(mean, event_dim=mean.dim())

    def predictive_parameters_from_samples(self, samples: Tensor) -> Tensor:
        """The sample mean of the outputs.

        Parameters
        ----------
        samples: Tensor
            ``(S, *)`` outputs.

        Returns
        -------
        Tensor
            ``(*)`` prediction.
        """
        return samples.mean(dim=0)

    def log_prob_from_parameters(self, reference: Tensor, parameters: Any) -> Tensor:
        """Minus the loss of the prediction, averaged over all elements.

        Parameters
        ----------
        reference: Tensor
            The targets, shaped like the prediction.
        parameters: Tensor or tuple[Tensor]
            The prediction, as returned by
            :meth:`predictive_parameters_from_samples`.

        Returns
        -------
        Tensor
            A scalar.

        Raises
        ------
        ValueError
            If the distribution was built without ``loss_type``.
        """
        if self.loss is None:
            raise ValueError(
                "NonBayesian() has no loss_type, so it cannot score targets as "
                'predictive distribution; build it as NonBayesian(loss_type="MSE") '
                '(or "L2", "MAE", "L1")'
            )
        (prediction,) = as_parameter_tuple((parameters,))
        return -self.loss(prediction, reference)
