r"""Gradient estimators as effect handlers: local reparameterization and Flipout.

Inside ``with local_reparameterization():`` or ``with flipout():`` the Linear and
convolution layers (``VILinear``, ``VIConv1d/2d/3d``) compute their outputs with
that estimator instead of plain weight sampling, in both modes. Write
:math:`\star` for the layer's operation (the matrix product :math:`x W^\top` or
the convolution, with its stride, padding, dilation and groups).

* **torch_blue mode** (``model(x, samples=S)``): the layer uses its own Gaussian
  variational parameters. Local reparameterization (Kingma et al., 2015) samples
  each output element from its marginal
  :math:`\mathcal N(x \star \mu + \mu_b,\ x^2 \star \sigma^2 + \sigma_b^2)`
  directly, so no weight is drawn; the KL term of the output's ``log_probs`` is
  then the closed-form :math:`\mathrm{KL}(q\,\|\,p)` (the log prior column holds
  :math:`-\mathrm{KL}`, the log variational column 0), which requires a
  ``MeanFieldNormal`` prior. For a Linear layer the expected loss is unchanged;
  for a convolution the estimator also drops the correlation between the
  positions of an example, which share the weight, and is an approximation (see
  :func:`~torch_blue_pyro.functional.conv_local_reparameterization`).
  Flipout (Wen et al., 2018) draws one weight perturbation
  :math:`\Delta_s = w_s - \mu` per sample and decorrelates the examples of a batch
  with random signs, :math:`z = x \star \mu + ((x \circ r) \star \Delta_s) \circ c
  + b_s`: per feature for a Linear layer, per channel (shared by the positions)
  for a convolution, so that every example sees one weight distributed as the
  drawn one. Its log-probs are those of the drawn weights.
* **Pyro mode** (SVI with ``model.guide``): the handler remembers, per site, the
  location and scale of the Gaussian the guide drew each weight from, and the
  layers use them as above. The ELBO still scores the drawn weights, which keeps
  it unbiased. Any guide that samples a weight site from
  ``Normal(loc, scale).to_event(...)`` is recognised, ``AutoNormal``'s included
  (its site is a ``Delta`` at the identity transform of that draw); other guides'
  draws (``AutoDiagonalNormal``, low-rank, flows) are not, and the layers fall
  back to the plain estimator.

A layer also falls back to plain sampling where its variational distribution is
not a ``MeanFieldNormal`` and under local reparameterization in torch_blue mode
where its prior is not one. Pyro's vectorized particles are served as torch_blue's
sample dimension.

How it works: a layer's weight-times-input is an effectful operation,
:func:`affine` on an :class:`AffineOperation`. It goes to the active estimator's
:meth:`EstimatorMessenger.process`, which owns the math; without an estimator the
plain operation runs on drawn weights. A new estimator is one subclass of
:class:`EstimatorMessenger`. The handlers are
:class:`~torch_blue_pyro.poutine.TransparentMessenger` s: they keep a model in its
mode. The active estimator is held in this thread's
:class:`~torch_blue_pyro.poutine.context.ForwardContext`, so a handler entered in
one thread does not affect another.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import torch
from pyro.distributions import Delta
from torch import Tensor
from torch.distributions import Independent, Normal

from .. import functional
from .._pyro_compat import PYRO_STACK
from ..sites import NormalWeightPosterior
from .context import ForwardContext, current_context
from .runtime import TransparentMessenger

#: ``infer`` key of a sample message whose draw is Gaussian: ``(loc, scale)``.
GAUSSIAN_DRAW = "torch_blue_pyro_gaussian"
Gaussian = tuple[Tensor, Tensor]


class GaussianSite(Protocol):
    """A layer's random variable, as the estimators use it.

    ``torch_blue_pyro.vi.random_variable.RandomVariable`` is the
    implementation.
    """

    name: str

    def current_value(self) -> Tensor:
        """The variable's value in the forward pass (drawn at the first read)."""
        ...

    def gaussian_parameters(self) -> Gaussian | None:
        """``(mean, std)`` of a Gaussian variational distribution, else ``None``."""
        ...

    def closed_form_kl(self) -> Tensor | None:
        """The closed-form KL to a Gaussian prior, else ``None``."""
        ...


