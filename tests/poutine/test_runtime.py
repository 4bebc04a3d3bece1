import pyro
import torch
from pyro import poutine

from torch_blue_pyro import vi
from torch_blue_pyro.poutine import TransparentMessenger, in_pyro_inference, local_param


def test_mode_detection() -> None:
    assert not in_pyro_inference()
    with TransparentMessenger():
        assert not in_pyro_inference()
        with poutine.block():
            assert in_pyro_inference()
    with poutine.trace():
        assert in_pyro_inference()


def test_transparent_handlers_keep_autosampling(recorder) -> None:
    layer = vi.VILinear(3, 2)
    with recorder:
        out = layer(torch.randn(4, 3), samples=5)
    assert isinstance(out, vi.VIReturn) and out.shape == (5, 4, 2)
    assert recorder.values["weight"].shape == (5, 2, 3)


def test_any_pyro_handler_switches_to_pyro_mode() -> None:
    layer = vi.VILinear(3, 2)
    with poutine.block():
        out = layer(torch.randn(4, 3))
    assert type(out) is torch.Tensor and out.shape == (4, 2)


def test_local_param_is_seen_by_handlers_but_never_stored() -> None:
    parameter = torch.nn.Parameter(torch.randn(3))
    with poutine.trace(param_only=True) as capture:
        value = local_param("w", parameter)
    assert value is parameter
    site = capture.trace.nodes["w"]
    assert site["value"] is parameter
    assert site["value"].unconstrained() is parameter
    assert "w" not in pyro.get_param_store()
