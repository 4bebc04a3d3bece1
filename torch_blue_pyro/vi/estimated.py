r"""The layers' side of the estimator handlers: one forward pass for all of them.

Under :func:`~torch_blue_pyro.poutine.local_reparameterization` or
:func:`~torch_blue_pyro.poutine.flipout` a layer whose weight and bias are Gaussian
calls :func:`estimated_forward` with its two kernels (the math of its operation,
e.g. :func:`~torch_blue_pyro.functional.conv_flipout`); what the kernels need
(the Gaussians, the drawn perturbation, the closed-form KL) is gathered here, the
same way for every layer and in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..poutine.estimators import active_estimator, gaussian_of
from ..poutine.runtime import in_pyro_inference
from ..poutine.variational import active_sampler
from .base import current_num_samples
from .random_variable import RandomVariable

if TYPE_CHECKING:
    from .base import VIModule

#: ``(weight_mean, weight_std, bias_mean, bias_std) -> output``.
LocalReparameterizationKernel = Callable[
    [Tensor, Tensor, Tensor | None, Tensor | None], Tensor
]
#: ``(weight_mean, weight_delta, bias) -> output``; ``weight_delta`` and ``bias``
#: lead with the sample dimension in torch_blue mode.
FlipoutKernel = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def estimated_forward(
    module: VIModule,
    local_reparameterization: LocalReparameterizationKernel,
    flipout: FlipoutKernel,
) -> Tensor | None:
    r"""The output of ``module`` under the active estimator handler, if it applies.

    The module's random variables are its ``weight`` and, optionally, ``bias``
    (in that order). Their Gaussians :math:`(\mu, \sigma)` are, in torch_blue mode,
    the layer's own ``MeanFieldNormal`` parameters and, in Pyro mode, those that
    ``model.guide`` drew the values from (see ``gaussian_of`` in
    ``torch_blue_pyro.poutine.estimators``). Then

    * local reparameterization calls ``local_reparameterization(mu_W, sigma_W,
      mu_b, sigma_b)`` and draws no weight; in torch_blue mode the closed-form KL
      is recorded instead of the draws' log-probabilities (see
      :func:`record_closed_form_kl`). Where the weights were drawn already (in
      Pyro mode by the guide, in torch_blue mode by the per-sample forward of an
      enclosing module that does not handle the sample dimension), their
      log-probabilities are scored instead;
    * Flipout draws the weight (per sample in torch_blue mode) and calls
      ``flipout(mu_W, W - mu_W, b)``, with the drawn bias ``b``; the log-probs are
      those of the draws.

    Parameters
    ----------
    module: VIModule
        The layer.
    local_reparameterization: LocalReparameterizationKernel
        The layer's operation under local reparameterization, input bound.
    flipout: FlipoutKernel
        The layer's operation under Flipout, input bound.

    Returns
    -------
    Tensor or None
        ``None`` where the layer must draw its weights as usual: no estimator is
        active, a variable is not Gaussian (or, in Pyro mode, was not drawn from
        a marked Gaussian, e.g. by ``AutoDiagonalNormal``), the closed-form KL is needed
        (local reparameterization on undrawn weights) but the prior is not a
        ``MeanFieldNormal``. (Pyro's vectorized particles are the sample
        dimension here, as in torch_blue mode.)
    """
    estimator = active_estimator()
    if estimator is None:
        return None
    sites = [RandomVariable(module, name) for name in module._present_variables()]
    pyro_mode, num_samples = in_pyro_inference(), current_num_samples()
    # Drawn already: by the guide, or (torch_blue mode without a sample dimension)
    # by the per-sample forward of an enclosing module; the sampler holds their
    # log-probs then.
    drawn = (
        [getattr(module, site.variable) for site in sites]
        if pyro_mode or num_samples is None
        else None
    )
    found = (
        [gaussian_of(value) for value in drawn]
        if pyro_mode and drawn is not None
        else [site.gaussian_parameters() for site in sites]
    )
    gaussians = [gaussian for gaussian in found if gaussian is not None]
    if len(gaussians) < len(sites):
        return None
    (weight_mean, weight_std), *bias_gaussian = gaussians
    bias_mean, bias_std = bias_gaussian[0] if bias_gaussian else (None, None)
    if estimator == "local_reparameterization":
        if drawn is None and not record_closed_form_kl(sites):
            return None
        return local_reparameterization(weight_mean, weight_std, bias_mean, bias_std)
    if drawn is None:
        drawn = [getattr(module, site.variable) for site in sites]
    weight, *bias = drawn
    return flipout(weight_mean, weight - weight_mean, bias[0] if bias else None)


def record_closed_form_kl(sites: list[RandomVariable]) -> bool:
    r"""Put the closed-form KL of ``sites`` into the sampler's log-probs.

    Local reparameterization draws no weight, so the KL term is exact instead: the
    log prior column receives :math:`-\mathrm{KL}` and the log variational column 0,
    which :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss` turns into
    :math:`\mathrm{KL}`.

    Parameters
    ----------
    sites: list[RandomVariable]
        The layer's random variables.

    Returns
    -------
    bool
        ``False`` (recording nothing) unless every site has a normal variational
        distribution and prior.
    """
    kls = [site.closed_form_kl() for site in sites]
    present = [kl for kl in kls if kl is not None]
    if len(present) < len(kls):
        return False
    sampler = active_sampler()
    if sampler is not None:
        kl = torch.stack(present).sum()
        sampler.record(-kl, torch.zeros_like(kl))
    return True
