"""Exceptions raised by the torch_blue API."""


class NoVariablesError(Exception):
    """Raised when an operation needs random variables that a module does not have.

    A :class:`~torch_blue_pyro.vi.VIModule` built without ``variable_shapes`` (a
    container, say) has no random variables of its own, so methods such as
    :meth:`~torch_blue_pyro.vi.VIModule.sample_variable` cannot act on it.
    """


class UnsupportedDistributionError(ValueError):
    """Raised when a distribution is used in a role it cannot play.

    The roles are prior, variational distribution and predictive distribution; a
    distribution declares the roles it supports by subclassing
    :class:`~torch_blue_pyro.vi.distributions.Prior`,
    :class:`~torch_blue_pyro.vi.distributions.VariationalDistribution` and
    :class:`~torch_blue_pyro.vi.distributions.PredictiveDistribution`.
    """
