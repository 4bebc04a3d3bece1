"""VIModule: the base class of every Bayesian module, a PyroModule with torch_blue API.

A VIModule runs in one of two modes, chosen when its outermost instance is called:

* **torch_blue mode** (no Pyro handler active): ``model(x, samples=S)`` draws ``S``
  weight sets from the variational distributions, runs the forward pass once,
  vectorized over a leading sample dimension, and returns a
  :class:`~torch_blue_pyro.vi.VIReturn` carrying the ``(S, 2)`` log-probabilities.
* **Pyro mode** (under ``trace``, ``SVI``, ``Predictive``, ``MCMC``, ...): the module is
  a plain Pyro model; every random variable is one ``pyro.sample`` site drawn from its
  prior (or supplied by a guide), with no extra dimension.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn
from torch.nn import Parameter, init
from torch.nn.modules.conv import _ConvNd

from .._pyro_compat import (
    add_pyro_module_state,
    module_context,
    module_site_prefix,
    share_site_prefix,
    site_name,
)
from ..amp import accumulation_dtype, autocast_dtype
from ..guides import sample_from_variational
from ..poutine.context import (
    ForwardContext,
    SampledCall,
    current_context,
    swap_context,
)
from ..poutine.runtime import (
    check_particles_align,
    check_replayed,
    in_pyro_inference,
    local_param,
    weight_scope,
)
from ..poutine.variational import VariationalMessenger
from .distributions import (
    MeanFieldNormal,
    Prior,
    PyroPrior,
    VariationalDistribution,
)
from .normalization import RunningStatistics
from .per_sample import run_per_sample
from .random_variable import RandomVariable
from .utils.checks import distribution_instance, positive_int
from .utils.errors import NoVariablesError, UnsupportedDistributionError
from .utils.validation import all_finite, value_checks_enabled
from .utils.vi_return import VIReturn

_D = TypeVar("_D")


_SAMPLE_EXECUTIONS = ("auto", "stacked", "loop")


def current_num_samples() -> int | None:
    """``S`` while tensors carry torch_blue's leading sample dimension, else ``None``.

    During a torch_blue-mode call of the outermost module, the inputs and weights
    that a module with ``handles_sample_dim = True`` sees have a leading dimension of
    this size (as under Pyro's vectorized particles). It is ``None`` outside such a
    call, in Pyro mode without vectorized particles, and inside the per-sample
    (vmap) forward of a module written for one sample. It reads the
    :class:`~torch_blue_pyro.poutine.context.ForwardContext`.

    Returns
    -------
    int or None
        The number of weight samples being evaluated.
    """
    return current_context().num_samples


class _PriorOf:
    """The prior of one random variable, as a :class:`~pyro.nn.PyroSample` callable."""

    def __init__(self, variable: str) -> None:
        self.variable = variable

    def __call__(self, module: VIModule) -> TorchDistribution:
        return RandomVariable(module, self.variable).prior_pyro_distribution()


class VIModule(PyroModule):
    """Base class of Bayesian modules trained by variational inference.

    Use it like :class:`torch.nn.Module`. A module with random variables of its own
    passes their shapes as ``variable_shapes`` (``{"weight": (out, in), "bias":
    (out,)}``); each becomes

    * a :class:`~pyro.nn.PyroSample` site named by the module path plus the variable
      (``"0.weight"``), whose distribution is the variable's prior, and
    * ``nn.Parameter`` s holding its variational parameters, named
      ``_{variable}_{parameter}`` (``_weight_mean``, ``_weight_log_std``), so
      ``parameters()``, ``state_dict()`` and any torch optimizer work as usual.

    Inside ``forward``, reading ``self.weight`` gives the weight of the current draw:
    with a leading sample dimension in torch_blue mode, without one in Pyro mode. A
    module whose ``forward`` cannot handle that dimension (the default for user
    subclasses, e.g. ``F.linear(x, self.weight, self.bias)``) is run per sample with
    :func:`torch.vmap`; set the class attribute ``handles_sample_dim = True`` when the
    ``forward`` handles the leading sample dimension of weights and inputs itself, as
    the built-in layers do. Outside ``forward``, reading a random variable draws a
    fresh sample from its variational distribution. A variable whose shape is ``None``
    always reads as ``None``.

    Calling the outermost module without a Pyro handler active is torch_blue's
    autosampling: it accepts ``samples`` (default 10) and ``sampled_input`` and
    returns :class:`~torch_blue_pyro.vi.VIReturn` outputs with a leading sample
    dimension (see :meth:`sampled_forward`). Nested modules never add a dimension.
    The outermost module's attribute ``sample_execution`` (``"auto"``, ``"stacked"``
    or ``"loop"``) chooses whether the samples run in one stacked pass or one after
    another on pre-drawn weights; ``"auto"`` loops for convolution networks on the
    CPU, and under ``torch.autocast`` for networks with modules written for one
    sample. The results are the same; only speed, memory and (under autocast)
    precision differ.

    Parameters
    ----------
    variable_shapes: Mapping[str, tuple[int, ...] or None], optional
        The random variables, in order, and their shapes. ``None`` (the default)
        makes a module without random variables of its own, such as a container.
    variational_distribution: VariationalDistribution or list, default MeanFieldNormal()
        One distribution for all variables, or one per variable in order.
    prior: Prior or list, default: MeanFieldNormal()
        One prior for all variables, or one per variable in order. A
        ``pyro.distributions`` distribution is accepted too (see
        :class:`~torch_blue_pyro.vi.distributions.PyroPrior`); a prior with
        hyper-variables of its own is a
        :class:`~torch_blue_pyro.vi.distributions.HierarchicalPrior` (such as the
        :class:`~torch_blue_pyro.vi.distributions.Horseshoe`), whose variational
        factors become ``nn.Parameter`` s of the module too.
    rescale_prior: bool, default: False
        Scale the priors with the layer width (see
        :meth:`~torch_blue_pyro.vi.distributions.Prior.kaiming_rescale`).
    kaiming_initialization: bool, default: True
        Scale the initial non-primary variational parameters with the fan-in.
    prior_initialization: bool, default: False
        Initialize the variational parameters to the prior.
    return_log_probs: bool, default: True
        Whether outputs carry log-probabilities (needed by
        :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`; switch off to predict).
    device: torch.device, optional
        Device of the parameters.
    dtype: torch.dtype, optional
        Dtype of the parameters.
    convert_overwrite: bool, default: False
        Keep the module's existing ``nn.Module`` state (its submodules and
        attributes) instead of initializing it: used by
        :func:`~torch_blue_pyro.vi.convert_to_vimodule` on a module whose class it
        has just swapped.

    Raises
    ------
    UnsupportedDistributionError
        If a distribution cannot play the role it is given.
    ValueError
        If a prior does not fit its variable's shape (see
        :meth:`~torch_blue_pyro.vi.distributions.Prior.bind`).
    """

    handles_sample_dim: ClassVar[bool] = False
    #: How the outermost call evaluates its ``S`` samples: ``"stacked"`` (one pass on
    #: weights and inputs with a leading sample dimension), ``"loop"`` (one pass per
    #: sample, on that sample's weights) or ``"auto"``: ``"stacked"`` when an
    #: estimator handler (local reparameterization, Flipout) is active; under
    #: ``torch.autocast``, ``"loop"`` exactly when the network has modules written for
    #: one sample (converted or custom ones without ``handles_sample_dim``, which the
    #: stacked pass runs under vmap, in full precision); otherwise ``"loop"`` for a
    #: network with convolution layers on the CPU, where a batch of one sample's
    #: feature maps stays in cache, else ``"stacked"``. All three give the same
    #: results (the weights are drawn stacked first in every case, and normalization
    #: layers keep per-sample statistics); set it on the outermost module.
    sample_execution: str = "auto"
    #: The arguments of ``forward`` that carry data, by name: the outermost call gives
    #: them the leading sample dimension (positional or keyword). ``None`` (the
    #: default) means every positional tensor argument, as in torch_blue. Anything
    #: else (masks, flags) is passed through as given, shared by all samples; a
    #: tensor passed several times stays one tensor (``mha(x, x, x)`` is still
    #: self-attention).
    sampled_inputs: ClassVar[tuple[str, ...] | None] = None
    _return_log_probs: bool = True
    #: Whether a direct call autosamples: true until the module becomes a
    #: descendant of another VIModule (see :meth:`gather_log_probs`).
    _has_sampling_responsibility: bool = True

    def __init__(
        self,
        variable_shapes: Mapping[str, tuple[int, ...] | None] | None = None,
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution] = MeanFieldNormal(),
        prior: Prior | Sequence[Prior] = MeanFieldNormal(),
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        convert_overwrite: bool = False,
    ) -> None:
        if convert_overwrite:
            add_pyro_module_state(self)
            for child in self.children():  # converted bottom-up: they exist
                _mark_nested(child)
        else:
            super().__init__()
        self._return_log_probs = return_log_probs
        if variable_shapes is None:
            return
        shapes = _validated_shapes(variable_shapes)
        names = tuple(shapes)
        variational = _one_per_variable(
            variational_distribution,
            names,
            VariationalDistribution,
            "variational_distribution",
            "a variational distribution",
        )
        priors = _one_per_variable(
            _wrap_pyro_priors(prior), names, Prior, "prior", "a prior"
        )
        self.__dict__["_variable_shapes"] = shapes
        self.variational_distribution: dict[str, VariationalDistribution | None] = {
            name: dist if shapes[name] is not None else None
            for name, dist in zip(names, variational, strict=True)
        }
        self.prior: dict[str, Prior | None] = {
            name: dist if shapes[name] is not None else None
            for name, dist in zip(names, priors, strict=True)
        }
        self._kaiming_init = kaiming_initialization
        self._prior_init = prior_initialization
        if rescale_prior:
            fan_in = _fan_in(shapes)
            for each_prior in self.prior.values():
                if each_prior is not None:
                    each_prior.kaiming_rescale(fan_in)

        for name, shape in shapes.items():
            dist = self.variational_distribution[name]
            if shape is None or dist is None:
                continue
            for parameter in dist.distribution_parameters:
                attribute = self.variational_parameter_name(name, parameter)
                empty = torch.empty(shape, device=device, dtype=dtype)
                setattr(self, attribute, Parameter(empty))
            prior_of_variable = self.prior[name]
            assert prior_of_variable is not None
            prior_of_variable.bind(self, name)
            site = PyroSample(_PriorOf(name))  # type: ignore[arg-type]
            setattr(self, name, site)
        self.reset_variational_parameters()

    # ------------------------------------------------------------------ variables
    @property
    def random_variables(self) -> tuple[str, ...] | None:
        """Names of the module's own random variables, or ``None`` if it has none."""
        shapes = self.__dict__.get("_variable_shapes")
        return None if shapes is None else tuple(shapes)

    @staticmethod
    def variational_parameter_name(variable: str, variational_parameter: str) -> str:
        """The attribute name of a variational parameter: ``_{variable}_{parameter}``.

        Parameters
        ----------
        variable: str
            The random variable, e.g. ``"weight"``.
        variational_parameter: str
            The parameter of its variational distribution, e.g. ``"log_std"``.

        Returns
        -------
        str
            E.g. ``"_weight_log_std"``.
        """
        return f"_{variable}_{variational_parameter}"

    def _require_variables(self, action: str) -> tuple[str, ...]:
        variables = self.random_variables
        if variables is None:
            raise NoVariablesError(
                f"{type(self).__name__} has no random variables {action}"
            )
        return variables

    def _require_known(self, variable: str, action: str) -> None:
        variables = self._require_variables(action)
        if variable not in variables:
            raise KeyError(
                f"{type(self).__name__} has no random variable {variable!r}; "
                f"its random variables are {variables}"
            )

    def _require_variable(self, variable: str, action: str) -> None:
        self._require_known(variable, action)
        if self.variational_distribution[variable] is None:
            raise NoVariablesError(f"{variable} is None and has no parameters {action}")

    def get_variational_parameters(self, variable: str) -> list[Tensor]:
        """The variational parameters of one variable, in its distribution's order.

        Parameters
        ----------
        variable: str
            A name from :attr:`random_variables`.

        Returns
        -------
        list[Tensor]
            E.g. ``[_weight_mean, _weight_log_std]``.

        Raises
        ------
        NoVariablesError
            If the module has no random variables or ``variable`` is ``None``.
        """
        shapes = self.__dict__.get("_variable_shapes")
        dist = self.variational_distribution.get(variable) if shapes else None
        if dist is None or variable not in shapes:  # type: ignore[operator]
            self._require_variable(variable, "to get")  # raises, naming the problem
        assert dist is not None
        # Called several times per weight and forward pass: read the parameters from
        # nn.Module's registry, not through the __getattr__ chain.
        registered = self.__dict__["_parameters"]
        values = []
        for parameter in dist.distribution_parameters:
            name = self.variational_parameter_name(variable, parameter)
            value = registered.get(name)
            values.append(getattr(self, name) if value is None else value)
        return values

    def reset_variational_parameters(self) -> None:
        """(Re-)initialize the variational parameters of the module's own variables.

        Raises
        ------
        NoVariablesError
            If the module has no random variables.
        """
        variables = self._require_variables("to reset")
        shapes = self.__dict__["_variable_shapes"]
        fan_in = _fan_in(shapes)
        for variable in variables:
            dist = self.variational_distribution[variable]
            if dist is None:
                continue
            dist.reset_variational_parameters(
                self, variable, fan_in, self._kaiming_init
            )
            prior = self.prior[variable]
            assert prior is not None
            prior.reset_learned_parameters(self, variable)
            if self._prior_init:
                prior.reset_parameters_to_prior(self, variable)

    def sample_variable(self, variable: str) -> Tensor | None:
        """Draw one sample of a variable from its variational distribution.

        Parameters
        ----------
        variable: str
            A name from :attr:`random_variables`.

        Returns
        -------
        Tensor or None
            A differentiable sample of the variable's shape (``None`` for a variable
            whose shape is ``None``). Nothing is recorded: log-probabilities are only
            collected during a forward pass.

        Raises
        ------
        NoVariablesError
            If the module has no random variables.
        """
        self._require_known(variable, "to sample")
        if self.variational_distribution[variable] is None:
            return None
        return RandomVariable(self, variable).sample()

    def get_log_probs(self, sample: Tensor, variable: str) -> Tensor:
        """``[log prior, log variational]`` of a sample of one variable.

        Parameters
        ----------
        sample: Tensor
            A value of the variable's shape.
        variable: str
            A name from :attr:`random_variables`.

        Returns
        -------
        Tensor
            Shape ``(2,)``: the log prior and log variational probability, each summed
            over the elements.

        Raises
        ------
        NoVariablesError
            If the module has no random variables.
        """
        self._require_variable(variable, "to score")
        return RandomVariable(self, variable).log_probs(sample)

    def reset_log_probs(self) -> None:
        """Forget the log-probabilities recorded by direct calls of nested modules.

        See :meth:`gather_log_probs`. Reading a weight outside ``forward`` records
        nothing, so it cannot leak into the next call's log-probabilities.
        """
        for module in self.modules():
            module.__dict__.pop("_log_probs", None)

    def gather_log_probs(self) -> Tensor:
        """The log-probabilities recorded by direct calls of nested modules; reset them.

        As in torch_blue, a VIModule that is a descendant of another VIModule (a
        layer of a ``VISequential``, say) gives up autosampling: called directly,
        outside a call of its outermost module, it draws one sample of each of its
        random variables, returns its plain output without a sample dimension and
        records the draws' ``[log prior, log variational]``. This gathers them from
        this module and all below it: per random variable the mean over the recorded
        calls, summed over the variables.

        Returns
        -------
        Tensor
            Shape ``(2,)``: [log prior, log variational]; zeros if nothing was
            recorded.
        """
        gathered = []
        for module in self.modules():
            for records in module.__dict__.pop("_log_probs", {}).values():
                gathered.append(torch.stack(records).mean(dim=0))
        if not gathered:
            reference = next(iter(self.parameters()), torch.zeros(()))
            return reference.new_zeros(2, dtype=accumulation_dtype(reference.dtype))
        return torch.stack(gathered).sum(dim=0)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        """Register a submodule; VIModules below it give up autosampling.

        Parameters
        ----------
        name: str
            The attribute name.
        module: nn.Module, optional
            The submodule.
        """
        super().add_module(name, module)
        if module is not None:
            _mark_nested(module)

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if isinstance(value, nn.Module):
            _mark_nested(value)

    @property
    def return_log_probs(self) -> bool:
        """Whether outputs carry log-probabilities; setting it sets all submodules."""
        return self._return_log_probs

    @return_log_probs.setter
    def return_log_probs(self, mode: bool) -> None:
        for module in self.modules():
            if isinstance(module, VIModule):
                module._return_log_probs = bool(mode)

    # ------------------------------------------------------------ Pyro plumbing
    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        shapes = state.get("_variable_shapes")
        if shapes is not None and name in shapes:
            if shapes[name] is None:
                return None
            draws = current_context().draws
            if draws:
                value = draws.get(site_name(module_site_prefix(self), name))
                if value is not None:
                    return value
            if not module_context(self).active:
                return RandomVariable(self, name).sample()
            return super().__getattr__(name)  # the PyroSample site
        # Own parameters and submodules are returned as they are: Pyro's global param
        # store must not hold them (several models with the same names would share it).
        for store in ("_parameters", "_modules"):
            members = state.get(store)
            if members is not None and name in members:
                return members[name]
        return super().__getattr__(name)

    def _bind_submodules(self) -> dict[str, RandomVariable]:
        """Name every sub-PyroModule's sites from this module and share its context.

        Pyro names a submodule's sites only through chains of PyroModules; this also
        covers VIModules inside plain ``nn.Module`` containers.

        Returns
        -------
        dict[str, RandomVariable]
            Every random variable below (and of) this module, by site name.
        """
        prefix, context = module_site_prefix(self), module_context(self)
        sites: dict[str, RandomVariable] = {}
        for path, module in self.named_modules():
            if module is not self and isinstance(module, PyroModule):
                share_site_prefix(module, site_name(prefix, path), context)
            if isinstance(module, VIModule):
                for variable in module._present_variables():
                    site = RandomVariable(module, variable)
                    sites[site.name] = site
        return sites

    def _present_variables(self) -> list[str]:
        shapes = self.__dict__.get("_variable_shapes") or {}
        return [name for name, shape in shapes.items() if shape is not None]

    def guide(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """A Pyro guide: every random variable drawn from its variational distribution.

        Takes (and ignores) the model's arguments, so ``SVI(model_fn, net.guide,
        optim, Trace_ELBO())`` trains the same ``nn.Parameter`` s as
        :class:`~torch_blue_pyro.vi.KullbackLeiblerLoss`.

        Returns
        -------
        dict[str, Tensor]
            The drawn value of every site, by name.
        """
        return sample_from_variational(self._bind_submodules().values())

    def _announce_deterministic_parameters(
        self, sites: Mapping[str, RandomVariable]
    ) -> None:
        """Announce every parameter that is not variational as a local Pyro param."""
        variational = {
            id(parameter)
            for site in sites.values()
            for _, parameter in site.named_variational_parameters()
        }
        prefix = module_site_prefix(self)
        for name, parameter in self.named_parameters():
            if id(parameter) not in variational:
                local_param(site_name(prefix, name), parameter)

    # -------------------------------------------------------------- calling
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module: autosampling when outermost in torch_blue mode, see class."""
        context = current_context()
        if context.in_call:
            if context.num_samples is not None and not self.handles_sample_dim:
                return self._call_per_sample(args, kwargs)
            return super().__call__(*args, **kwargs)
        if in_pyro_inference():
            for keyword in ("samples", "sampled_input"):
                if keyword in kwargs:
                    raise TypeError(
                        f"{keyword} is for torch_blue's autosampling; under a Pyro "
                        "handler the model is a plain Pyro model (for several "
                        "draws use the ELBO's num_particles or Predictive's "
                        "num_samples)"
                    )
            return self._pyro_forward(args, kwargs)
        if not self._has_sampling_responsibility:
            return self._single_sample_forward(args, kwargs)
        return self.sampled_forward(*args, **kwargs)

    def _single_sample_forward(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A nested module called directly: one draw, recorded (gather_log_probs)."""
        for keyword in ("samples", "sampled_input"):
            if keyword in kwargs:
                raise TypeError(
                    f"{keyword} is for the outermost module: {type(self).__name__} is "
                    "part of another VIModule, so called directly it runs on one "
                    "weight sample, as in torch_blue (call the outermost module, or "
                    "build this one on its own, to autosample)"
                )
        sites = self._bind_submodules()
        sampler = VariationalMessenger(1, sites, self._return_log_probs)
        with sampler, module_context(self):
            draws = {name: draw[0] for name, draw in _draw(sites).items()}
            output = _call_in(
                current_context().replace(in_call=True, draws=draws),
                PyroModule.__call__,
                self,
                *args,
                **kwargs,
            )
        if self._return_log_probs:
            for name, log_probs in sampler.site_log_probs().items():
                site = sites[name]
                records = site.module.__dict__.setdefault("_log_probs", {})
                records.setdefault(site.variable, []).append(log_probs[0])
        return output

    def sampled_forward(
        self,
        *input_: Any,
        samples: int = 10,
        sampled_input: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Forward pass over ``samples`` weight draws at once (torch_blue autosampling).

        The outermost module's call comes here. Every input tensor named by
        :attr:`sampled_inputs` (by default every positional one) gains a leading
        sample dimension (a stride-0 view, no copy; other arguments pass through),
        every random variable is drawn ``samples`` times from its variational
        distribution, and the forward pass runs once on the stacked draws.

        Parameters
        ----------
        input_: Tensor
            The inputs of ``forward``.
        samples: int, default: 10
            ``S``, the number of weight draws; a positive int.
        sampled_input: bool, default: False
            The inputs already have the leading sample dimension; ``S`` is its size
            and ``samples`` is ignored.
        kwargs: Any
            Further keyword arguments of ``forward``.

        Returns
        -------
        VIReturn or tuple[VIReturn, ...]
            Each output tensor with shape ``(S, *)`` and ``log_probs`` of shape
            ``(S, 2)`` ([log prior, log variational] per draw), or ``None`` with
            ``return_log_probs=False``.

        Raises
        ------
        ValueError
            If ``samples`` is not a positive int or sampled inputs disagree on ``S``.
        TypeError
            If an input is not a tensor.
        """
        sampled = _sampled_inputs(type(self))
        declared = {
            index: value
            for index, value in enumerate(input_)
            if sampled.positional(index)
        }
        for index, value in declared.items():
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"{type(self).__name__} expects tensors as inputs, got "
                    f"{type(value).__name__} for input {index}"
                )
        tensors = [x for x in input_ if isinstance(x, Tensor)]
        if sampled_input:
            num_samples = _sample_dim_of(
                [x for x in declared.values() if x is not None]
            )
            args: tuple[Any, ...] = input_
        else:
            num_samples = positive_int(samples, "samples")
            args, kwargs = self._with_sample_dim(num_samples, input_, kwargs)
        sites = self._bind_submodules()
        sampler = VariationalMessenger(num_samples, sites, self._return_log_probs)
        with sampler:
            output = self._stacked_forward(num_samples, args, kwargs)
        if value_checks_enabled():
            _name_non_finite_parameters(output, sites)
        log_probs = None
        if self._return_log_probs:
            reference: Tensor = next(
                iter(self.parameters()), tensors[0] if tensors else torch.zeros(())
            )
            log_probs = sampler.log_probs(reference)
        return _attach_log_probs(output, log_probs)

    def _pyro_forward(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The outermost call in Pyro mode: a plain Pyro model.

        Every weight site is drawn first, outside any data plate that encloses the
        call (weights are global; see
        :func:`~torch_blue_pyro.poutine.runtime.weight_scope`). Under vectorized
        particles (``Trace_ELBO(vectorize_particles=True)``, ``Predictive(...,
        parallel=True)``) the ``K`` particles' weights become one leading sample
        dimension, the forward pass runs once on them as in torch_blue mode, and the
        output leads with the particle dimension.
        """
        sites = self._bind_submodules()
        check_replayed(
            [
                name
                for site in sites.values()
                for name in (*site.hyper_site_names(), site.name)
            ]
        )
        self._announce_deterministic_parameters(sites)
        with module_context(self):
            with weight_scope() as num_particles:
                draws = _draw(sites)
            context = current_context().replace(
                in_call=True, pyro_mode=True, gaussians=_guide_gaussians(draws)
            )
            if num_particles is None:
                return _call_in(context, PyroModule.__call__, self, *args, **kwargs)
            check_particles_align(args, list(sites))
            particles = {
                name: value.reshape(-1, *sites[name].shape).expand(
                    num_particles, *sites[name].shape
                )
                for name, value in draws.items()
            }
            args, kwargs = self._with_sample_dim(num_particles, args, kwargs)
            return self._stacked_forward(
                num_particles, args, kwargs, context.replace(draws=particles)
            )

    def _with_sample_dim(
        self, num_samples: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The inputs with the declared ones expanded to ``S`` samples (no copy).

        See :attr:`sampled_inputs`. Each distinct tensor is expanded once, so an
        input passed twice stays one tensor.
        """
        sampled = _sampled_inputs(type(self))
        views: dict[int, Tensor] = {}

        def expanded(value: Any) -> Any:
            if not isinstance(value, Tensor):
                return value
            view = views.get(id(value))
            if view is None:
                view = views[id(value)] = value.expand(num_samples, *value.shape)
            return view

        new_args = tuple(
            expanded(x) if sampled.positional(index) else x
            for index, x in enumerate(args)
        )
        new_kwargs = {
            name: expanded(x) if sampled.keyword(name) else x
            for name, x in kwargs.items()
        }
        return new_args, new_kwargs

    def _stacked_forward(
        self,
        num_samples: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: ForwardContext | None = None,
    ) -> Any:
        """Run ``forward`` on inputs and weights leading with ``S`` stacked samples.

        ``context`` (by default the current one) is extended by the sample
        dimension and this call. The running statistics of normalization layers are
        updated once, when the forward pass has succeeded (see
        :mod:`~torch_blue_pyro.vi.normalization`).
        """
        statistics = RunningStatistics.of(self, num_samples)
        loop = self._loops_over_samples()
        stacked = (current_context() if context is None else context).replace(
            in_call=True,
            num_samples=num_samples,
            call=SampledCall(
                num_samples, self, statistics, "loop" if loop else "stacked"
            ),
        )
        if loop:
            output = _call_in(stacked, self._call_per_sample, args, kwargs, loop=True)
        elif self.handles_sample_dim:
            output = _call_in(stacked, PyroModule.__call__, self, *args, **kwargs)
        else:
            output = _call_in(stacked, self._call_per_sample, args, kwargs)
        if statistics is not None:
            statistics.commit()
        return output

    def _loops_over_samples(self) -> bool:
        """Whether this outermost module runs its samples one by one (see class)."""
        execution = self.sample_execution
        if execution not in _SAMPLE_EXECUTIONS:
            raise ValueError(
                f"sample_execution must be one of {_SAMPLE_EXECUTIONS}, got "
                f"{execution!r}"
            )
        if execution != "auto":
            return execution == "loop"
        if current_context().estimator is not None:
            # The estimators draw outputs, not weights: they need the stacked pass.
            return False
        parameter = next(self.parameters(), None)
        device_type = "cpu" if parameter is None else parameter.device.type
        if autocast_dtype(device_type) is not None:
            # Code run per sample under vmap runs in full precision (see
            # run_per_sample); a loop runs it in the autocast dtype.
            return any(
                isinstance(module, VIModule) and not type(module).handles_sample_dim
                for module in self.modules()
            )
        # The flag is read from the class: a missing instance attribute would go
        # through nn.Module's and Pyro's __getattr__ and raise, for every module.
        return device_type == "cpu" and any(
            isinstance(module, _ConvNd)
            or getattr(type(module), "_is_convolution", False)
            for module in self.modules()
        )

    def _call_per_sample(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], loop: bool = False
    ) -> Any:
        """Run ``forward`` on each of the ``S`` draws, as written for one sample.

        Every random variable of this subtree is drawn (stacked) first; each access
        then reads its own draw (the context's ``draws``), so ``self.weight`` has
        the variable's shape and built-in submodules take their single-sample path.
        The samples run under :func:`torch.vmap`, or with ``loop`` one after another
        (see :func:`~torch_blue_pyro.vi.per_sample.run_per_sample`).
        """
        context = current_context()
        call = context.call
        assert call is not None and call.num_samples == context.num_samples
        sampled = _sampled_inputs(type(self))
        sampled_kwargs = {
            name: value
            for name, value in kwargs.items()
            if sampled.keyword(name) and value is not None
        }
        shared_kwargs = {
            name: value for name, value in kwargs.items() if name not in sampled_kwargs
        }
        with module_context(self):
            draws = _draw(self._bind_submodules())

            def forward_one_sample(
                weights: dict[str, Tensor], *inputs: Any, **sampled_one: Tensor
            ) -> Any:
                one_sample = context.replace(
                    num_samples=None, draws={**context.draws, **weights}
                )
                return _call_in(
                    one_sample,
                    PyroModule.__call__,
                    self,
                    *inputs,
                    **shared_kwargs,
                    **sampled_one,
                )

            return run_per_sample(
                call,
                self,
                forward_one_sample,
                args,
                draws,
                loop,
                sampled.positions,
                sampled_kwargs,
            )


def _call_in(context: ForwardContext, function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` with ``context`` installed, then the previous."""
    previous = swap_context(context)
    try:
        return function(*args, **kwargs)
    finally:
        swap_context(previous)


def _guide_gaussians(draws: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """In Pyro mode, the Gaussians the guide drew the sites from, where known.

    Only an estimator handler needs them; it recognises the guide's draws (see
    :meth:`~torch_blue_pyro.poutine.EstimatorMessenger.gaussian_of`).
    """
    estimator = current_context().estimator
    if estimator is None:
        return {}
    gaussians = {}
    for name, value in draws.items():
        gaussian = estimator.gaussian_of(name, value)
        if gaussian is not None:
            gaussians[name] = gaussian
    return gaussians


@dataclasses.dataclass(frozen=True)
class _SampledInputs:
    """Which arguments of a module's ``forward`` carry the sample dimension.

    Attributes
    ----------
    positions: frozenset[int] or None
        The positions of the declared inputs; ``None``: every positional argument.
    names: frozenset[str]
        The declared names, which also count when passed by keyword.
    """

    positions: frozenset[int] | None
    names: frozenset[str]

    def positional(self, index: int) -> bool:
        """Whether the positional argument at ``index`` carries the samples."""
        return self.positions is None or index in self.positions

    def keyword(self, name: str) -> bool:
        """Whether the keyword argument ``name`` carries the samples."""
        return name in self.names


@functools.cache
def _sampled_inputs(module_type: type[VIModule]) -> _SampledInputs:
    """The :attr:`VIModule.sampled_inputs` of a class, resolved against ``forward``.

    Raises
    ------
    TypeError
        If a declared name is not a positional argument of ``forward``.
    """
    names = module_type.sampled_inputs
    if names is None:
        return _SampledInputs(None, frozenset())
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    parameters = [
        parameter.name
        for parameter in inspect.signature(module_type.forward).parameters.values()
        if parameter.kind in positional
    ][1:]  # without self
    unknown = [name for name in names if name not in parameters]
    if unknown:
        raise TypeError(
            f"{module_type.__name__}.sampled_inputs names {unknown}, which are not "
            f"positional arguments of its forward {tuple(parameters)}"
        )
    return _SampledInputs(
        frozenset(parameters.index(name) for name in names), frozenset(names)
    )


def _mark_nested(module: nn.Module) -> None:
    """The VIModules in ``module`` (itself included) are nested: no autosampling."""
    for submodule in module.modules():
        if isinstance(submodule, VIModule):
            submodule.__dict__["_has_sampling_responsibility"] = False


def _draw(sites: Mapping[str, RandomVariable]) -> dict[str, Tensor]:
    """Each site's value in the running call: its ``pyro.sample``, cached by Pyro."""
    return {name: getattr(site.module, site.variable) for name, site in sites.items()}


