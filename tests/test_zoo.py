"""The reference networks have torchvision's layout: names, shapes, sizes."""

import torch

from torch_blue_pyro.zoo import resnet18


def test_resnet18_has_torchvisions_parameters_and_keys() -> None:
    net = resnet18()
    # torchvision.models.resnet18(): 11,689,512 parameters, 102 + 20 state_dict keys.
    assert sum(p.numel() for p in net.parameters()) == 11_689_512
    state = net.state_dict()
    assert len(state) == 122
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.1.bn2.running_var": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.num_batches_tracked": (),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer1.0.downsample.0.weight" not in state  # same shape: no projection


def test_resnet18_is_initialized_as_torchvision_does_and_runs() -> None:
    net = resnet18(num_classes=10, width=8, in_channels=1)
    assert torch.equal(net.bn1.weight, torch.ones(8))
    expected_std = (2.0 / (8 * 7 * 7)) ** 0.5  # kaiming_normal_, fan_out = 8 * 7 * 7
    assert abs(float(net.conv1.weight.std()) - expected_std) < 0.25 * expected_std
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
