import pickle

import pytest
import torch
from pyro import poutine
from torch import nn

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical, MeanFieldNormal
from torch_blue_pyro.vi.utils.convert import ban_convert, convert_norms
from torch_blue_pyro.zoo import resnet18

POINT_MASS = MeanFieldNormal(std=1e-12)


class Block(nn.Module):
    """A user module with a parameter of its own, a layer and a norm."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + torch.relu(self.fc(x)) * self.scale)


def network() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), Block(8), nn.Linear(8, 3))


def test_converts_in_place_to_the_builtin_layers() -> None:
    net = network()
    same = net
    vi.convert_to_vimodule(net)
    assert net is same
    assert type(net) is vi.VISequential
    assert [type(m).__name__ for m in net] == [
        "VILinear",
        "ReLU",
        "AVIBlock",
        "VILinear",
    ]
    assert isinstance(net[2], vi.VIModule) and isinstance(net[2], Block)
    assert type(net[2].norm) is nn.LayerNorm, "norms stay deterministic"
    assert net[2].random_variables == ("scale",)
    assert net(torch.randn(5, 4), samples=3).shape == (3, 5, 3)


def test_keep_weights_with_a_point_mass_reproduces_the_network() -> None:
    net = network()
    x = torch.randn(6, 4)
    expected = net(x)
    vi.convert_to_vimodule(net, keep_weights=True, variational_distribution=POINT_MASS)
    out = net(x, samples=4)
    for s in range(4):
        torch.testing.assert_close(out[s].as_tensor(), expected, rtol=1e-5, atol=1e-5)


def test_without_keep_weights_the_means_are_reinitialized() -> None:
    net = network()
    weight = net[0].weight.detach().clone()
    vi.convert_to_vimodule(net)
    assert not torch.equal(net[0]._weight_mean, weight)
    assert net[0]._weight_mean.shape == weight.shape


def test_converted_generic_module_is_a_pyro_model() -> None:
    net = network()
    vi.convert_to_vimodule(net)
    trace = poutine.trace(net).get_trace(torch.randn(5, 4))
    sites = {n for n, s in trace.nodes.items() if s["type"] == "sample"}
    assert sites == {
        "0.weight",
        "0.bias",
        "2.scale",
        "2.fc.weight",
        "2.fc.bias",
        "3.weight",
        "3.bias",
    }


def test_dtype_is_kept_per_parameter() -> None:
    net = network().double()
    vi.convert_to_vimodule(net)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    out = net(torch.randn(2, 4, dtype=torch.float64), samples=2)
    assert out.dtype == torch.float64


def test_converted_model_trains_and_pickles() -> None:
    net = network()
    vi.convert_to_vimodule(net)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=64)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = loss_fn(net(x, samples=4), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    clone = pickle.loads(pickle.dumps(net))
    torch.manual_seed(1)
    first = net(x, samples=2)
    torch.manual_seed(1)
    torch.testing.assert_close(clone(x, samples=2).as_tensor(), first.as_tensor())


def test_norms_can_be_converted_too() -> None:
    try:
        convert_norms(True)
        net = network()
        vi.convert_to_vimodule(net)
        assert isinstance(net[2].norm, vi.VIModule)
    finally:
        convert_norms(False)
    net = network()
    vi.convert_to_vimodule(net)
    assert not isinstance(net[2].norm, vi.VIModule)


def test_ban_modes() -> None:
    try:
        ban_convert(Block)
        net = network()
        vi.convert_to_vimodule(net)
        assert not isinstance(net[2], vi.VIModule)
        assert isinstance(net[2].fc, vi.VILinear), "submodules are still converted"
    finally:
        ban_convert(Block, unban=True)
    try:
        ban_convert(Block, ban_mode="submodule")
        net = network()
        vi.convert_to_vimodule(net)
        assert type(net[2].fc) is nn.Linear
    finally:
        ban_convert(Block, ban_mode="submodule", unban=True)
    try:
        ban_convert(nn.Linear, ban_mode="replace")
        net = network()
        vi.convert_to_vimodule(net)
        assert type(net[0]).__name__ == "AVILinear"
        assert net(torch.randn(2, 4), samples=2).shape == (2, 2, 3)
    finally:
        ban_convert(nn.Linear, ban_mode="replace", unban=True)
    with pytest.raises(ValueError, match="ban_mode must be one of"):
        ban_convert(Block, ban_mode="never")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.norm(self.conv1(x)))))


def test_small_resnet_keeps_its_predictions() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        ResidualBlock(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = torch.randn(5, 1, 8, 8)
    expected = net(x)
    vi.convert_to_vimodule(net, keep_weights=True, variational_distribution=POINT_MASS)
    assert isinstance(net[0], vi.VIConv2d) and isinstance(net[1].conv1, vi.VIConv2d)
    assert type(net[1].norm) is nn.BatchNorm2d
    out = net(x, samples=2)
    for s in range(2):
        torch.testing.assert_close(out[s].as_tensor(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_attention_and_transformer_encoder_keep_their_predictions() -> None:
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(3, 7, 16)
    expected = encoder(x)
    vi.convert_to_vimodule(
        encoder, keep_weights=True, variational_distribution=POINT_MASS
    )
    attention = encoder.layers[0].self_attn
    assert isinstance(encoder, vi.VITransformerEncoder)
    assert isinstance(attention, vi.VIMultiheadAttention)
    assert type(attention.out_proj) is vi.VILinear
    out = encoder(x, samples=2)
    for s in range(2):
        torch.testing.assert_close(out[s].as_tensor(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["stacked", "loop"])
def test_a_pretrained_resnet_keeps_its_eval_output_then_fine_tunes(path: str) -> None:
    """torchvision's ResNet-18 layout with trained weights and batch statistics."""
    net = resnet18(num_classes=3, width=4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(3):  # pretraining moves the weights and the running statistics
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = net.eval()(x)
    vi.convert_to_vimodule(
        net, keep_weights=True, variational_distribution=MeanFieldNormal(std=1e-8)
    )
    net.sample_execution = path
    output = net(x, samples=3)
    for sample in output:
        torch.testing.assert_close(sample.as_tensor(), expected, rtol=1e-4, atol=1e-5)

    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    running_mean = net.bn1.running_mean.clone()
    losses = []
    net.train()
    for _ in range(5):
        loss = loss_fn(net(x, samples=3), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert not torch.equal(net.bn1.running_mean, running_mean)


def test_converted_classes_of_the_same_name_pickle() -> None:
    """Two classes named Block (say, in two modules) get two generated classes."""

    class Block(nn.Module):  # not the Block above: the same name, another class
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).relu()

    nets = [nn.Sequential(Block(), nn.Linear(3, 2)), network()]
    for net in nets:
        vi.convert_to_vimodule(net)
    first, second = (type(net[0 if net is nets[0] else 2]) for net in nets)
    assert first is not second
    assert first.__name__.startswith("AVIBlock") and second.__name__.startswith(
        "AVIBlock"
    )
    assert first.__name__ != second.__name__
    x = torch.randn(4, 3)
    for net, inputs in zip(nets, (x, torch.randn(4, 4)), strict=True):
        clone = pickle.loads(pickle.dumps(net))
        torch.manual_seed(0)
        expected = net(inputs, samples=2)
        torch.manual_seed(0)
        torch.testing.assert_close(clone(inputs, samples=2), expected)
