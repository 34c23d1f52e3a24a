"""Shared fixtures: one tiny simulated dataset per test session, tiny checkpoints and a PNG check."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import pytest
import torch

from czii.config import config_to_dict, load_config, save_resolved
from czii.simulate import SimConfig, SimResult, simulate_dataset
from czii.models import build_model, save_checkpoint, stride
from czii.particles import PARTICLE_NAMES
from czii.predictor import recipe, spec_from_config

CPU_TINY = Path(__file__).resolve().parents[1] / "configs" / "cpu_tiny.yaml"
TINY_CHECKPOINT_SETS = ["data.level=0", "model.encoder_depth=1", "model.decoder_channels=[8]",
                        "infer.tile_zyx=[32,96,96]", "infer.tta=none"]


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> SimResult:
    """The "tiny" preset (3 train + 1 test runs of 32×96×96, all four tomogram types, seed 0), simulated once.

    Read-only for tests: copy it before writing into it.
    """
    return simulate_dataset(tmp_path_factory.mktemp("tiny_sim") / "sim", SimConfig.preset("tiny"), progress=False)


def _save_tiny_checkpoint(path: Path, seed: int, classes=PARTICLE_NAMES, input_channels=("denoised",)) -> Path:
    config = load_config(CPU_TINY, [*TINY_CHECKPOINT_SETS, f"data.classes={json.dumps(list(classes))}",
                                    f"data.input_channels={json.dumps(list(input_channels))}"])
    torch.manual_seed(seed)
    model = build_model(config.model, len(input_channels), len(classes))
    save_checkpoint(path, {
        "model_config": dataclasses.asdict(config.model), "classes": list(classes),
        "input_channels": list(input_channels), "activation": "sigmoid",
        "normalisation": dataclasses.asdict(config.data.normalisation), "level": 0, "stride": stride(config.model),
        "state_dict": model.state_dict(), "ema_state_dict": None, "epoch": 1, "config": config_to_dict(config),
    })
    if path.parent.name == "checkpoints" and path.parent.parent.name.startswith("fold"):
        save_resolved(config, path.parents[2] / "config.yaml")  # as training writes it beside the folds
    return path


def _write_oof_spec(oof_dir: Path, overrides: tuple[str, ...] = ()) -> str:
    spec = spec_from_config(load_config(CPU_TINY, list(overrides)), [("best.pt", 1.0)])
    oof_dir.mkdir(parents=True, exist_ok=True)
    (oof_dir / "spec.json").write_text(json.dumps({"spec_hash": spec.hash, "spec": recipe(spec)}))
    return spec.hash


@pytest.fixture(scope="session")
def write_oof_spec() -> Callable[..., str]:
    """``write(oof_dir, overrides=()) -> spec hash``: the ``oof/spec.json`` that training's out-of-fold pass
    writes, for the shipped spec of cpu_tiny with ``--set`` overrides (hand-made run directories)."""
    return _write_oof_spec


@pytest.fixture(scope="session")
def save_tiny_checkpoint() -> Callable[..., Path]:
    """``save(path, seed, classes=PARTICLE_NAMES, input_channels=("denoised",)) -> path``: a random-weight
    resnet18 depth-1 U-Net checkpoint (cpu_tiny config, sigmoid) carrying a resolved config, as training writes it;
    at ``<run dir>/fold<K>/checkpoints/<name>.pt`` the run directory gets that ``config.yaml`` too."""
    return _save_tiny_checkpoint


def one_line_error(capsys, command: str, *fragments: str) -> str:
    """The last stderr line, asserted to be ``czii <command>: error: ...`` holding every fragment."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"czii {command}: error: "), err
    for fragment in fragments:
        assert fragment in err[-1], (fragment, err[-1])
    return err[-1]


def _assert_valid_png(path: Path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > min_bytes, (path, len(data))
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels[..., :3].std() > 0.02, path


@pytest.fixture(scope="session")
def assert_valid_png() -> Callable[..., None]:
    """``check(path, min_bytes=5000)``: asserts a PNG file of some size whose pixels are not a single flat colour."""
    return _assert_valid_png
