"""Value checks follow Pyro's validation switch; switched off, nothing reads values.

A tensor on the ``meta`` device has shapes but no values: reading one (``.item()``,
``bool()``, ``.tolist()``) raises. A training step that runs on ``meta`` therefore
reads no value of the device, which on a GPU means no host-device synchronization.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.utils import value_checks_enabled
from torch_blue_pyro.vi.utils.validation import all_finite

META = torch.device("meta")


def mlp() -> vi.VIModule:
    return vi.VISequential(
        vi.VILinear(4, 8, device=META), nn.ReLU(), vi.VILinear(8, 3, device=META)
    )


def cnn() -> vi.VIModule:
    return vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1, device=META),
        nn.ReLU(),
        nn.Flatten(),
        vi.VILinear(4 * 5 * 5, 3, device=META),
    )


class MeanPooledEncoder(vi.VIModule):
    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.encoder = vi.VITransformerEncoderLayer(
            d_model=8, nhead=2, dim_feedforward=16, batch_first=True, device=META
        )
        self.head = vi.VILinear(8, 3, device=META)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(dim=-2))


NETWORKS: dict[str, tuple[Callable[[], vi.VIModule], tuple[int, ...]]] = {
    "mlp": (mlp, (6, 4)),
    "cnn": (cnn, (6, 1, 5, 5)),
    "transformer": (MeanPooledEncoder, (6, 7, 8)),
}


def sampled_loss(net: vi.VIModule) -> nn.Module:
    return vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=100)


def analytical_loss(net: vi.VIModule) -> nn.Module:
    return vi.AnalyticalKullbackLeiblerLoss(
        net, vi.distributions.Categorical(), dataset_size=100
    )


def training_step(
    name: str, loss: Callable[[vi.VIModule], nn.Module] = sampled_loss
) -> Tensor:
    build, input_shape = NETWORKS[name]
    net = build()
    loss_fn = loss(net)
    labels = torch.zeros(input_shape[0], dtype=torch.long, device=META)
    loss = loss_fn(net(torch.randn(input_shape, device=META), samples=3), labels)
    loss.backward()
    return loss


def test_value_checks_follow_pyro_validation() -> None:
    assert value_checks_enabled()  # Pyro's default
    with pyro.validation_enabled(False):
        assert not value_checks_enabled()
    assert value_checks_enabled()


@pytest.mark.parametrize("loss", [sampled_loss, analytical_loss])
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_training_step_reads_no_values_without_validation(
    name: str, loss: Callable[[vi.VIModule], nn.Module]
) -> None:
    with pyro.validation_enabled(False):
        value = training_step(name, loss)
    assert value.device == META and value.shape == ()


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_training_step_reads_values_with_validation(name: str) -> None:
    """The converse: the checks do read values (so the test above can fail)."""
    with pytest.raises(RuntimeError, match="meta tensors"):
        training_step(name)


def test_without_validation_bad_values_are_not_caught() -> None:
    """Switched off, a NaN output gives a NaN loss, as in plain torch."""
    net = vi.VILinear(4, 3)
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=10)
    x = torch.full((5, 4), float("nan"))
    labels = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="NaN or inf"):
        loss_fn(net(x, samples=2), labels)
    with pyro.validation_enabled(False):
        assert torch.isnan(loss_fn(net(x, samples=2), labels))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("position", [0, 7, -1])
def test_all_finite_finds_any_non_finite_element(bad: float, position: int) -> None:
    finite = torch.randn(3, 5)
    tainted = torch.randn(4, 6)
    tainted.view(-1)[position] = bad
    assert all_finite(finite) and all_finite(finite, finite.double())
    assert not all_finite(tainted)
    assert not all_finite(finite, tainted)  # in any of the tensors


def test_all_finite_when_the_sum_overflows() -> None:
    """Finite values whose sum is inf take the elementwise test, and pass it."""
    huge = torch.full((4,), 3e38)
    assert torch.isinf(huge.sum())
    assert all_finite(huge)
    assert not all_finite(torch.cat([huge, torch.tensor([float("nan")])]))


def test_all_finite_of_integers_and_booleans() -> None:
    assert all_finite(torch.arange(10), torch.ones(3, dtype=torch.bool))


def test_huge_finite_outputs_are_not_mistaken_for_nan() -> None:
    """A loss whose output sums overflow still sees finite outputs (no false error)."""
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=10)
    output = vi.VIReturn.from_tensor(torch.full((2, 5, 3), 3e38), torch.zeros(2, 2))
    loss = loss_fn(output, torch.zeros(5, dtype=torch.long))
    assert torch.isfinite(loss)
