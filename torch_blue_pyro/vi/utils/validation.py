"""Whether the checks that read tensor values run: they follow Pyro's validation."""

from pyro.infer.util import is_validation_enabled


def value_checks_enabled() -> bool:
    """Whether checks that read the values of tensors run.

    These are the finiteness checks of a model's output and of a loss's target and
    the range check of class labels. Reading a value waits for the device: on a GPU
    each such check is a host-device synchronization. They follow Pyro's validation
    switch, on by default: ``pyro.enable_validation(False)`` (or the context manager
    ``pyro.validation_enabled(False)``) turns them off together with Pyro's own
    checks, for the last bit of speed on a GPU once a training script is known to
    be sound. Checks of shapes, dtypes and devices always run: they read no values.

    Returns
    -------
    bool
        ``True`` unless Pyro's validation is switched off.
    """
    return is_validation_enabled()
