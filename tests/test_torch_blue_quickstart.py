"""torch_blue's FashionMNIST quickstart, with only the import changed.

The script of torch_blue's repository (PyTorch's quickstart with Bayesian layers),
written out as it is, on synthetic FashionMNIST-shaped data (1x28x28 images, 10
classes; nothing is downloaded): the only line that differs from torch_blue's is
``from torch_blue_pyro import vi``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from torch_blue_pyro import vi  # was: from torch_blue import vi
from torch_blue_pyro.vi import VIModule
from torch_blue_pyro.vi.distributions import Categorical


def fashion_mnist_shaped(size: int, seed: int) -> TensorDataset:
    """Images whose class is the brightest of ten horizontal bands, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (size,), generator=generator)
    images = torch.rand(size, 1, 28, 28, generator=generator) * 0.5
    for index, label in enumerate(labels):
        row = 2 + int(label) * 2
        images[index, 0, row : row + 2] += 0.5
    return TensorDataset(images, labels)


def test_the_quickstart_trains_and_predicts() -> None:
    training_data = fashion_mnist_shaped(512, seed=0)
    test_data = fashion_mnist_shaped(128, seed=1)

    batch_size = 64
    train_dataloader = DataLoader(training_data, batch_size=batch_size)
    test_dataloader = DataLoader(test_data, batch_size=batch_size)
    device = "cpu"

    class NeuralNetwork(vi.VIModule):
        def __init__(self) -> None:
            super().__init__()
            self.flatten = nn.Flatten()
            self.linear_relu_stack = nn.Sequential(
                vi.VILinear(28 * 28, 512),
                nn.ReLU(),
                vi.VILinear(512, 512),
                nn.ReLU(),
                vi.VILinear(512, 10),
            )

        def forward(self, x_: Tensor) -> Tensor:
            x_ = self.flatten(x_)
            logits = self.linear_relu_stack(x_)
            return logits

    model = NeuralNetwork().to(device)
    model.return_log_probs = True

    predictive_distribution = Categorical()
    loss_fn = vi.KullbackLeiblerLoss(
        predictive_distribution, dataset_size=len(training_data)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses: list[float] = []
    accuracies: list[float] = []

    def train(
        dataloader: DataLoader,
        model: VIModule,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        model.train()
        for x, y in dataloader:
            x, y = x.to(device), y.to(device)

            # Compute prediction error
            pred = model(x)
            loss = loss_fn(pred, y)

            # Backpropagation
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())

    def test(dataloader: DataLoader, model: VIModule, loss_fn: Callable) -> None:
        size = len(dataloader.dataset)
        model.eval()
        correct = 0.0
        with torch.no_grad():
            for x, y in dataloader:
                x, y = x.to(device), y.to(device)
                samples = model(x)
                loss_fn(samples, y).item()
                pred = predictive_distribution.predictive_parameters_from_samples(
                    samples
                )
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()
        accuracies.append(correct / size)

    epochs = 3
    for _ in range(epochs):
        train(train_dataloader, model, loss_fn, optimizer)
        test(test_dataloader, model, loss_fn)

    assert len(losses) == 3 * 8 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-8:]) < sum(losses[:8])
    assert all(0.0 <= accuracy <= 1.0 for accuracy in accuracies)
    output = model(next(iter(test_dataloader))[0])
    assert output.shape == (10, 64, 10) and output.log_probs.shape == (10, 2)
