import pytest
import torch

from torch_blue_pyro import vi
from torch_blue_pyro.vi.utils.init import fixed_


def test_fixed_copies_values_in_place_without_autograd() -> None:
    layer = vi.VILinear(3, 2)
    trained = torch.randn(2, 3)
    returned = fixed_(layer._weight_mean, trained)
    assert returned is layer._weight_mean and returned.requires_grad
    torch.testing.assert_close(layer._weight_mean.detach(), trained)
    assert layer._weight_mean.grad_fn is None


def test_fixed_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 3\), got \(3, 2\)"):
        fixed_(torch.zeros(2, 3), torch.zeros(3, 2))
