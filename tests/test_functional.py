import pytest
import torch
from torch.nn import functional as F

from torch_blue_pyro import functional


@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sampled_linear_matches_a_loop_over_samples(
    shared_input: bool, with_bias: bool
) -> None:
    weight = torch.randn(4, 3, 5)
    bias = torch.randn(4, 3) if with_bias else None
    if shared_input:
        x = torch.randn(2, 6, 5).expand(4, 2, 6, 5)
    else:
        x = torch.randn(4, 2, 6, 5)
    out = functional.linear(x, weight, bias)
    assert out.shape == (4, 2, 6, 3)
    for s in range(4):
        expected = F.linear(x[s], weight[s], None if bias is None else bias[s])
        torch.testing.assert_close(out[s], expected)


def test_plain_weight_is_torch_linear() -> None:
    x, weight, bias = torch.randn(2, 5), torch.randn(3, 5), torch.randn(3)
    torch.testing.assert_close(
        functional.linear(x, weight, bias), F.linear(x, weight, bias)
    )
