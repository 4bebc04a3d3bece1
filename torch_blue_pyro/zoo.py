"""Reference networks in plain torch, laid out as torchvision lays them out.

For converting with :func:`~torch_blue_pyro.vi.convert_to_vimodule` where
torchvision is not installed (it pins a torch release), and for the tests and
benchmarks. The module names, and so the ``state_dict`` keys, are torchvision's: a
torchvision checkpoint of the same architecture loads into :func:`resnet18` with
``load_state_dict``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "resnet18"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False
    )


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch normalization and a residual connection.

    Parameters
    ----------
    inplanes: int
        Input channels.
    planes: int
        Output channels.
    stride: int, default: 1
        Stride of the first convolution.
    downsample: nn.Module, optional
        Maps the input to the output's shape for the residual sum (a 1x1
        convolution and batch normalization when the shape changes).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))``.

        Parameters
        ----------
        x: Tensor
            ``(N, inplanes, H, W)``.

        Returns
        -------
        Tensor
            ``(N, planes, H / stride, W / stride)``.
        """
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A residual network of :class:`BasicBlock` s (He et al., 2016).

    A 7x7 stride-2 convolution, batch normalization and max-pooling; four stages of
    blocks with ``width``, ``2 width``, ``4 width`` and ``8 width`` channels (the
    last three halve the resolution); global average pooling and a linear
    classifier. Initialized as torchvision initializes it.

    Parameters
    ----------
    layers: list[int]
        Number of blocks per stage (``[2, 2, 2, 2]`` for ResNet-18).
    num_classes: int, default: 1000
        Outputs of the classifier.
    width: int, default: 64
        Channels of the first stage (torchvision's networks have 64; smaller values
        make small test networks with the same layout and keys).
    in_channels: int, default: 3
        Input channels.
    """

    def __init__(
        self,
        layers: list[int],
        num_classes: int = 1000,
        width: int = 64,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(
            in_channels, width, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu"
                )
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores of ``x``.

        Parameters
        ----------
        x: Tensor
            ``(N, in_channels, H, W)``.

        Returns
        -------
        Tensor
            ``(N, num_classes)``.
        """
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.fc(x)


def resnet18(num_classes: int = 1000, width: int = 64, in_channels: int = 3) -> ResNet:
    """ResNet-18: torchvision's ``resnet18`` layout, in plain torch.

    Parameters
    ----------
    num_classes: int, default: 1000
        Outputs of the classifier.
    width: int, default: 64
        Channels of the first stage (64 in torchvision's).
    in_channels: int, default: 3
        Input channels.

    Returns
    -------
    ResNet
        With randomly initialized weights.

    Examples
    --------
    >>> from torch_blue_pyro import vi
    >>> net = resnet18(num_classes=10)
    >>> vi.convert_to_vimodule(net)  # Bayesian, in place
    """
    return ResNet([2, 2, 2, 2], num_classes, width, in_channels)
