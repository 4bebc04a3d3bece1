"""Check a built wheel from a fresh environment that has it installed without extras.

Usage: ``python .ci/wheel_check.py dist/torch_blue_pyro-*.whl`` (run by .ci/run in a
virtual environment holding only CPU torch, the oldest supported pyro-ppl and the
wheel). Asserts that the wheel holds only the package (and its ``py.typed``), that
the installed copy, not the checkout, is imported, and that the demo's model trains.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

#: Full-batch steps of the demo's optimizer (its small steps: 0.72 after 200 steps).
STEPS = 300


def check_contents(wheel: Path) -> None:
    """The wheel holds the package and its metadata, nothing else."""
    names = zipfile.ZipFile(wheel).namelist()
    stray = [
        name
        for name in names
        if not name.startswith(("torch_blue_pyro/", "torch_blue_pyro-"))
    ]
    assert not stray, f"the wheel holds files outside the package: {stray}"
    assert "torch_blue_pyro/py.typed" in names, "the wheel lacks the py.typed marker"
    assert "torch_blue_pyro/vi/__init__.py" in names, "the wheel lacks the vi package"
    print(f"{wheel.name}: {len(names)} files, only the package")


def check_training() -> None:
    """The installed package imports and the demo's model learns a random rule."""
    import pyro
    import torch

    import torch_blue_pyro
    from torch_blue_pyro.demo import RECOMMENDED, build_model, recommended_training

    location = Path(torch_blue_pyro.__file__).resolve()
    assert Path(sys.prefix).resolve() in location.parents, (
        f"imported {location}, not the installed wheel"
    )
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    y = (x @ torch.randn(64, 10)).argmax(dim=-1)
    model = build_model(64, 10)
    loss_fn, optimizer = recommended_training(model, dataset_size=256)
    for _ in range(STEPS):
        loss = loss_fn(model(x, samples=RECOMMENDED["samples"]), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.return_log_probs = False
    with torch.no_grad():
        logits = model(x, samples=8)
    assert logits.shape == (8, 256, 10)
    accuracy = (logits.softmax(-1).mean(0).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.6, f"the demo's model did not learn: accuracy {accuracy}"
    print(
        f"the installed wheel trains (training accuracy {accuracy:.2f} after {STEPS} "
        f"steps, chance 0.1) with torch {torch.__version__}, pyro-ppl "
        f"{pyro.__version__}"
    )


if __name__ == "__main__":
    check_contents(Path(sys.argv[1]))
    check_training()
