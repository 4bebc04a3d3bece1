"""Smoke test of torch_blue_pyro on a GPU: every public path runs on the device.

Checks, each reported as ok or FAILED with its error (the script goes on):

- each layer kind (``VILinear``, ``VIConv1d/2d/3d``, ``VIMultiheadAttention``,
  ``VITransformerEncoderLayer``, ``VITransformer``) built with ``device=``: a
  torch_blue-mode training step (``samples=4``, ``KullbackLeiblerLoss``, backward)
  whose output, log-probabilities and gradients are all on the device;
- a network built on CPU and moved with ``.to(device)`` (priors and buffers too);
- ``AnalyticalKullbackLeiblerLoss``; the estimators ``local_reparameterization()``
  and ``flipout()``;
- Pyro mode: ``SVI`` with ``net.guide`` and vectorized particles, ``AutoNormal``,
  ``Predictive(parallel=True)``;
- a ``state_dict`` saved on the device and loaded on CPU.

On CUDA it then counts the host-device synchronisations of one training step and
one prediction of the benchmark MLP with ``torch.cuda.set_sync_debug_mode("warn")``
(each ``.item()``, ``float(tensor)``, ``bool(tensor)`` or data-dependent shape is
one), and names where they happen: each one stalls the CPU until the GPU has caught
up. It counts them with Pyro's validation on (the default: the value checks of
outputs and labels run) and off (``vi.utils.value_checks_enabled``: none should
remain).

Run::

    python benchmarks/cuda_smoke.py                 # --device cuda
    python benchmarks/cuda_smoke.py --device cpu    # the same checks on CPU

Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
from pyro.infer import SVI, Predictive, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoNormal  # noqa: E402
from pyro.optim import Adam  # type: ignore[attr-defined]  # noqa: E402

from torch_blue_pyro import vi  # noqa: E402
from torch_blue_pyro.poutine import flipout, local_reparameterization  # noqa: E402


def on_device(tensor: Tensor, device: torch.device, what: str) -> None:
    """Raise unless ``tensor`` lives on ``device`` (any index of its type)."""
    if tensor.device.type != device.type:
        raise AssertionError(f"{what} is on {tensor.device}, expected {device}")


def train_step(net: Any, x: Tensor, y: Tensor, loss_fn: Any = None) -> None:
    """One torch_blue-mode step; checks output, log probs and gradients."""
    device = x.device
    loss_fn = loss_fn or vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=100
    )
    output = net(x, samples=4)
    on_device(output, device, "output")
    if output.log_probs is not None:
        on_device(output.log_probs, device, "log_probs")
    loss = loss_fn(output, y)
    on_device(loss, device, "loss")
    loss.backward()
    for name, parameter in net.named_parameters():
        if parameter.grad is None:
            raise AssertionError(f"no gradient for {name}")
        on_device(parameter.grad, device, f"gradient of {name}")
    for name, buffer in net.named_buffers():
        on_device(buffer, device, f"buffer {name}")


class Pooled(vi.VIModule):
    """Sequence model: ``head(body(x).mean(-2))``."""

    handles_sample_dim = True

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean(-2))


class Attention(vi.VIModule):
    """Self-attention, then a head on the mean over the sequence."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.attention = vi.VIMultiheadAttention(8, 2, device=device)
        self.head = vi.VILinear(8, 3, device=device)

    def forward(self, x: Tensor) -> Tensor:
        attended = self.attention(x, x, x)
        attended = attended[0] if isinstance(attended, tuple) else attended
        return self.head(attended.mean(-2))


def layer_checks(device: torch.device) -> dict[str, Callable[[], None]]:
    """The per-layer checks: a network and its input on the device."""
    y = torch.randint(0, 3, (5,), device=device)

    def conv(dims: int) -> Callable[[], None]:
        layer = (vi.VIConv1d, vi.VIConv2d, vi.VIConv3d)[dims - 1]
        size = (6,) * dims

        def check() -> None:
            net = vi.VISequential(
                layer(2, 4, 3, padding=1, device=device),
                nn.Flatten(),
                vi.VILinear(4 * 6**dims, 3, device=device),
            )
            train_step(net, torch.randn(5, 2, *size, device=device), y)

        return check

    def linear() -> None:
        net = vi.VISequential(
            vi.VILinear(4, 8, device=device),
            nn.ReLU(),
            vi.VILinear(8, 3, device=device),
        )
        train_step(net, torch.randn(5, 4, device=device), y)

    def attention() -> None:
        train_step(Attention(device), torch.randn(5, 7, 8, device=device), y)

    def encoder_layer() -> None:
        net = Pooled(
            vi.VITransformerEncoderLayer(8, 2, 16, device=device),
            vi.VILinear(8, 3, device=device),
        )
        train_step(net, torch.randn(5, 7, 8, device=device), y)

    def transformer() -> None:
        body = vi.VITransformer(
            d_model=8,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=16,
            device=device,
        )

        class Seq2Seq(vi.VIModule):
            def __init__(self) -> None:
                super().__init__()
                self.body = body
                self.head = vi.VILinear(8, 3, device=device)

            def forward(self, x: Tensor) -> Tensor:
                return self.head(self.body(x, x).mean(-2))

        train_step(Seq2Seq(), torch.randn(5, 7, 8, device=device), y)

    return {
        "VILinear": linear,
        "VIConv1d": conv(1),
        "VIConv2d": conv(2),
        "VIConv3d": conv(3),
        "VIMultiheadAttention": attention,
        "VITransformerEncoderLayer": encoder_layer,
        "VITransformer": transformer,
    }