def _validated_shapes(
    variable_shapes: Mapping[str, tuple[int, ...] | None],
) -> dict[str, tuple[int, ...] | None]:
    if not isinstance(variable_shapes, Mapping):
        raise TypeError(
            "variable_shapes must map variable names to shapes, got "
            f"{type(variable_shapes).__name__}"
        )
    shapes: dict[str, tuple[int, ...] | None] = {}
    for name, shape in variable_shapes.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"variable_shapes keys must be identifiers, got {name!r}")
        if shape is None:
            shapes[name] = None
            continue
        dims = tuple(shape) if isinstance(shape, Sequence) else (shape,)
        if not all(isinstance(d, numbers.Integral) and d > 0 for d in dims):
            raise ValueError(
                f"variable_shapes[{name!r}] must be a tuple of positive ints or None, "
                f"got {shape!r}"
            )
        shapes[name] = tuple(int(d) for d in dims)
    return shapes


def _one_per_variable(
    given: _D | Sequence[_D],
    names: tuple[str, ...],
    role: type,
    argument: str,
    role_text: str,
) -> list[_D]:
    """A private copy of the distribution per variable, each checked for its role."""
    if isinstance(given, (list, tuple)):
        if len(given) != len(names):
            raise ValueError(
                f"{argument} must be one distribution or a list of one per random "
                f"variable {names}, got a list of {len(given)}"
            )
        dists = list(given)
    else:
        dists = [given] * len(names)
    for dist in dists:
        distribution_instance(dist, argument)
        if not isinstance(dist, role):
            raise UnsupportedDistributionError(
                f"{type(dist).__name__} cannot be used as {role_text} ({argument})"
            )
    return [copy.deepcopy(dist) for dist in dists]


