r"""Predictive uncertainty from sampled model outputs, and learned observation noise.

Every function here takes ``S`` sampled outputs of a Bayesian model, one per weight
draw, stacked along a leading sample dimension ``(S, *)``, in any of three forms:

* the :class:`~torch_blue_pyro.vi.VIReturn` of a model called in torch_blue mode,
  ``model(x, samples=S)``;
* a plain tensor of shape ``(S, *)``;
* the output of :class:`pyro.infer.Predictive`, a dict of samples by site name,
  with ``site=`` naming the site to read (for example a
  ``pyro.deterministic("logits", net(x))`` site, ``(S, N, C)``, or the observation
  ``"obs"``).

The results are plain tensors without the sample dimension.

**Classification.** From sampled logits or probabilities :math:`p_s = p(y \mid x,
w_s)` (``input_type`` as in :class:`~torch_blue_pyro.vi.distributions.Categorical`),
the predictive distribution is :math:`\bar p = \frac1S \sum_s p_s`, and its entropy
splits into an aleatoric and an epistemic part (Depeweg et al., 2018, "Decomposition
of Uncertainty in Bayesian Deep Learning"):

.. math::
    \underbrace{\mathbb H[\bar p]}_{\text{total}}
    = \underbrace{\tfrac1S \textstyle\sum_s \mathbb H[p_s]}_{\text{aleatoric}}
    + \underbrace{\mathbb H[\bar p] - \tfrac1S \textstyle\sum_s
    \mathbb H[p_s]}_{\text{epistemic}},

where the epistemic part is the mutual information :math:`\mathbb I[y; w \mid x]`
between the label and the weights, estimated from the samples.

**Regression.** A model that predicts a mean :math:`\mu_s` and a noise level
:math:`\sigma_s` per draw (see
:class:`~torch_blue_pyro.vi.distributions.HeteroscedasticNormal` and
:class:`HomoscedasticNoise`) has a predictive distribution that is the mixture
:math:`\frac1S \sum_s \mathcal N(\mu_s, \sigma_s^2)`, whose variance splits by the
law of total variance:

.. math::
    \underbrace{\operatorname{Var}[y]}_{\text{total}}
    = \underbrace{\tfrac1S \textstyle\sum_s \sigma_s^2}_{\text{aleatoric}}
    + \underbrace{\tfrac1S \textstyle\sum_s (\mu_s - \bar\mu)^2}_{\text{epistemic}},
    \qquad \bar\mu = \tfrac1S \textstyle\sum_s \mu_s.

All logarithms are natural: entropies are in nats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, NamedTuple, TypeAlias

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ClassificationUncertainty",
    "HomoscedasticNoise",
    "RegressionUncertainty",
    "Samples",
    "classification_uncertainty",
    "expected_entropy",
    "mutual_information",
    "predictive_entropy",
    "predictive_mean",
    "predictive_probabilities",
    "predictive_std",
    "predictive_variance",
    "regression_uncertainty",
    "sample_tensor",
    "split_mean_log_sigma",
]

Samples: TypeAlias = Tensor | Mapping[str, Tensor]
"""Sampled outputs: a ``VIReturn`` or tensor ``(S, *)``, or a dict of site samples."""

InputType: TypeAlias = Literal["logits", "probs"]


def sample_tensor(samples: Samples, site: str | None = None) -> Tensor:
    """The sampled outputs as one plain tensor with a leading sample dimension.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        A :class:`~torch_blue_pyro.vi.VIReturn` or tensor of shape ``(S, *)``, or a
        dict of samples by site name, as :class:`pyro.infer.Predictive` returns.
    site: str, optional
        The site to read from a dict; only for dicts, and required for them.

    Returns
    -------
    Tensor
        A plain tensor ``(S, *)`` (a view of a ``VIReturn``; autograd is kept).

    Raises
    ------
    ValueError
        If a dict is given without ``site`` or ``site`` is not in it, ``site`` is
        given for a tensor, or the samples have no sample dimension.
    TypeError
        If ``samples`` is neither a tensor nor a dict of tensors.

    Examples
    --------
    >>> draws = {"logits": torch.zeros(4, 3, 2), "obs": torch.zeros(4, 3)}
    >>> sample_tensor(draws, site="logits").shape
    torch.Size([4, 3, 2])
    """
    if isinstance(samples, Mapping):
        if site is None:
            raise ValueError(
                "samples is a dict of sites (Pyro Predictive's output): pass site=, "
                f"one of {sorted(samples)}"
            )
        if site not in samples:
            raise ValueError(
                f"site {site!r} is not among the samples' sites {sorted(samples)}"
            )
        value = samples[site]
        what = f"samples[{site!r}]"
    elif site is not None:
        raise ValueError(
            f"site={site!r} is only for a dict of samples, got a "
            f"{type(samples).__name__}"
        )
    else:
        value = samples
        what = "samples"
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{what} must be a tensor with a leading sample dimension, got "
            f"{type(value).__name__}"
        )
    if value.dim() < 1 or value.shape[0] < 1:
        raise ValueError(
            f"{what} must have a leading sample dimension of size >= 1, got shape "
            f"{tuple(value.shape)}"
        )
    return value if type(value) is Tensor else value.as_subclass(Tensor)


# ------------------------------------------------------------------ classification
def _sampled_probabilities(
    samples: Samples, input_type: InputType, site: str | None
) -> Tensor:
    """``(S, *, C)`` class probabilities of each sample."""
    values = sample_tensor(samples, site)
    if input_type not in ("logits", "probs"):
        raise ValueError(f'input_type must be "logits" or "probs", got {input_type!r}')
    if values.dim() < 2 or not values.is_floating_point():
        raise ValueError(
            "classification samples must be floating point of shape (S, *, C) with "
            f"the classes last, got {values.dtype} of shape {tuple(values.shape)}"
        )
    if input_type == "logits":
        return F.softmax(values, dim=-1)
    if bool((values < 0).any()):
        raise ValueError(
            'input_type="probs" needs non-negative probabilities, got a minimum of '
            f"{float(values.min()):g}; for logits use input_type='logits'"
        )
    # Unnormalized probabilities are accepted, as by Categorical(input_type="probs").
    return values / values.sum(dim=-1, keepdim=True)


def _entropy(probabilities: Tensor) -> Tensor:
    r"""Entropy over the last dimension, with :math:`0 \log 0 = 0`."""
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)


def predictive_probabilities(
    samples: Samples, input_type: InputType = "logits", *, site: str | None = None
) -> Tensor:
    r"""The predictive class probabilities, :math:`\bar p = \frac1S\sum_s p_s`.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled logits or probabilities ``(S, *, C)``, the classes last (see
        :func:`sample_tensor`).
    input_type: {"logits", "probs"}, default: "logits"
        Whether the samples are logits (a softmax gives :math:`p_s`) or
        probabilities (normalized to sum to 1, as in
        :class:`~torch_blue_pyro.vi.distributions.Categorical`).
    site: str, optional
        The site to read when ``samples`` is a dict of samples.

    Returns
    -------
    Tensor
        ``(*, C)`` probabilities that sum to 1 over the classes.

    Raises
    ------
    ValueError
        If the samples are not floating point with a class dimension, probabilities
        are negative, or ``input_type`` is unknown.

    Examples
    --------
    >>> logits = torch.tensor([[[10.0, -10.0]], [[-10.0, 10.0]]])  # (S=2, N=1, C=2)
    >>> predictive_probabilities(logits)
    tensor([[0.5000, 0.5000]])
    """
    return _sampled_probabilities(samples, input_type, site).mean(dim=0)


def predictive_entropy(
    samples: Samples, input_type: InputType = "logits", *, site: str | None = None
) -> Tensor:
    r"""Total uncertainty: the entropy of the predictive distribution.

    .. math::
        \mathbb H[\bar p] = -\sum_c \bar p_c \log \bar p_c,
        \qquad \bar p = \tfrac1S \textstyle\sum_s p_s.

    It lies in :math:`[0, \log C]`.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled logits or probabilities ``(S, *, C)``.
    input_type: {"logits", "probs"}, default: "logits"
        See :func:`predictive_probabilities`.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.

    Returns
    -------
    Tensor
        ``(*)`` entropies in nats.
    """
    return _entropy(predictive_probabilities(samples, input_type, site=site))


def expected_entropy(
    samples: Samples, input_type: InputType = "logits", *, site: str | None = None
) -> Tensor:
    r"""Aleatoric uncertainty: the mean entropy of the sampled predictions.

    .. math::
        \mathbb E_w \mathbb H[p(y \mid x, w)] \approx
        \tfrac1S \textstyle\sum_s \mathbb H[p_s].

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled logits or probabilities ``(S, *, C)``.
    input_type: {"logits", "probs"}, default: "logits"
        See :func:`predictive_probabilities`.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.

    Returns
    -------
    Tensor
        ``(*)`` entropies in nats.
    """
    return _entropy(_sampled_probabilities(samples, input_type, site)).mean(dim=0)


def mutual_information(
    samples: Samples, input_type: InputType = "logits", *, site: str | None = None
) -> Tensor:
    r"""Epistemic uncertainty: the mutual information of the label and the weights.

    .. math::
        \mathbb I[y; w \mid x] \approx \mathbb H[\bar p]
        - \tfrac1S \textstyle\sum_s \mathbb H[p_s]
        = \tfrac1S \textstyle\sum_s \mathrm{KL}(p_s \,\|\, \bar p).

    It is zero when all samples agree and at most :math:`\log \min(S, C)`;
    e.g. two samples sure of different classes give :math:`\log 2`. The estimate
    is clamped at zero against rounding.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled logits or probabilities ``(S, *, C)``.
    input_type: {"logits", "probs"}, default: "logits"
        See :func:`predictive_probabilities`.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.

    Returns
    -------
    Tensor
        ``(*)`` mutual information in nats.
    """
    return classification_uncertainty(samples, input_type, site=site).epistemic


class ClassificationUncertainty(NamedTuple):
    r"""The predictive probabilities and the decomposition of their entropy.

    ``total == aleatoric + epistemic`` up to rounding (``epistemic`` is clamped at
    zero).
    """

    probabilities: Tensor
    r"""``(*, C)`` predictive probabilities :math:`\bar p`."""
    total: Tensor
    r"""``(*)`` predictive entropy :math:`\mathbb H[\bar p]`."""
    aleatoric: Tensor
    r"""``(*)`` expected entropy :math:`\frac1S\sum_s \mathbb H[p_s]`."""
    epistemic: Tensor
    r"""``(*)`` mutual information, ``total - aleatoric``."""


def classification_uncertainty(
    samples: Samples, input_type: InputType = "logits", *, site: str | None = None
) -> ClassificationUncertainty:
    r"""Predictive probabilities, total, aleatoric and epistemic uncertainty at once.

    One pass over the samples computes :func:`predictive_probabilities`,
    :func:`predictive_entropy`, :func:`expected_entropy` and
    :func:`mutual_information`:

    .. math::
        \mathbb H[\bar p] = \tfrac1S \textstyle\sum_s \mathbb H[p_s]
        + \mathbb I[y; w \mid x].

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled logits or probabilities ``(S, *, C)``.
    input_type: {"logits", "probs"}, default: "logits"
        See :func:`predictive_probabilities`.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.

    Returns
    -------
    ClassificationUncertainty
        ``(probabilities, total, aleatoric, epistemic)``.

    Examples
    --------
    >>> logits = torch.randn(10, 5, 3)  # 10 weight samples, 5 inputs, 3 classes
    >>> result = classification_uncertainty(logits)
    >>> result.probabilities.shape, result.total.shape
    (torch.Size([5, 3]), torch.Size([5]))
    >>> torch.allclose(result.total, result.aleatoric + result.epistemic)
    True
    """
    probabilities = _sampled_probabilities(samples, input_type, site)
    mean = probabilities.mean(dim=0)
    total = _entropy(mean)
    aleatoric = _entropy(probabilities).mean(dim=0)
    epistemic = (total - aleatoric).clamp_min(0.0)
    return ClassificationUncertainty(mean, total, aleatoric, epistemic)


# ---------------------------------------------------------------------- regression
def predictive_mean(samples: Samples, *, site: str | None = None) -> Tensor:
    r"""The mean of the sampled outputs, :math:`\frac1S \sum_s f_s`.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled outputs ``(S, *)`` (see :func:`sample_tensor`).
    site: str, optional
        The site to read when ``samples`` is a dict of samples.

    Returns
    -------
    Tensor
        ``(*)``.
    """
    return sample_tensor(samples, site).mean(dim=0)


def predictive_variance(
    samples: Samples, *, site: str | None = None, correction: int = 0
) -> Tensor:
    r"""The variance of the sampled outputs over the sample dimension.

    .. math::
        \frac{1}{S - \delta} \sum_s (f_s - \bar f)^2

    with :math:`\delta` = ``correction``. The default 0 is the variance of the
    samples themselves (the epistemic variance of
    :func:`regression_uncertainty`), defined for ``S = 1``; 1 is the unbiased
    estimate. For the samples of an observation site (``Predictive``'s ``"obs"``)
    it is the total predictive variance, noise included.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled outputs ``(S, *)``, floating point.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.
    correction: int, default: 0
        :math:`\delta`, as in :func:`torch.var`.

    Returns
    -------
    Tensor
        ``(*)``.
    """
    values = sample_tensor(samples, site)
    return values.var(dim=0, correction=correction)


def predictive_std(
    samples: Samples, *, site: str | None = None, correction: int = 0
) -> Tensor:
    """The standard deviation of the sampled outputs, see :func:`predictive_variance`.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled outputs ``(S, *)``, floating point.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.
    correction: int, default: 0
        As in :func:`torch.std`.

    Returns
    -------
    Tensor
        ``(*)``.
    """
    return predictive_variance(samples, site=site, correction=correction).sqrt()


def split_mean_log_sigma(output: Tensor) -> tuple[Tensor, Tensor]:
    r"""Split an output ``(*, 2D)`` into means and log-sigmas ``(*, D)`` each.

    The layout that :class:`~torch_blue_pyro.vi.distributions.HeteroscedasticNormal`
    reads and :class:`HomoscedasticNoise` writes: the first half of the last
    dimension holds the means :math:`\mu`, the second half
    :math:`\log\sigma`. For one output (``D = 1``) that is ``(mean, log_sigma)``.

    Parameters
    ----------
    output: Tensor
        ``(*, 2D)``; a ``VIReturn`` is read as a plain tensor.

    Returns
    -------
    tuple[Tensor, Tensor]
        Means and log-sigmas, ``(*, D)`` each (views).

    Raises
    ------
    ValueError
        If the last dimension is missing or odd.
    """
    output = output.as_subclass(Tensor)
    if output.dim() < 1 or output.shape[-1] % 2 or output.shape[-1] == 0:
        raise ValueError(
            "an output with means and log-sigmas needs an even, non-zero last "
            f"dimension (D means, then D log-sigmas), got shape {tuple(output.shape)}"
        )
    mean, log_sigma = output.chunk(2, dim=-1)
    return mean, log_sigma


class RegressionUncertainty(NamedTuple):
    r"""The predictive mean and the decomposition of the predictive variance.

    ``total_variance == aleatoric_variance + epistemic_variance``.
    """

    mean: Tensor
    r"""``(*, D)`` predictive mean :math:`\bar\mu`."""
    total_variance: Tensor
    r"""``(*, D)`` variance of the predictive mixture."""
    aleatoric_variance: Tensor
    r"""``(*, D)`` expected noise variance :math:`\frac1S \sum_s \sigma_s^2`."""
    epistemic_variance: Tensor
    r"""``(*, D)`` variance of the means :math:`\frac1S \sum_s (\mu_s-\bar\mu)^2`."""

    @property
    def total_std(self) -> Tensor:
        """``(*, D)`` predictive standard deviation."""
        return self.total_variance.sqrt()

    @property
    def aleatoric_std(self) -> Tensor:
        """``(*, D)`` square root of the aleatoric variance."""
        return self.aleatoric_variance.sqrt()

    @property
    def epistemic_std(self) -> Tensor:
        """``(*, D)`` square root of the epistemic variance."""
        return self.epistemic_variance.sqrt()


def regression_uncertainty(
    samples: Samples,
    *,
    site: str | None = None,
    noise_std: float | Tensor | None = None,
) -> RegressionUncertainty:
    r"""Predictive mean and aleatoric/epistemic split of the predictive variance.

    For draws :math:`(\mu_s, \sigma_s)` the predictive distribution is the mixture
    :math:`\frac1S \sum_s \mathcal N(\mu_s, \sigma_s^2)`, with mean
    :math:`\bar\mu = \frac1S\sum_s \mu_s` and variance

    .. math::
        \operatorname{Var}[y] = \underbrace{\tfrac1S \textstyle\sum_s
        \sigma_s^2}_{\text{aleatoric}} + \underbrace{\tfrac1S \textstyle\sum_s
        (\mu_s - \bar\mu)^2}_{\text{epistemic}}.

    The epistemic part divides by :math:`S` (it is the variance of the mixture, not
    an unbiased estimate), so one sample gives zero, not NaN.

    Parameters
    ----------
    samples: VIReturn, Tensor or Mapping[str, Tensor]
        Sampled outputs. Without ``noise_std``: ``(S, *, 2D)``, means then
        log-sigmas in the last dimension (see :func:`split_mean_log_sigma`), as a
        model trained with
        :class:`~torch_blue_pyro.vi.distributions.HeteroscedasticNormal` returns
        them. With ``noise_std``: ``(S, *)`` means only.
    site: str, optional
        The site to read when ``samples`` is a dict of samples.
    noise_std: float or Tensor, optional
        A known observation noise :math:`\sigma` (broadcastable to the means), when
        the samples hold means only; 0 gives the epistemic part alone.

    Returns
    -------
    RegressionUncertainty
        ``(mean, total_variance, aleatoric_variance, epistemic_variance)``.

    Raises
    ------
    ValueError
        If the last dimension cannot be split or ``noise_std`` is negative.

    Examples
    --------
    >>> means = torch.tensor([[1.0], [3.0]])  # S=2 draws of one output
    >>> log_sigmas = torch.log(torch.tensor([[1.0], [2.0]]))
    >>> result = regression_uncertainty(torch.cat([means, log_sigmas], dim=-1))
    >>> result.mean, result.aleatoric_variance, result.epistemic_variance
    (tensor([2.]), tensor([2.5000]), tensor([1.]))
    """
    values = sample_tensor(samples, site)
    if noise_std is None:
        means, log_sigmas = split_mean_log_sigma(values)
        aleatoric = torch.exp(2 * log_sigmas).mean(dim=0)
    else:
        means = values
        noise = torch.as_tensor(noise_std, dtype=means.dtype, device=means.device)
        if bool((noise < 0).any()) or not bool(torch.isfinite(noise).all()):
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
        aleatoric = noise.square().expand(means.shape[1:])
    mean = means.mean(dim=0)
    epistemic = means.var(dim=0, correction=0)
    return RegressionUncertainty(mean, aleatoric + epistemic, aleatoric, epistemic)


class HomoscedasticNoise(nn.Module):
    r"""Appends one learned log-sigma per output to a model's means.

    Homoscedastic observation noise :math:`y = f(x) + \sigma\varepsilon`, with
    :math:`\log\sigma` a learned parameter (a point estimate, the same for every
    input). Put it last in a model that outputs the means; the model then outputs
    ``(*, 2D)``: the means, then :math:`\log\sigma` broadcast to them, the layout
    :class:`~torch_blue_pyro.vi.distributions.HeteroscedasticNormal` reads. So one
    predictive distribution trains both kinds of noise: a network with ``2D``
    outputs learns heteroscedastic noise, this module homoscedastic noise.

    The parameter is ``log_sigma``; in Pyro mode a
    :class:`~torch_blue_pyro.vi.VISequential` announces it as a param site, so
    ``SVI`` trains it too.

    Parameters
    ----------
    out_features: int, default: 1
        :math:`D`, the number of outputs; each has its own :math:`\sigma`.
    sigma: float, default: 1.0
        Initial :math:`\sigma`; > 0.

    Shape
    -----
    - Input: ``(*, D)`` means (``(S, *, D)`` inside a sampled model).
    - Output: ``(*, 2D)``.

    Examples
    --------
    >>> from torch import nn
    >>> from torch_blue_pyro import vi
    >>> model = vi.VISequential(
    ...     vi.VILinear(3, 16), nn.ReLU(), vi.VILinear(16, 1), HomoscedasticNoise(1)
    ... )
    >>> model(torch.randn(8, 3), samples=4).shape
    torch.Size([4, 8, 2])
    """

    def __init__(self, out_features: int = 1, sigma: float = 1.0) -> None:
        super().__init__()
        if isinstance(out_features, bool) or not isinstance(out_features, int):
            raise ValueError(
                f"out_features must be a positive int, got {out_features!r}"
            )
        if out_features < 1:
            raise ValueError(
                f"out_features must be a positive int, got {out_features!r}"
            )
        if not (math.isfinite(float(sigma)) and float(sigma) > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.out_features = out_features
        self.log_sigma = nn.Parameter(torch.full((out_features,), math.log(sigma)))

    @property
    def sigma(self) -> Tensor:
        r"""The current :math:`\sigma`, shape ``(D,)``."""
        return self.log_sigma.exp()

    def extra_repr(self) -> str:  # noqa: D102
        return f"out_features={self.out_features}"

    def forward(self, mean: Tensor) -> Tensor:
        """Return the means with the log-sigmas appended in the last dimension.

        Parameters
        ----------
        mean: Tensor
            ``(*, D)`` means.

        Returns
        -------
        Tensor
            ``(*, 2D)``: ``mean``, then ``log_sigma`` broadcast to it.

        Raises
        ------
        ValueError
            If the last dimension of ``mean`` is not ``out_features``.
        """
        if mean.dim() < 1 or mean.shape[-1] != self.out_features:
            raise ValueError(
                f"HomoscedasticNoise({self.out_features}) takes means of shape "
                f"(*, {self.out_features}), got {tuple(mean.shape)}"
            )
        log_sigma = self.log_sigma.to(mean.dtype).expand_as(mean)
        return torch.cat([mean, log_sigma], dim=-1)
