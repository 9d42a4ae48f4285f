"""A small study file for `xfw study`: two cells of the seeds' MLP, PyTorch on one device."""

from pathlib import Path

import yaml

from tests.helpers.cli import ROOT


def write_study(path: Path, **over) -> Path:
    """Two cells of the seeds' MLP, PyTorch on one device (the fastest runs xfw has), two seeds."""
    spec = {
        "name": "tiny",
        "workloads": [{"name": "mlp", "config": str(ROOT / "configs/default.yaml"), "set": ["training.steps=60"]}],
        "axes": {"training.global_batch": [16, 32]},
        "strategies": ["single"],
        "implementations": ["torch-single"],
        "seeds": [0, 1],
        "target": {"metric": "train_loss", "below": 1.0e-9},  # unreachable: reported, not an error
    }
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path
