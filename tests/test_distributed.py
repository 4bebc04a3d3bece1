"""Data-parallel training: 2 gloo processes on half batches match 1 process.

Both modes are checked against a single-process run on the same global batches:

* torch_blue mode: ``KullbackLeiblerLoss`` (and ``AnalyticalKullbackLeiblerLoss``)
  through ``DistributedDataParallel``;
* Pyro mode: ``Trace_ELBO().differentiable_loss`` with ``net.guide``, the network
  called through ``DistributedDataParallel`` inside the Pyro model.

Why the numbers agree: every rank seeds torch and Pyro with the same seed as the
single-process run, so all ranks (and the reference) draw the *same* weight samples
in the same order; only the data differ. Each rank's loss carries the full KL term
(``dataset_size`` / the plate size is the global ``N``) and the data term
``-N * mean over its half batch``. DDP *averages* the gradients over the ranks, which
keeps the KL gradient once and turns the two half-batch means into the global-batch
mean: exactly the single-process gradient, up to the order of float additions.
See docs/reliability.md.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from pyro.infer import Trace_ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from torch_blue_pyro import vi
from torch_blue_pyro.vi.distributions import Categorical

pytestmark = pytest.mark.skipif(
    not (torch_dist.is_available() and torch_dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models: one thread is faster, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


WORLD_SIZE = 2
N_DATA = 96  # the global data set
GLOBAL_BATCH = 16
STEPS = 4
SAMPLES = 3
SEED = 1234
MODES = ("torch_blue", "analytical", "pyro")
# Plain SGD: unlike Adam it is not invariant to the scale of the loss, so summing
# instead of averaging the ranks' gradients would show up too.
LR = 2e-3


def _problem() -> tuple[Tensor, Tensor]:
    """The data set, from its own generator so the global RNG is left alone."""
    generator = torch.Generator(torch.get_default_device()).manual_seed(7)
    x = torch.randn(N_DATA, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return x, y


def _net() -> vi.VISequential:
    return vi.VISequential(vi.VILinear(4, 16), nn.ReLU(), vi.VILinear(16, 3))


def _rows(step: int, rank: int, world_size: int) -> slice:
    """This rank's share of global batch ``step``: contiguous, equal halves."""
    local = GLOBAL_BATCH // world_size
    start = step * GLOBAL_BATCH + rank * local
    return slice(start, start + local)


def _pyro_model(net: nn.Module, n_data: int):
    def model(x: Tensor, y: Tensor) -> None:
        # The weight sites are outside the data plate. With subsample= the plate
        # scales the local log-likelihood by N / len(x), the global data set size.
        logits = net(x)
        with pyro.plate("data", n_data, subsample=torch.arange(len(x))):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    return model


def _train(mode: str, rank: int, world_size: int) -> dict[str, Tensor]:
    """Train for ``STEPS`` steps on this rank's rows; DDP when ``world_size > 1``."""
    torch.manual_seed(SEED)
    pyro.set_rng_seed(SEED)
    x, y = _problem()
    net = _net()
    wrapped: nn.Module = DistributedDataParallel(net) if world_size > 1 else net
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    if mode in ("torch_blue", "analytical"):
        loss_fn = (
            vi.KullbackLeiblerLoss(Categorical(), dataset_size=N_DATA)
            if mode == "torch_blue"
            # The closed-form KL reads the parameters outside DDP's forward; their
            # gradients still arrive in the one backward pass DDP reduces.
            else vi.AnalyticalKullbackLeiblerLoss(
                net, Categorical(), dataset_size=N_DATA
            )
        )

        def loss_of(xb: Tensor, yb: Tensor) -> Tensor:
            return loss_fn(wrapped(xb, samples=SAMPLES), yb)

    else:
        elbo = Trace_ELBO()
        model = _pyro_model(wrapped, N_DATA)

        def loss_of(xb: Tensor, yb: Tensor) -> Tensor:
            return elbo.differentiable_loss(model, net.guide, xb, yb)

    for step in range(STEPS):
        rows = _rows(step, rank, world_size)
        loss = loss_of(x[rows], y[rows])
        optimizer.zero_grad()
        loss.backward()  # under DDP: gradients averaged over the ranks here
        optimizer.step()
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # Loopback only: the rendezvous and gloo's own connections stay on 127.0.0.1.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch_dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = {mode: _train(mode, rank, world_size) for mode in MODES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(
        _worker,
        args=(WORLD_SIZE, _free_port(), str(out_dir)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    return {
        rank: torch.load(out_dir / f"rank{rank}.pt", weights_only=True)
        for rank in range(WORLD_SIZE)
    }


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_on_half_batches_match_one_process(
    distributed_results: dict, mode: str
) -> None:
    reference = _train(mode, rank=0, world_size=1)
    initial = _initial_parameters()
    for rank in range(WORLD_SIZE):
        trained = distributed_results[rank][mode]
        assert trained.keys() == reference.keys()
        for name, value in trained.items():
            # Training moved the parameter, and both runs moved it the same way.
            assert not torch.equal(value, initial[name]), name
            torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6)


def test_ranks_hold_identical_parameters(distributed_results: dict) -> None:
    for mode in MODES:
        for name, value in distributed_results[0][mode].items():
            assert torch.equal(value, distributed_results[1][mode][name]), name


@pytest.mark.parametrize("mistake", ["dataset_size_per_rank", "summed_gradients"])
def test_the_comparison_catches_a_scaling_mistake(
    distributed_results: dict, mistake: str
) -> None:
    """Two common mistakes, replayed in one process, miss the distributed result.

    * ``dataset_size`` = the rank's share (``N / 2``): with DDP's average the data
      term is halved against the KL term.
    * Summing the ranks' gradients instead of averaging them (a hand-written
      ``all_reduce`` without the division): the whole loss, KL included, counts
      ``R`` times, which plain SGD turns into ``R``-times larger steps.
    """
    trained = distributed_results[0]["torch_blue"]
    torch.manual_seed(SEED)
    pyro.set_rng_seed(SEED)
    x, y = _problem()
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    per_rank = mistake == "dataset_size_per_rank"
    dataset_size = N_DATA // WORLD_SIZE if per_rank else N_DATA
    factor = 1 if per_rank else WORLD_SIZE
    loss_fn = vi.KullbackLeiblerLoss(Categorical(), dataset_size=dataset_size)
    for step in range(STEPS):
        rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        loss = factor * loss_fn(net(x[rows], samples=SAMPLES), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    differences = [
        float((p.detach() - trained[name]).abs().max())
        for name, p in net.named_parameters()
    ]
    assert max(differences) > 1e-3  # the runs above agree to ~1e-7


def _initial_parameters() -> dict[str, Tensor]:
    torch.manual_seed(SEED)
    pyro.set_rng_seed(SEED)
    return {name: p.detach().clone() for name, p in _net().named_parameters()}
