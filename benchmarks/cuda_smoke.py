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
- a ``state_dict`` saved on the device and loaded on CPU;
- the model zoo on both execution paths (``sample_execution`` ``"stacked"`` and
  ``"loop"``): an MLP ``VISequential``, a CNN with ``BatchNorm2d``, ``Dropout2d`` and
  ``MaxPool2d`` on 3x32x32 images, the plain ResNet-18 of ``torch_blue_pyro.zoo``
  (width 16) and a plain ``nn.TransformerEncoderLayer`` classifier, both converted
  with ``convert_to_vimodule``, and a native ``VITransformer``: a training step and
  a prediction (outputs, log-probabilities and gradients on the device), and the
  two paths' ``eval()`` outputs equal for the same seed (within 1e-4 relative, in
  float32 without TF32);
- mixed precision, for the same models on both paths: three training steps under
  ``torch.autocast`` with a finite float32 loss; on CUDA with ``float16`` and a
  ``torch.amp.GradScaler``, and with ``bfloat16`` where the GPU supports it, on
  the CPU with ``bfloat16``.

On CUDA it then counts the host-device synchronisations of one training step and
one prediction (in ``eval()``) with ``torch.cuda.set_sync_debug_mode("warn")``
(each ``.item()``, ``float(tensor)``, ``bool(tensor)`` or data-dependent shape is
one), and names where they happen: each one stalls the CPU until the GPU has caught
up. It counts them for the benchmark MLP, and for the BatchNorm CNN and the
converted ResNet-18 on the stacked path, with Pyro's validation on (the default:
the value checks of outputs and labels run) and off
(``vi.utils.value_checks_enabled``: none should remain). On the CPU the CUDA-only
parts (float16 with a GradScaler, the synchronisation counts) are skipped with a
note.

Run::

    python benchmarks/cuda_smoke.py                 # --device cuda
    python benchmarks/cuda_smoke.py --device cpu    # the same checks on CPU

Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import io
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
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
from torch_blue_pyro.zoo import resnet18  # noqa: E402


def on_device(tensor: Tensor, device: torch.device, what: str) -> None:
    """Raise unless ``tensor`` lives on ``device`` (any index of its type)."""
    if tensor.device.type != device.type:
        raise AssertionError(f"{what} is on {tensor.device}, expected {device}")


def train_step(
    net: Any, x: Tensor | tuple[Tensor, ...], y: Tensor, loss_fn: Any = None
) -> None:
    """One torch_blue-mode step; checks output, log probs and gradients.

    ``x`` is the input, or a tuple of the inputs of a model that takes several.
    """
    inputs = x if isinstance(x, tuple) else (x,)
    device = inputs[0].device
    loss_fn = loss_fn or vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=100
    )
    output = net(*inputs, samples=4)
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
        source = torch.randn(5, 7, 16, device=device)
        target = torch.randn(5, 4, 16, device=device)
        train_step(TransformerClassifier(device), (source, target), y)

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


# --- the model zoo on both execution paths -----------------------------------------

PATHS = ("stacked", "loop")
ZOO_BATCH = 8
ZOO_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """A zoo network: a builder and the inputs of one batch, on a device."""

    name: str
    build: Callable[[torch.device], Any]
    inputs: Callable[[torch.device], tuple[Tensor, ...]]


def zoo_mlp(device: torch.device) -> Any:
    """(a) An MLP ``VISequential``."""
    return vi.VISequential(
        vi.VILinear(16, 32, device=device),
        nn.ReLU(),
        vi.VILinear(32, ZOO_CLASSES, device=device),
    )


def zoo_batchnorm_cnn(device: torch.device) -> Any:
    """(b) A CNN with batch norm, dropout and pooling on 3x32x32 images."""
    return vi.VISequential(
        vi.VIConv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout2d(0.1),
        nn.MaxPool2d(2),
        nn.Flatten(),
        vi.VILinear(8 * 16 * 16, ZOO_CLASSES),
    ).to(device)


def zoo_resnet(device: torch.device) -> Any:
    """(c) The plain ResNet-18 (width 16) converted with ``convert_to_vimodule``."""
    net = resnet18(num_classes=ZOO_CLASSES, width=16)
    vi.convert_to_vimodule(net)
    return net.to(device)