def mlp(device: torch.device | None = None) -> Any:
    """The benchmark MLP 64-256-256-10."""
    return vi.VISequential(
        vi.VILinear(64, 256, device=device),
        nn.ReLU(),
        vi.VILinear(256, 256, device=device),
        nn.ReLU(),
        vi.VILinear(256, 10, device=device),
    )


def workflow_checks(device: torch.device) -> dict[str, Callable[[], None]]:
    """Moving, the other losses, the estimators, Pyro mode, checkpoints."""
    x = torch.randn(32, 64, device=device)
    y = torch.randint(0, 10, (32,), device=device)

    def moved() -> None:
        train_step(mlp().to(device), x, y)

    def analytical() -> None:
        loss = vi.AnalyticalKullbackLeiblerLoss(
            mlp(device), vi.distributions.Categorical(), dataset_size=100
        )
        train_step(loss.model, x, y, loss)

    def estimator(handler: Callable[[], Any]) -> Callable[[], None]:
        def check() -> None:
            with handler():
                train_step(mlp(device), x, y)

        return check

    def classifier(net: Any) -> Callable[..., Tensor]:
        def model(x: Tensor, y: Tensor | None = None) -> Tensor:
            with pyro.plate("data", 1000, subsample_size=len(x)):
                logits = pyro.deterministic("logits", net(x), event_dim=1)
                pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
            return logits

        return model

    def svi(auto: bool) -> Callable[[], None]:
        def check() -> None:
            pyro.clear_param_store()
            net = mlp(device)
            model = classifier(net)
            guide = AutoNormal(model) if auto else net.guide
            elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
            loss = SVI(model, guide, Adam({"lr": 1e-3}), elbo).step(x, y)
            if not torch.isfinite(torch.tensor(loss)):
                raise AssertionError(f"loss {loss}")
            for name, parameter in net.named_parameters():
                on_device(parameter, device, name)

        return check

    def predictive() -> None:
        net = mlp(device)
        draws = Predictive(
            classifier(net), guide=net.guide, num_samples=5, parallel=True
        )(x)
        on_device(draws["logits"], device, "Predictive logits")
        if draws["logits"].shape != (5, 32, 10):
            raise AssertionError(f"logits shape {tuple(draws['logits'].shape)}")

    def checkpoint() -> None:
        net = mlp(device)
        buffer = io.BytesIO()
        torch.save(net.state_dict(), buffer)
        buffer.seek(0)
        restored = mlp()
        restored.load_state_dict(torch.load(buffer, map_location="cpu"))
        restored.return_log_probs = False
        restored(torch.randn(3, 64), samples=2)

    return {
        ".to(device)": moved,
        "AnalyticalKullbackLeiblerLoss": analytical,
        "local_reparameterization()": estimator(local_reparameterization),
        "flipout()": estimator(flipout),
        "SVI, net.guide, vectorized particles": svi(auto=False),
        "SVI, AutoNormal, vectorized particles": svi(auto=True),
        "Predictive(parallel=True)": predictive,
        "state_dict to CPU": checkpoint,
    }


def count_syncs(step: Callable[[], None]) -> tuple[int, list[str]]:
    """Synchronising CUDA calls in ``step`` and their most frequent places."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    places: collections.Counter[str] = collections.Counter()
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    for warning in syncs:
        places[f"{Path(warning.filename).name}:{warning.lineno}"] += 1
    return len(syncs), [f"{n}x {place}" for place, n in places.most_common(8)]


def sync_report(device: torch.device) -> None:
    """Print the synchronisations of one MLP training step and one prediction."""
    net = mlp(device)
    x = torch.randn(128, 64, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    loss_fn = vi.KullbackLeiblerLoss(vi.distributions.Categorical(), dataset_size=100)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train() -> None:
        loss_fn(net(x, samples=10), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    def predict() -> None:
        with torch.no_grad():
            net(x, samples=10)

    train()  # warm up: caches, lazy initialisation
    for validation in (True, False):
        with pyro.validation_enabled(validation):
            for name, step in (("train step", train), ("predict", predict)):
                count, places = count_syncs(step)
                print(
                    f"- host-device synchronisations per {name} with Pyro's "
                    f"validation {'on' if validation else 'off'}: {count}"
                )
                for place in places:
                    print(f"  - {place}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check, print the results, return 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (cuda)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    checks = {**layer_checks(device), **workflow_checks(device)}
    failed = 0
    print(f"# torch_blue_pyro smoke test on {device} (torch {torch.__version__})")
    print()
    for name, check in checks.items():
        try:
            check()
            print(f"- ok: {name}")
        except Exception as error:
            failed += 1
            frame = traceback.extract_tb(error.__traceback__)[-1]
            print(
                f"- FAILED: {name}: {type(error).__name__}: "
                f"{str(error).strip()[:300]} ({Path(frame.filename).name}:"
                f"{frame.lineno})"
            )
    if device.type == "cuda":
        print()
        sync_report(device)
    print()
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