@dataclasses.dataclass(frozen=True)
class AffineOperation:
    r"""A layer's random affine map :math:`x \star W + b`: the estimators' effect.

    Linear and convolution layers do not multiply their input by a drawn weight
    themselves; they describe the operation and hand it to :func:`affine`, which
    the active estimator handler may compute its own way.

    Attributes
    ----------
    kind: str
        ``"linear"`` (:math:`x W^\top + b`) or ``"convolution"``.
    input: Tensor
        The layer's input, with the leading sample dimension while
        ``ForwardContext.num_samples`` is set.
    weight: GaussianSite
        The random weight.
    bias: GaussianSite or None
        The random bias, if the layer has one.
    apply: Callable[..., Tensor]
        The plain operation, ``apply(input, weight, bias, **options)``, on drawn
        values (:func:`torch_blue_pyro.functional.linear`, say).
    options: Mapping[str, Any]
        The operation's further arguments (a convolution's ``stride``,
        ``padding``, ``dilation``, ``groups``, ``padding_mode``).
    """

    kind: str
    input: Tensor
    weight: GaussianSite
    bias: GaussianSite | None
    apply: Callable[..., Tensor]
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def sites(self) -> list[GaussianSite]:
        """The weight and, if present, the bias."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def plain(self) -> Tensor:
        """The operation on the drawn weight and bias: no estimator."""
        weight = self.weight.current_value()  # drawn first, then the bias
        bias = None if self.bias is None else self.bias.current_value()
        return self.apply(self.input, weight, bias, **self.options)


def affine(operation: AffineOperation) -> Tensor:
    """Effectful: the output of a random affine map, as the active estimator makes it.

    Without an estimator handler (or where it declines), the plain operation on
    drawn weights; see :class:`EstimatorMessenger`.

    Parameters
    ----------
    operation: AffineOperation
        The layer's operation.

    Returns
    -------
    Tensor
        The layer's output.
    """
    context = current_context()
    if context.estimator is not None:
        output = context.estimator.process(operation, context)
        if output is not None:
            return output
    return operation.plain()


class EstimatorMessenger(TransparentMessenger):
    r"""Base class of the estimator handlers: they compute the layers' affine maps.

    While one is active (in the thread that entered it), every :func:`affine`
    operation of a Linear or convolution layer comes to :meth:`process`, which
    finds the Gaussians :math:`(\mu, \sigma)` of the weight and bias and hands
    them to :meth:`estimate`, the estimator's own math. A new estimator is a
    subclass that sets ``kind`` and implements :meth:`estimate`.

    The Gaussians are, in torch_blue mode, the layer's own ``MeanFieldNormal``
    parameters and, in Pyro mode, those that the guide drew the weights from:
    ``model.guide`` says so in its sites' ``infer``, and this handler recognises any
    guide that samples a site from ``Normal(loc, scale).to_event(...)``
    (``AutoNormal``'s included, whose site is a ``Delta`` at that draw).
    """

    kind: ClassVar[str]
    context_field = "estimator"

    def __init__(self) -> None:
        super().__init__()
        # Gaussian draws by site name, and by tensor for the Deltas of autoguides.
        self._by_site: dict[str, tuple[weakref.ref[Tensor], Gaussian]] = {}
        self._by_tensor: dict[int, tuple[weakref.ref[Tensor], Gaussian]] = {}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        # Seen last (no Pyro handler outside this one), a latent site still without
        # a value is about to be drawn from its own distribution (an autoguide's,
        # say); where that is a Gaussian over the whole site, its infer says so.
        if (
            msg["value"] is not None
            or msg["is_observed"]
            or msg["done"]
            or GAUSSIAN_DRAW in msg["infer"]
            or not self._processes_last()
        ):
            return
        gaussian = _gaussian_of_distribution(msg["fn"])
        if gaussian is not None:
            msg["infer"] = {**msg["infer"], GAUSSIAN_DRAW: gaussian}

    def _processes_last(self) -> bool:
        """Whether no handler outside this one could still give a site its value."""
        outer = PYRO_STACK[: PYRO_STACK.index(self)]
        return all(isinstance(frame, TransparentMessenger) for frame in outer)

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        value = msg["value"]
        if not isinstance(value, Tensor):
            return
        gaussian = msg["infer"].get(GAUSSIAN_DRAW)
        if gaussian is None and isinstance(msg["fn"], Delta):
            # An autoguide's site is a Delta at a transform of its Gaussian draw: the
            # identity (the very tensor) for a real-valued weight.
            gaussian = _found(self._by_tensor.get(id(msg["fn"].v)), msg["fn"].v)
        if gaussian is None:
            return
        if len(self._by_tensor) > 1024:
            self._by_tensor = {
                key: found
                for key, found in self._by_tensor.items()
                if found[0]() is not None
            }
        self._by_tensor[id(value)] = (weakref.ref(value), gaussian)
        self._by_site[msg["name"]] = (weakref.ref(value), gaussian)

    def gaussian_of(self, name: str, value: Tensor) -> Gaussian | None:
        """The ``(loc, scale)`` that ``value`` was drawn from at site ``name``, if seen.

        Parameters
        ----------
        name: str
            The sample site.
        value: Tensor
            The site's value in the model (replayed from the guide).

        Returns
        -------
        tuple[Tensor, Tensor] or None
            The Gaussian, if this handler saw ``value`` drawn from one at ``name``.
        """
        return _found(self._by_site.get(name), value)

    def process(
        self, operation: AffineOperation, context: ForwardContext
    ) -> Tensor | None:
        """The output of ``operation``, or ``None`` to leave it to the plain path.

        Gathers the Gaussians of the operation's sites and the values drawn already
        (in Pyro mode by the guide; in torch_blue mode, within code run per sample,
        by the enclosing stacked call), then calls :meth:`estimate`. Declines where
        a site is not Gaussian (or, in Pyro mode, was not drawn from a recognised
        Gaussian, as by ``AutoDiagonalNormal``).

        Parameters
        ----------
        operation: AffineOperation
            The layer's operation.
        context: ForwardContext
            The forward context.

        Returns
        -------
        Tensor or None
            The output, or ``None``.
        """
        sites = operation.sites
        drawn = (
            [site.current_value() for site in sites]
            if context.pyro_mode or context.num_samples is None
            else None
        )
        found = (
            [context.gaussians.get(site.name) for site in sites]
            if context.pyro_mode
            else [site.gaussian_parameters() for site in sites]
        )
        gaussians = [gaussian for gaussian in found if gaussian is not None]
        if len(gaussians) < len(sites):
            return None
        return self.estimate(operation, context, gaussians, drawn)

    def estimate(
        self,
        operation: AffineOperation,
        context: ForwardContext,
        gaussians: list[Gaussian],
        drawn: list[Tensor] | None,
    ) -> Tensor | None:
        """The estimator's output for ``operation``; implemented by subclasses.

        Parameters
        ----------
        operation: AffineOperation
            The layer's operation.
        context: ForwardContext
            The forward context; ``num_samples`` tells whether the input leads with
            the sample dimension, ``sampler`` records log-probabilities.
        gaussians: list[tuple[Tensor, Tensor]]
            ``(mean, std)`` of the weight and, if present, the bias.
        drawn: list[Tensor] or None
            Their values where drawn already (their log-probabilities are then
            scored by the sampler or the ELBO), else ``None``: reading
            ``site.current_value()`` draws them.

        Returns
        -------
        Tensor or None
            The output, or ``None`` to leave it to the plain operation.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement estimate(operation, context, "
            "gaussians, drawn)"
        )


def _found(
    entry: tuple[weakref.ref[Tensor], Gaussian] | None, value: object
) -> Gaussian | None:
    """The Gaussian of ``entry`` if it was recorded for the very tensor ``value``."""
    if entry is None or entry[0]() is not value:
        return None
    return entry[1]


def _gaussian_of_distribution(fn: object) -> Gaussian | None:
    """``(loc, scale)`` of the site's event shape if ``fn`` is a normal over the site.

    ``Normal(loc, scale).to_event(...)`` (as autoguides such as ``AutoNormal`` draw)
    and :class:`~torch_blue_pyro.sites.NormalWeightPosterior` qualify, also expanded
    to batch dimensions (Pyro's particle plates) as long as all batch entries share
    one location and scale.
    """
    if isinstance(fn, NormalWeightPosterior):
        return fn.loc, fn.scale
    if not isinstance(fn, Independent) or not isinstance(fn.base_dist, Normal):
        return None
    event_shape = fn.event_shape
    if len(fn.base_dist.batch_shape) != len(fn.batch_shape) + len(event_shape):
        return None
    shared = []
    for parameter in (fn.base_dist.loc, fn.base_dist.scale):
        parameter = parameter.expand(fn.batch_shape + event_shape)
        leading = parameter.dim() - len(event_shape)
        if any(parameter.stride(dim) != 0 for dim in range(leading)):
            return None
        shared.append(parameter[(0,) * leading])
    return shared[0], shared[1]


class LocalReparameterizationMessenger(EstimatorMessenger):
    """Sample pre-activations from their Gaussian instead of weights."""

    kind = "local_reparameterization"

    def estimate(
        self,
        operation: AffineOperation,
        context: ForwardContext,
        gaussians: list[Gaussian],
        drawn: list[Tensor] | None,
    ) -> Tensor | None:
        """Draw the output from its marginal; record the closed-form KL if undrawn."""
        (weight_mean, weight_std), *bias = gaussians
        bias_mean, bias_std = bias[0] if bias else (None, None)
        if drawn is None and not _record_closed_form_kl(operation, context):
            return None
        kernel = (
            functional.linear_local_reparameterization
            if operation.kind == "linear"
            else functional.conv_local_reparameterization
        )
        return kernel(
            operation.input,
            weight_mean,
            weight_std,
            bias_mean,
            bias_std,
            num_samples=context.num_samples,
            **operation.options,
        )


def _record_closed_form_kl(operation: AffineOperation, context: ForwardContext) -> bool:
    r"""Put the closed-form KL of the operation's sites into the sampler's log-probs.

    Local reparameterization draws no weight, so the KL term is exact instead: the
    log prior column receives :math:`-\mathrm{KL}` and the log variational column 0,
    which :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss` turns into
    :math:`\mathrm{KL}`. Returns ``False`` (recording nothing) unless every site
    has a normal variational distribution and prior.
    """
    kls = [site.closed_form_kl() for site in operation.sites]
    present = [kl for kl in kls if kl is not None]
    if len(present) < len(kls):
        return False
    if context.sampler is not None:
        kl = torch.stack(present).sum()
        context.sampler.record(-kl, torch.zeros_like(kl))
    return True


class FlipoutMessenger(EstimatorMessenger):
    """Share one weight perturbation per sample, decorrelated by random signs."""

    kind = "flipout"

    def estimate(
        self,
        operation: AffineOperation,
        context: ForwardContext,
        gaussians: list[Gaussian],
        drawn: list[Tensor] | None,
    ) -> Tensor | None:
        """Perturb the mean output by the drawn weight's deviation, sign-flipped."""
        if drawn is None:
            drawn = [site.current_value() for site in operation.sites]
        (weight_mean, _), *_ = gaussians
        weight, *bias = drawn
        kernel = (
            functional.linear_flipout
            if operation.kind == "linear"
            else functional.conv_flipout
        )
        return kernel(
            operation.input,
            weight_mean,
            weight - weight_mean,
            bias[0] if bias else None,
            **operation.options,
        )


def local_reparameterization() -> LocalReparameterizationMessenger:
    r"""Handler: Linear and convolution layers use the local reparameterization trick.

    Each output element is drawn from
    :math:`\mathcal N(x \star \mu + \mu_b,\ x^2 \star \sigma^2 + \sigma_b^2)` (see
    :func:`~torch_blue_pyro.functional.linear_local_reparameterization` and
    :func:`~torch_blue_pyro.functional.conv_local_reparameterization`), and in
    torch_blue mode the KL term is the closed form.

    Returns
    -------
    LocalReparameterizationMessenger
        Use as a context manager.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> model = vi.VISequential(vi.VIConv1d(2, 4, 3), torch.nn.ReLU())
    >>> with local_reparameterization():
    ...     out = model(torch.randn(8, 2, 10), samples=5)
    >>> out.shape
    torch.Size([5, 8, 4, 8])
    """
    return LocalReparameterizationMessenger()


def flipout() -> FlipoutMessenger:
    r"""Handler: Linear and convolution layers use Flipout.

    One perturbation :math:`\Delta` of the weight mean is drawn per sample and
    flipped by random signs per example (per input and output channel of a
    convolution, shared by the positions); see
    :func:`~torch_blue_pyro.functional.linear_flipout` and
    :func:`~torch_blue_pyro.functional.conv_flipout`.

    Returns
    -------
    FlipoutMessenger
        Use as a context manager.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> layer = vi.VIConv2d(3, 8, 3, padding="same")
    >>> with flipout():
    ...     out = layer(torch.randn(16, 3, 12, 12), samples=4)
    >>> out.shape, out.log_probs.shape
    (torch.Size([4, 16, 8, 12, 12]), torch.Size([4, 2]))
    """
    return FlipoutMessenger()


def active_estimator() -> str | None:
    """The kind of the innermost estimator handler of this thread, or ``None``."""
    estimator = current_context().estimator
    return None if estimator is None else estimator.kind
