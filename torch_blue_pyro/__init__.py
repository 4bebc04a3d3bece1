"""Bayesian neural networks trained by variational inference, built on Pyro.

``torch_blue_pyro.vi`` is a drop-in replacement for ``torch_blue.vi``; every Bayesian
layer is also a :class:`pyro.nn.PyroModule`, so the same model runs under Pyro's own
inference machinery.
"""

__version__ = "0.1.0"
