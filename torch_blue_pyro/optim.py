r"""Natural-gradient training of the layers' Gaussian variational parameters.

Adam moves every parameter by about its learning rate per step, whatever the size of
its gradient: a variational log-std trained by Adam ends where the initial value,
the learning rate and the number of steps put it, not where the data do.
:class:`VariationalOnlineNewton` instead takes natural-gradient steps on each
mean-field Gaussian factor :math:`q(w) = \mathcal N(\mu, \sigma^2)`, in the spirit of
the variational online Newton methods (Khan et al., 2018; IVON, Shen et al., 2024).
For a loss :math:`\mathcal L(\mu, \log\sigma)` (a negative ELBO: torch_blue's
:class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`, Pyro's ``Trace_ELBO``, or any
loss of the sampled outputs) whose KL term has the weight ``heat`` :math:`\eta`,
with precision :math:`\lambda = \sigma^{-2}`, each element takes the step

.. math::
    x = \operatorname{clip}_{[-1, 1]}\Bigl(\frac{\rho}{\eta}\,
    \frac{\partial\mathcal L}{\partial\log\sigma}\Bigr), \qquad
    \log\lambda \leftarrow \log\lambda + \operatorname{sign}(x)\,\log(1 + |x|),
    \qquad
    \mu \leftarrow \mu - \operatorname{clip}_{\pm r\sigma}\Bigl(
    \alpha\,\frac{\hat m / \eta}{\lambda + \delta}\Bigr),

where :math:`\hat m` is the bias-corrected momentum of
:math:`\partial\mathcal L / \partial\mu`, :math:`\alpha` is ``lr``, :math:`\rho`
``precision_lr``, :math:`\delta` ``damping`` and :math:`r` ``trust_radius``.

**Why this is a natural-gradient step.** Write the loss as
:math:`\mathcal L = \mathbb E_q[f(w)] - \eta\,\mathbb H[q]` (the data term plus
:math:`\eta` times the KL term, whose prior part is inside :math:`f`). Then

.. math::
    \frac{\partial\mathcal L}{\partial\log\sigma}
    = \sigma^2\,\mathbb E_q[f''(w)] - \eta
    = 2\sigma^2\,\frac{\partial\mathcal L}{\partial\sigma^2},

so to first order in :math:`\rho` the precision step is
:math:`\lambda \leftarrow (1 - \rho)\lambda + \rho\,\mathbb E_q[f'']/\eta`: the
natural-gradient update of a Gaussian's precision, a running average of the loss's
curvature. (Under the reparameterization :math:`w = \mu + \sigma\varepsilon` the
gradient on :math:`\log\sigma` is :math:`\sum_s f'(w_s)\,\sigma\varepsilon_s`,
Stein's estimate of that curvature, the one IVON uses; the optimizer needs no
access to the draws.) The exact form above grows the precision linearly, and for
:math:`x < 0` the variance linearly (:math:`\sigma^2 \leftarrow \sigma^2(1 +
|x|)`), so :math:`\sigma` stays positive, moves as far as its gradient asks, and no
step overshoots the curvature it measured. The clip of :math:`x` to
:math:`[-1, 1]` means that one step at most doubles or halves a precision: Stein's
estimates are heavy-tailed, and without the clip one outlier can throw a factor
(and, through it, the network) far off; it leaves the small steps near the optimum
untouched. The mean's step is a Newton step of
the tempered objective :math:`\mathcal L / \eta`, scaled by :math:`\alpha`,
preconditioned by the same precision, and never longer than :math:`r` of the
factor's own standard deviation (a trust region that keeps the first steps, while
the precision is still far from the curvature, from overshooting).

**Where it ends.** A fixed point of the update is a stationary point of
:math:`\mathcal L` in :math:`(\mu, \sigma)`, the variational optimum: it does not
depend on the initial :math:`\sigma`, on :math:`\alpha`, :math:`\rho` or
:math:`r`, nor on the number of steps. A weight that no data point touches ends at
its prior; one the data pin down ends at the curvature they give it. What the
rates do set is the Monte-Carlo and minibatch noise around that optimum: the
iterates fluctuate by a fraction of the posterior's width that grows like
:math:`\sqrt{\text{rate} \cdot N / (B\,\eta)}` (:math:`N` data points, batches of
:math:`B`), and reaching the optimum takes a few :math:`1/\rho` steps. So for a
cold posterior (small :math:`\eta`) or small batches, lower ``lr`` and
``precision_lr`` together and give it more steps (see the uncertainty page).

Use it with the loss at its natural scale, a sum over the data set
(``dataset_size`` in the torch_blue losses, a ``pyro.plate`` of the data set's size
in Pyro), and give it the loss's ``heat``. A wrong ``heat`` changes only the
speeds, not where the optimizer ends. Any other parameters of the model
(normalization layers, a learned noise, a ``NonBayesian`` weight) are not
Gaussian factors: train them with an ordinary optimizer over
:func:`point_parameters`.

References
----------
- Khan, Nielsen, Tangkaratt, Lin, Gal, Srivastava (2018). Fast and Scalable
  Bayesian Deep Learning by Weight-Perturbation in Adam. ICML.
- Lin, Schmidt, Khan (2020). Handling the Positive-Definite Constraint in the
  Bayesian Learning Rule. ICML.
- Shen, Daheim, Cong, Nickl, Marconi, Bazan, Yokota, Gurevych, Cremers, Khan,
  Möllenhoff (2024). Variational Learning is Effective for Large Deep Networks. ICML.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, overload

import pyro.optim
import torch
from torch import Tensor, nn

from .vi import VIModule
from .vi.distributions import HierarchicalPrior, MeanFieldNormal
from .vi.utils.validation import value_checks_enabled

__all__ = [
    "GaussianFactor",
    "PyroVariationalOnlineNewton",
    "VariationalOnlineNewton",
    "gaussian_factors",
    "point_parameters",
]


class GaussianFactor(NamedTuple):
    """One mean-field Gaussian factor of a model: its name and its two parameters.

    Attributes
    ----------
    name: str
        The module path and the variable, as the variable's Pyro sample site is
        named: ``"0.weight"`` for ``"0._weight_mean"``, ``"0.weight_tau"`` for a
        hyper-variable's ``"0._weight_tau_loc"``.
    mean: nn.Parameter
        The factor's mean (``_weight_mean``, or a hyper-variable's ``..._loc``).
    log_std: nn.Parameter
        Its log standard deviation (``_weight_log_std`` or ``..._log_scale``).
    """

    name: str
    mean: nn.Parameter
    log_std: nn.Parameter


def gaussian_factors(model: nn.Module) -> list[GaussianFactor]:
    """The mean-field Gaussian factors of every VIModule in ``model``.

    A factor is a random variable whose variational distribution is
    :class:`~torch_blue_pyro.vi.distributions.MeanFieldNormal` (its ``mean`` and
    ``log_std``), and each hyper-variable of a
    :class:`~torch_blue_pyro.vi.distributions.HierarchicalPrior` (a normal in the
    unconstrained space: its ``loc`` and ``log_scale``). Frozen ones (whose mean
    does not require grad) are left out.

    Parameters
    ----------
    model: nn.Module
        Any module; the VIModules in it are searched.

    Returns
    -------
    list[GaussianFactor]
        In the order of ``model.named_modules()``.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "model must be an nn.Module (the optimizer pairs each variational mean "
            f"with its log-std, which needs the modules), got {type(model).__name__}"
        )
    factors = []
    seen: set[int] = set()  # parameters tied between modules: one factor
    for path, module in model.named_modules():
        if not isinstance(module, VIModule):
            continue
        prefix = f"{path}." if path else ""
        for attribute_mean, attribute_log_std in _pairs_of(module):
            mean = getattr(module, attribute_mean)
            if mean.requires_grad and id(mean) not in seen:
                seen.add(id(mean))
                name = prefix + attribute_mean[1:].rsplit("_", 1)[0]
                factors.append(
                    GaussianFactor(name, mean, getattr(module, attribute_log_std))
                )
    return factors


