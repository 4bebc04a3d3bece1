"""The model zoo of the path tests: small versions of the architectures users train.

Each entry builds a Bayesian model (its outermost module a VIModule) and a batch of
inputs for it; widths are small so that the whole zoo runs in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from torch_blue_pyro import vi
from torch_blue_pyro.zoo import resnet18

BATCH = 8


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """A zoo entry: its name, a builder and the inputs of one batch."""

    name: str
    build: Callable[[], vi.VIModule]
    inputs: Callable[[], tuple[Tensor, ...]]
    classes: int = 3
    #: Whether its forward contains dropout (random in train() on every path).
    has_dropout: bool = False
    #: Whether it has normalization layers with running statistics.
    has_running_stats: bool = False
    #: How far its outputs under bfloat16 autocast may be from float32's.
    autocast_atol: float = 0.1
    #: The least cosine similarity of its gradients under bfloat16 to float32's.
    autocast_cosine: float = 0.99

    def __repr__(self) -> str:
        return self.name


def _mlp() -> vi.VIModule:
    return vi.VISequential(vi.VILinear(6, 8), nn.ReLU(), vi.VILinear(8, 3))


def _lenet() -> vi.VIModule:
    return vi.VISequential(
        vi.VIConv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        vi.VIConv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        vi.VILinear(4 * 2 * 2, 6),
        nn.ReLU(),
        vi.VILinear(6, 3),
    )


def _batchnorm_cnn() -> vi.VIModule:
    return vi.VISequential(
        vi.VIConv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout2d(0.25),
        nn.MaxPool2d(2),
        vi.VIConv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=None),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        vi.VILinear(4 * 2 * 2, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        vi.VILinear(5, 3),
    )


def _resnet18() -> vi.VIModule:
    net = resnet18(num_classes=3, width=2)
    vi.convert_to_vimodule(net)
    return net  # type: ignore[return-value]


def _conv1d_groupnorm() -> vi.VIModule:
    return vi.VISequential(
        vi.VIConv1d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        vi.VIConv1d(4, 4, 3, stride=2),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        vi.VILinear(4, 3),
    )


def _conv3d_instancenorm() -> vi.VIModule:
    return vi.VISequential(
        vi.VIConv3d(1, 3, 3, padding=1),
        nn.InstanceNorm3d(3, affine=True, track_running_stats=True),
        nn.ReLU(),
        vi.VIConv3d(3, 4, 3),
        nn.InstanceNorm3d(4),
        nn.ReLU(),
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        vi.VILinear(4, 3),
    )


class _PlainNormNet(nn.Module):
    """A plain-torch CNN with layer, group and batch norm, to convert."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.group_norm = nn.GroupNorm(2, 4)
        self.batch_norm = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.layer_norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.batch_norm(self.group_norm(self.conv(x)).relu())
        return self.head(self.layer_norm(self.pool(hidden).flatten(1)))


def _converted_norm_net() -> vi.VIModule:
    net = _PlainNormNet()
    vi.convert_to_vimodule(net)
    return net  # type: ignore[return-value]


class _PlainEncoder(nn.Module):
    """A plain-torch transformer classifier: embedding, encoder layer, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.encoder = nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=12, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _converted_encoder() -> vi.VIModule:
    net = _PlainEncoder()
    vi.convert_to_vimodule(net)
    return net  # type: ignore[return-value]


class _TransformerClassifier(vi.VIModule):
    """A native VITransformer: the source and target sequences in, scores out."""

    handles_sample_dim = True

    def __init__(self) -> None:
        super().__init__()
        self.transformer = vi.VITransformer(
            d_model=8,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=12,
            dropout=0.1,
            batch_first=True,
        )
        self.head = vi.VILinear(8, 3)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        return self.head(self.transformer(source, target).mean(dim=-2))


class PerSample(vi.VIModule):
    """Wraps a model in a custom module written for one sample: on the stacked path
    it runs under the vmap fallback."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.body(*inputs)


def _images(channels: int, *spatial: int) -> Callable[[], tuple[Tensor, ...]]:
    return lambda: (torch.randn(BATCH, channels, *spatial),)


ZOO: list[ZooModel] = [
    ZooModel("mlp", _mlp, lambda: (torch.randn(BATCH, 6),)),
    ZooModel("lenet", _lenet, _images(1, 8, 8)),
    ZooModel(
        "batchnorm_cnn",
        _batchnorm_cnn,
        _images(1, 8, 8),
        has_dropout=True,
        has_running_stats=True,
    ),
    ZooModel(
        "resnet18",
        _resnet18,
        _images(3, 32, 32),
        has_running_stats=True,
        # Batch norms over 8 values (1x1 maps) amplify rounding: the deterministic
        # network's outputs differ by up to 0.25 of 1.6 (width 8) between the two,
        # its gradients have a cosine similarity of 0.76-0.96 (widths 2 and 8).
        autocast_atol=0.6,
        autocast_cosine=0.7,
    ),
    ZooModel(
        "conv1d_groupnorm",
        _conv1d_groupnorm,
        _images(2, 9),
        has_running_stats=True,
    ),
    ZooModel(
        "conv3d_instancenorm",
        _conv3d_instancenorm,
        _images(1, 4, 4, 4),
        has_running_stats=True,
    ),
    ZooModel(
        "converted_norm_net",
        _converted_norm_net,
        _images(1, 6, 6),
        has_running_stats=True,
    ),
    ZooModel(
        "converted_encoder",
        _converted_encoder,
        lambda: (torch.randn(BATCH, 5, 3),),
        has_dropout=True,
    ),
    ZooModel(
        "vitransformer",
        _TransformerClassifier,
        lambda: (torch.randn(BATCH, 5, 8), torch.randn(BATCH, 4, 8)),
        has_dropout=True,
    ),
]


def dropout_off(model: nn.Module) -> None:
    """Put the dropout layers (only) into eval mode: train() without randomness."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
        if isinstance(module, nn.MultiheadAttention | vi.VIMultiheadAttention):
            module.dropout = 0.0
