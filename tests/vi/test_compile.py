"""torch.compile of a zoo model trains on both paths, with the eager model's results.

The ``aot_eager`` backend traces what inductor compiles (forward and backward
graphs, split where Dynamo cannot trace) but runs eager kernels, so the test needs
no C++ compiler and stays fast; speed is measured in benchmarks/compile_benchmark.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.zoo import ZOO
from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("path", ["stacked", "loop"])
def test_a_compiled_model_trains_like_the_eager_one(path: str) -> None:
    """A converted CNN with batch, group and layer norm (vmapped when stacked)."""
    entry = next(entry for entry in ZOO if entry.name == "converted_norm_net")
    model = entry.build()
    model.sample_execution = path
    inputs = entry.inputs()
    labels = torch.randint(0, entry.classes, (inputs[0].shape[0],))
    torch._dynamo.reset()
    results = []
    for compiled in (False, True):
        trained = copy.deepcopy(model)
        runner = torch.compile(trained, backend="aot_eager") if compiled else trained
        loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=100)
        optimizer = torch.optim.Adam(trained.parameters(), lr=1e-2)
        torch.manual_seed(1)
        losses = []
        for _ in range(2):
            output = runner(*inputs, samples=2)
            loss = loss_fn(output, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        assert isinstance(output, vi.VIReturn) and output.log_probs.shape == (2, 2)
        results.append((torch.stack(losses), list(trained.state_dict().values())))
    (losses, state), (compiled_losses, compiled_state) = results
    torch.testing.assert_close(compiled_losses, losses)
    for value, compiled_value in zip(state, compiled_state, strict=True):
        torch.testing.assert_close(compiled_value, value)
