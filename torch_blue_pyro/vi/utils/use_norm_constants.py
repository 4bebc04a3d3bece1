"""The global switch for normalization constants in log-probabilities."""

_use_norm_constants = False


def use_norm_constants(mode: bool = True) -> None:
    r"""Make every log-probability include its normalization constant.

    By default (as in torch_blue) the constants, e.g. :math:`-\tfrac12\log 2\pi` per
    element of a normal distribution, are left out: they do not change gradients and
    only shift the loss. Switch them on to get exact log densities.

    Parameters
    ----------
    mode: bool, default: True
        Whether to include the constants.
    """
    global _use_norm_constants
    _use_norm_constants = bool(mode)


def norm_constants_enabled() -> bool:
    """Whether log-probabilities include their normalization constants."""
    return _use_norm_constants