class PlainEncoderClassifier(nn.Module):
    """A plain-torch transformer classifier: embedding, encoder layer, mean, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.encoder = nn.TransformerEncoderLayer(
            16, 2, dim_feedforward=32, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(16, ZOO_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def zoo_converted_encoder(device: torch.device) -> Any:
    """(d) ``PlainEncoderClassifier`` converted with ``convert_to_vimodule``."""
    net = PlainEncoderClassifier()
    vi.convert_to_vimodule(net)
    return net.to(device)


class TransformerClassifier(vi.VIModule):
    """(e) A native ``VITransformer``: source and target in, scores out."""

    handles_sample_dim = True

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.transformer = vi.VITransformer(
            d_model=16,
            nhead=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=32,
            dropout=0.1,
            batch_first=True,
            device=device,
        )
        self.head = vi.VILinear(16, ZOO_CLASSES, device=device)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        return self.head(self.transformer(source, target).mean(dim=-2))


def images(device: torch.device) -> tuple[Tensor, ...]:
    """A batch of 3x32x32 images."""
    return (torch.randn(ZOO_BATCH, 3, 32, 32, device=device),)


ZOO = (
    ZooModel("MLP", zoo_mlp, lambda d: (torch.randn(ZOO_BATCH, 16, device=d),)),
    ZooModel("BatchNorm CNN", zoo_batchnorm_cnn, images),
    ZooModel("converted ResNet-18 (width 16)", zoo_resnet, images),
    ZooModel(
        "converted TransformerEncoderLayer classifier",
        zoo_converted_encoder,
        lambda d: (torch.randn(ZOO_BATCH, 7, 3, device=d),),
    ),
    ZooModel(
        "VITransformer",
        TransformerClassifier,
        lambda d: (
            torch.randn(ZOO_BATCH, 7, 16, device=d),
            torch.randn(ZOO_BATCH, 5, 16, device=d),
        ),
    ),
)


def labels(device: torch.device) -> Tensor:
    """Random labels of one zoo batch."""
    return torch.randint(0, ZOO_CLASSES, (ZOO_BATCH,), device=device)


def zoo_predict(net: Any, inputs: tuple[Tensor, ...], seed: int = 1) -> Tensor:
    """A seeded prediction in eval() mode without log probs; checks the device."""
    net.eval()
    net.return_log_probs = False
    torch.manual_seed(seed)
    with torch.no_grad():
        output = net(*inputs, samples=4)
    on_device(output, inputs[0].device, "prediction")
    if output.shape != (4, ZOO_BATCH, ZOO_CLASSES):
        raise AssertionError(f"prediction shape {tuple(output.shape)}")
    return output


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """Float32 matrix products and convolutions without TF32 (CUDA's default for
    convolutions): the two paths may pick different kernels, which TF32 rounds
    differently."""
    matmul, cudnn = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def zoo_checks(device: torch.device) -> dict[str, Callable[[], None]]:
    """Per zoo model: a training step and a prediction on each path, and the two
    paths' eval() outputs equal for the same seed."""

    def on_path(entry: ZooModel, path: str) -> Callable[[], None]:
        def check() -> None:
            net = entry.build(device)
            net.sample_execution = path
            net.train()
            train_step(net, entry.inputs(device), labels(device))
            zoo_predict(net, entry.inputs(device))

        return check

    def agree(entry: ZooModel) -> Callable[[], None]:
        def check() -> None:
            net = entry.build(device)
            inputs = entry.inputs(device)
            outputs = []
            with full_float32():
                for path in PATHS:
                    copied = copy.deepcopy(net)
                    copied.sample_execution = path
                    outputs.append(zoo_predict(copied, inputs))
            torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)

        return check

    checks: dict[str, Callable[[], None]] = {}
    for entry in ZOO:
        for path in PATHS:
            checks[f"zoo {entry.name}, {path}: train step, prediction"] = on_path(
                entry, path
            )
        checks[f"zoo {entry.name}: stacked and loop agree in eval()"] = agree(entry)
    return checks