def _pairs_of(module: VIModule) -> Iterator[tuple[str, str]]:
    """``(mean, log-std)`` attribute names of the module's own Gaussian factors."""
    parameter_name = module.variational_parameter_name
    for variable in module.random_variables or ():
        variational = module.variational_distribution[variable]
        if variational is None:  # a variable of shape None: no parameters
            continue
        if isinstance(variational, MeanFieldNormal):
            yield parameter_name(variable, "mean"), parameter_name(variable, "log_std")
        prior = module.prior[variable]
        if isinstance(prior, HierarchicalPrior):
            attributes = iter(prior.factor_attributes(module, variable))
            yield from zip(attributes, attributes, strict=True)


def point_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``model`` that are not Gaussian factors.

    What :class:`VariationalOnlineNewton` leaves to another optimizer: normalization
    layers, a learned observation noise, ``NonBayesian`` weights, plain layers.

    Parameters
    ----------
    model: nn.Module
        The model.

    Returns
    -------
    list[nn.Parameter]
        In the order of ``model.parameters()``.
    """
    covered = {
        id(parameter)
        for factor in gaussian_factors(model)
        for parameter in (factor.mean, factor.log_std)
    }
    return [
        parameter
        for parameter in model.parameters()
        if parameter.requires_grad and id(parameter) not in covered
    ]


def _number(value: Any) -> float:
    """``value`` as a float if it is a real number (not a bool), else NaN."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """Refuse hyperparameters that cannot work, naming them and their value."""
    for name in ("lr", "precision_lr", "trust_radius", "heat"):
        value = _number(group[name])
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"{name} must be a positive finite number, got {group[name]!r}"
            )
    momentum = _number(group["momentum"])
    if not 0 <= momentum < 1:
        raise ValueError(
            f"momentum must be a number in [0, 1), got {group['momentum']!r}"
        )
    damping = _number(group["damping"])
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(
            f"damping must be a finite number >= 0, got {group['damping']!r}"
        )


class VariationalOnlineNewton(torch.optim.Optimizer):
    r"""Natural-gradient steps on a model's mean-field Gaussian factors.

    Train the variational distributions of a model's Bayesian layers so that they
    reach the variational optimum set by the loss (see the module docstring for the
    update and why): each weight's std is set by the curvature the data give it
    (and by the prior where they give none), not by the learning rate and the
    number of steps. Use it in any torch training loop, with the gradients of
    :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`,
    :class:`~torch_blue_pyro.vi.AnalyticalKullbackLeiblerLoss` or a loss of your
    own; in Pyro, :class:`PyroVariationalOnlineNewton` wraps it for ``SVI``.

    It covers the factors listed by :func:`gaussian_factors`; train the other
    parameters (:func:`point_parameters`) with an ordinary optimizer.

    Parameters
    ----------
    model: nn.Module
        The model; its VIModules' Gaussian factors are trained.
    lr: float, default: 0.1
        :math:`\alpha`, the means' step as a fraction of a Newton step of the
        tempered objective. A learning rate scheduler changes it as it changes
        any ``lr``.
    precision_lr: float, default: 0.05
        :math:`\rho`, how fast the precision follows its curvature estimates:
        they are averaged over about :math:`1/\rho` steps. Smaller is less noisy
        and slower: a weight the data do not touch reaches its prior from a std
        :math:`k` times smaller in about :math:`\ln(k^2) / \rho` steps.
    momentum: float, default: 0.9
        Averaging of the means' gradients, :math:`\hat m`, bias-corrected; in
        :math:`[0, 1)`.
    damping: float, default: 0.0
        :math:`\delta`, added to the precision in the means' step only: bounds
        the step of a mean whose precision is small.
    trust_radius: float, default: 0.3
        :math:`r`: no mean moves further than this many of its own standard
        deviations in one step.
    heat: float, default: 1.0
        :math:`\eta`, the weight of the KL term in the loss
        (``KullbackLeiblerLoss(heat=...)``, or a ``pyro.poutine.scale`` of the
        weight sites in Pyro): the steps are those of the tempered objective
        :math:`\mathcal L / \eta`. Positive.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` (such as ``model.parameters()``).
    ValueError
        If the model has no trainable Gaussian factor, or a hyperparameter is out
        of range.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from torch_blue_pyro import vi
    >>> from torch_blue_pyro.optim import VariationalOnlineNewton
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> model = vi.VISequential(vi.VILinear(4, 16), nn.ReLU(), vi.VILinear(16, 3))
    >>> loss_fn = vi.KullbackLeiblerLoss(
    ...     vi.distributions.Categorical(), dataset_size=64
    ... )
    >>> optimizer = VariationalOnlineNewton(model)
    >>> loss = loss_fn(model(x, samples=4), y)
    >>> optimizer.zero_grad()
    >>> loss.backward()
    >>> optimizer.step()
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        precision_lr: float = 0.05,
        momentum: float = 0.9,
        damping: float = 0.0,
        trust_radius: float = 0.3,
        heat: float = 1.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "precision_lr": precision_lr,
            "momentum": momentum,
            "damping": damping,
            "trust_radius": trust_radius,
            "heat": heat,
        }
        _check_hyperparameters(defaults)
        factors = gaussian_factors(model)
        if not factors:
            raise ValueError(
                f"model ({type(model).__name__}) has no trainable mean-field "
                "Gaussian factor (a VIModule variable with a MeanFieldNormal "
                "variational distribution): nothing for VariationalOnlineNewton "
                "to train; use an ordinary optimizer"
            )
        params = [p for factor in factors for p in (factor.mean, factor.log_std)]
        super().__init__(params, defaults)
        self._names = {id(factor.mean): factor.name for factor in factors}

    @property
    def factor_names(self) -> list[str]:
        """The names of the trained factors, as :func:`gaussian_factors` gives them."""
        return list(self._names.values())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: its ``params`` alternate mean, log-std (as given at build).

        Parameters
        ----------
        param_group: dict
            ``{"params": [mean, log_std, ...], **hyperparameters}``.

        Raises
        ------
        ValueError
            If the group has an odd number of parameters, a mean and log-std of
            different shapes, or a hyperparameter out of range.
        """
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if len(params) % 2:
            raise ValueError(
                "a VariationalOnlineNewton param group lists (mean, log_std) pairs, "
                f"got {len(params)} parameters"
            )
        for mean, log_std in zip(params[::2], params[1::2], strict=True):
            if mean.shape != log_std.shape:
                raise ValueError(
                    "a mean and its log_std must have one shape, got "
                    f"{tuple(mean.shape)} and {tuple(log_std.shape)}"
                )
        super().add_param_group({**param_group, "params": params})
        _check_hyperparameters(self.param_groups[-1])

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one step on every factor that has a gradient.

        Parameters
        ----------
        closure: Callable, optional
            Re-evaluates the loss (with gradients) and returns it, as in torch.

        Returns
        -------
        float or None
            The closure's loss (as it returns it), if a closure was given.

        Raises
        ------
        ValueError
            While :func:`~torch_blue_pyro.vi.utils.value_checks_enabled` (Pyro's
            validation switch): if a gradient is not finite, naming the factor.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check = value_checks_enabled()
        for group in self.param_groups:
            params = group["params"]
            for mean, log_std in zip(params[::2], params[1::2], strict=True):
                if mean.grad is None and log_std.grad is None:
                    continue  # not used by this loss
                self._step_factor(mean, log_std, group, check)
        return loss

    def _step_factor(
        self, mean: Tensor, log_std: Tensor, group: dict[str, Any], check: bool
    ) -> None:
        grad_mean = mean.grad if mean.grad is not None else torch.zeros_like(mean)
        grad_log_std = (
            log_std.grad if log_std.grad is not None else torch.zeros_like(log_std)
        )
        if check:
            self._check_finite(mean, grad_mean, grad_log_std)
        state = self.state[mean]
        if not state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(mean)
        state["step"] += 1
        # Precision: log(lambda) += sign(x) log(1 + |x|), i.e. log_std -= half that;
        # |x| <= 1: at most doubled or halved in a step.
        x = grad_log_std.float() * (group["precision_lr"] / group["heat"])
        x = x.clamp_(-1.0, 1.0)
        log_std.sub_((0.5 * torch.sign(x) * torch.log1p(x.abs())).to(log_std.dtype))
        # Mean: a damped Newton step with the new precision, on the momentum.
        momentum = group["momentum"]
        buffer = state["momentum_buffer"]
        buffer.mul_(momentum).add_(grad_mean, alpha=(1 - momentum) / group["heat"])
        correction = 1 - momentum ** state["step"]
        precision = torch.exp(-2 * log_std)
        if group["damping"]:
            precision = precision + group["damping"]
        step = buffer / precision * (group["lr"] / correction)
        radius = group["trust_radius"] * log_std.exp()
        mean.sub_(torch.maximum(torch.minimum(step, radius), -radius))

    def _check_finite(
        self, mean: Tensor, grad_mean: Tensor, grad_log_std: Tensor
    ) -> None:
        finite = torch.isfinite(grad_mean).all() & torch.isfinite(grad_log_std).all()
        if not bool(finite):
            name = self._names.get(id(mean), "a factor added with add_param_group")
            raise ValueError(
                f"the gradient of {name!r} (its mean or log_std) holds NaN or inf: "
                "the loss diverged or the model's output is not finite; lower lr or "
                "precision_lr, or check the inputs"
            )


class PyroVariationalOnlineNewton(pyro.optim.PyroOptim):
    r""":class:`VariationalOnlineNewton` for ``pyro.infer.SVI``.

    ``SVI(model_fn, net.guide, PyroVariationalOnlineNewton(net), Trace_ELBO())``
    trains the network's Gaussian factors by natural-gradient steps on the ELBO.
    Every other parameter that SVI finds (a ``pyro.param`` of the model, the
    network's point parameters) goes to ``others``, an ordinary Pyro optimizer.

    Parameters
    ----------
    model: nn.Module
        The network whose factors are trained (a VIModule, or a module holding
        them).
    others: pyro.optim.PyroOptim, optional
        Trains the other parameters, e.g. ``pyro.optim.Adam({"lr": 1e-3})``.
        Without it, a step that meets another parameter raises a ``ValueError``.
    **hyperparameters: float
        ``lr``, ``precision_lr``, ``momentum``, ``damping`` of
        :class:`VariationalOnlineNewton`.

    Raises
    ------
    TypeError
        If ``others`` is not a ``pyro.optim.PyroOptim``.

    Examples
    --------
    >>> import pyro
    >>> from torch_blue_pyro import vi
    >>> from torch_blue_pyro.optim import PyroVariationalOnlineNewton
    >>> net = vi.VILinear(4, 2)
    >>> optim = PyroVariationalOnlineNewton(net, others=pyro.optim.Adam({"lr": 1e-2}))
    """

    def __init__(
        self,
        model: nn.Module,
        others: pyro.optim.PyroOptim | None = None,
        **hyperparameters: float,
    ) -> None:
        if others is not None and not isinstance(others, pyro.optim.PyroOptim):
            raise TypeError(
                "others must be a pyro.optim.PyroOptim (e.g. pyro.optim.Adam({...})), "
                f"got {type(others).__name__}"
            )
        self.optimizer = VariationalOnlineNewton(model, **hyperparameters)
        self.others = others
        self._covered = {
            id(p) for group in self.optimizer.param_groups for p in group["params"]
        }
        self._parameter_names = {id(p): name for name, p in model.named_parameters()}
        super().__init__(VariationalOnlineNewton, dict(hyperparameters))

    def __call__(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> None:
        """Step the factors among ``params`` and pass the others to ``others``.

        Parameters
        ----------
        params: Iterable[Tensor]
            The parameters SVI found in the traces (with their gradients).
        *args, **kwargs: Any
            Passed to ``others``.

        Raises
        ------
        ValueError
            If a parameter is not a factor of the model and there are no
            ``others``.
        """
        rest = [p for p in params if id(p) not in self._covered]
        if rest and self.others is None:
            names = [self._name(p) for p in rest]
            raise ValueError(
                f"PyroVariationalOnlineNewton trains the Gaussian factors of its "
                f"model only; SVI also found {names}: pass others=pyro.optim.Adam"
                "({...}) (or any PyroOptim) to train them"
            )
        self.optimizer.step()
        if rest:
            assert self.others is not None
            self.others(rest, *args, **kwargs)

    def _name(self, parameter: Tensor) -> str:
        name = self._parameter_names.get(id(parameter))
        if name is not None:
            return name
        store = pyro.get_param_store()
        try:
            return str(store.param_name(parameter))
        except KeyError:
            return f"a parameter of shape {tuple(parameter.shape)}"

    def get_state(self) -> dict[str, Any]:
        """The optimizer's state: the factors' and that of ``others``."""
        return {
            "factors": self.optimizer.state_dict(),
            "others": None if self.others is None else self.others.get_state(),
        }

    def set_state(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state`.

        Parameters
        ----------
        state_dict: dict
            As :meth:`get_state` returns it.
        """
        self.optimizer.load_state_dict(state_dict["factors"])
        if self.others is not None and state_dict["others"] is not None:
            self.others.set_state(state_dict["others"])