def _wrap_pyro_priors(prior: Any) -> Any:
    """Wrap Pyro/torch distributions given as priors in :class:`PyroPrior`."""
    if isinstance(prior, torch.distributions.Distribution):
        return PyroPrior(prior)
    if isinstance(prior, (list, tuple)):
        return [_wrap_pyro_priors(each) for each in prior]
    return prior


def _fan_in(shapes: Mapping[str, tuple[int, ...] | None]) -> int:
    """Fan-in of the first variable with at least two dimensions (torch's rule)."""
    present = [shape for shape in shapes.values() if shape is not None]
    if not present:
        raise NoVariablesError("All module variables are set to None.")
    for shape in present:
        if len(shape) >= 2:
            fan_in, _ = init._calculate_fan_in_and_fan_out(
                torch.empty(shape, device="meta")
            )
            return fan_in
    warnings.warn(
        "only one-dimensional variables found; assuming fan_in = 1", stacklevel=3
    )
    return 1


def _sample_dim_of(tensors: list[Tensor]) -> int:
    if not tensors or any(t.dim() == 0 for t in tensors):
        raise ValueError(
            "sampled_input=True needs inputs with a leading sample dimension"
        )
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise ValueError(
            "sampled_input=True needs the same leading sample dimension on every "
            f"input, got sizes {sorted(sizes)}"
        )
    return sizes.pop()


def _name_non_finite_parameters(
    output: Any, sites: Mapping[str, RandomVariable]
) -> None:
    """If the output is not finite because of a parameter, say which one.

    Raises
    ------
    FloatingPointError
        Naming the first variational parameter holding NaN or inf (a diverged run).
    """
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    checked = [
        item
        for item in outputs
        if isinstance(item, Tensor) and item.device.type != "meta"  # no values
    ]
    if not checked or all_finite(*checked):
        return
    for site in sites.values():
        for name, parameter in site.named_variational_parameters():
            if not bool(torch.isfinite(parameter).all()):
                raise FloatingPointError(
                    f"the variational parameter {name!r} of random variable "
                    f"{site.name!r} ({type(site.module).__name__}) holds NaN or inf, "
                    "so the output does too: training diverged (lower the learning "
                    "rate, or check dataset_size and the initial std)"
                )


def _attach_log_probs(output: Any, log_probs: Tensor | None) -> Any:
    if isinstance(output, Tensor):
        return VIReturn.from_tensor(output, log_probs)
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                VIReturn.from_tensor(item, log_probs)
    return output
