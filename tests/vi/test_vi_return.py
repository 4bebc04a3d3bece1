import copy
import pickle

import torch

from torch_blue_pyro import vi


def output() -> vi.VIReturn:
    return vi.VISequential(vi.VILinear(3, 2))(torch.randn(4, 3), samples=5)


def test_behaves_like_a_tensor() -> None:
    out = output()
    assert isinstance(out, torch.Tensor)
    doubled = out * 2
    torch.testing.assert_close(doubled.as_tensor(), out.as_tensor() * 2)
    assert out.mean(0).shape == (4, 2)


def test_clone_to_and_deepcopy_keep_log_probs() -> None:
    out = output()
    for copied in (out.clone(), out.to(torch.float64), copy.deepcopy(out)):
        assert isinstance(copied, vi.VIReturn)
        torch.testing.assert_close(
            copied.log_probs.to(out.log_probs.dtype), out.log_probs
        )
    assert out.to(torch.float64).log_probs.dtype == torch.float64


def test_pickle_round_trip() -> None:
    out = output().detach()
    out = vi.VIReturn(out, torch.zeros(5, 2))
    loaded = pickle.loads(pickle.dumps(out))
    torch.testing.assert_close(loaded.as_tensor(), out.as_tensor())
    torch.testing.assert_close(loaded.log_probs, out.log_probs)


def test_from_tensor_converts_in_place() -> None:
    tensor = torch.randn(2, 3)
    converted = vi.VIReturn.from_tensor(tensor, torch.ones(2, 2))
    assert converted is tensor and isinstance(tensor, vi.VIReturn)
    assert "log_probs=" in repr(converted)


def test_a_vireturn_formats_as_a_tensor() -> None:
    out = vi.VILinear(3, 2)(torch.randn(4, 3), samples=2)
    assert f"{out.mean():.3f}" == f"{float(out.mean()):.3f}"
    assert f"{out}" == f"{out.as_tensor()}"