def autocast_dtypes(device: torch.device) -> list[torch.dtype]:
    """The autocast dtypes checked on a device: bf16 on CPU; fp16, and bf16 where
    supported, on CUDA."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return [torch.float16, *([torch.bfloat16] if supported else [])]
    return [torch.bfloat16]


def autocast_checks(device: torch.device) -> dict[str, Callable[[], None]]:
    """A few training steps of every zoo model on both paths under autocast
    (float16 with a ``torch.amp.GradScaler``): a finite float32 loss."""

    def steps(entry: ZooModel, path: str, dtype: torch.dtype) -> Callable[[], None]:
        def check() -> None:
            net = entry.build(device)
            net.sample_execution = path
            net.train()
            inputs, y = entry.inputs(device), labels(device)
            loss_fn = vi.KullbackLeiblerLoss(
                vi.distributions.Categorical(), dataset_size=100
            )
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
            for _ in range(3):
                with torch.autocast(device.type, dtype=dtype):
                    loss = loss_fn(net(*inputs, samples=4), y)
                on_device(loss, device, "loss")
                if loss.dtype != torch.float32:
                    raise AssertionError(f"loss dtype {loss.dtype}")
                if not torch.isfinite(loss):
                    raise AssertionError(f"loss {float(loss)}")
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
            for name, parameter in net.named_parameters():
                if not torch.isfinite(parameter).all():
                    raise AssertionError(f"{name} is not finite")

        return check

    checks: dict[str, Callable[[], None]] = {}
    for dtype in autocast_dtypes(device):
        scaled = " with GradScaler" if dtype == torch.float16 else ""
        for entry in ZOO:
            for path in PATHS:
                name = f"autocast {dtype}{scaled}: {entry.name}, {path}"
                checks[name] = steps(entry, path, dtype)
    return checks


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


def sync_report(
    name: str, net: Any, x: Tensor, y: Tensor, samples: int, loss_fn: Any = None
) -> None:
    """Print the synchronisations of one training step and one prediction."""
    loss_fn = loss_fn or vi.KullbackLeiblerLoss(
        vi.distributions.Categorical(), dataset_size=100
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train() -> None:
        loss_fn(net(x, samples=samples), y).backward()
        optimizer.step()
        optimizer.zero_grad()

    def predict() -> None:
        net.eval()
        try:
            with torch.no_grad():
                net(x, samples=samples)
        finally:
            net.train()

    net.train()
    train()  # warm up: caches, lazy initialisation
    predict()
    for validation in (True, False):
        with pyro.validation_enabled(validation):
            for step_name, step in (("train step", train), ("predict", predict)):
                count, places = count_syncs(step)
                print(
                    f"- {name}: host-device synchronisations per {step_name} with "
                    f"Pyro's validation {'on' if validation else 'off'}: {count}"
                )
                for place in places:
                    print(f"  - {place}")


def sync_reports(device: torch.device) -> int:
    """The synchronisation counts of the benchmark MLP, and of the BatchNorm CNN and
    the converted ResNet on the stacked path; returns how many failed to run."""
    batch = torch.randn(32, 3, 32, 32, device=device)
    image_labels = torch.randint(0, ZOO_CLASSES, (32,), device=device)

    def stacked(build: Callable[[torch.device], Any]) -> Any:
        net = build(device)
        net.sample_execution = "stacked"
        return net

    reports = {
        "MLP 64-256-256-10 (samples 10, batch 128)": lambda: sync_report(
            "MLP",
            mlp(device),
            torch.randn(128, 64, device=device),
            torch.randint(0, 10, (128,), device=device),
            samples=10,
        ),
        "BatchNorm CNN, stacked (samples 4, batch 32)": lambda: sync_report(
            "BatchNorm CNN, stacked",
            stacked(zoo_batchnorm_cnn),
            batch,
            image_labels,
            samples=4,
        ),
        "converted ResNet-18 (width 16), stacked (samples 4, batch 32)": lambda: (
            sync_report(
                "ResNet-18, stacked",
                stacked(zoo_resnet),
                batch,
                image_labels,
                samples=4,
            )
        ),
    }
    failed = 0
    for name, report in reports.items():
        print(f"### {name}")
        print()
        try:
            report()
        except Exception as error:
            failed += 1
            print(f"- FAILED: sync count of {name}: {describe(error)}")
        print()
    return failed


def describe(error: BaseException) -> str:
    """``Type: message (file:line)`` of an exception, the message shortened."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return (
        f"{type(error).__name__}: {str(error).strip()[:300]} "
        f"({Path(frame.filename).name}:{frame.lineno})"
    )


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
    checks = {
        **layer_checks(device),
        **workflow_checks(device),
        **zoo_checks(device),
        **autocast_checks(device),
    }
    failed = 0
    print(f"# torch_blue_pyro smoke test on {device} (torch {torch.__version__})")
    print()
    for name, check in checks.items():
        try:
            check()
            print(f"- ok: {name}", flush=True)
        except Exception as error:
            failed += 1
            print(f"- FAILED: {name}: {describe(error)}", flush=True)
    total = len(checks)
    print()
    if device.type == "cuda":
        print("## Host-device synchronisations")
        print()
        total += 3
        failed += sync_reports(device)
    else:
        print(
            "- skipped on the CPU (CUDA only): float16 autocast with a GradScaler, "
            "the counts of host-device synchronisations"
        )
        print()
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
