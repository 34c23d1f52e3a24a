"""``czii export-model --format onnx`` and ``czii infer --runtime onnx`` (and ``compiled``) against torch on the
tiny simulated data, with real (random-weight) 3D U-Nets run by onnxruntime's CPU execution provider.

Tolerances, stated here and in docs/ARCHITECTURE.md: onnxruntime's probabilities agree with torch's within 1e-5
on every voxel; the picks are the same (class, order), coordinates within 1e-3 Å, scores within 1e-5.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from czii.cli import main
from czii.errors import ConfigError
from czii.data import open_dataset
from czii.inference.onnx_members import MAX_LOGIT_DIFF, onnx_path, read_export, sidecar_path
from czii.inference.pipeline import manifest_path, resolve_predictor, run_inference
from czii.inference.predictor import Predictor
from czii.io import sha256_file
from czii.predictor import save_thresholds
from czii.submission import read_scored_submission

THRESHOLDS = {"apo-ferritin": 0.45, "beta-amylase": 0.45, "beta-galactosidase": 0.45, "ribosome": 0.45,
              "thyroglobulin": 0.45, "virus-like-particle": 0.45}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, save_tiny_checkpoint):
    """A two-fold run directory whose members were exported with the CLI."""
    run_dir = tmp_path_factory.mktemp("onnx") / "runs" / "exp"
    for fold in (0, 1):
        save_tiny_checkpoint(run_dir / f"fold{fold}" / "checkpoints" / "best.pt", seed=10 + fold)
    assert main(["export-model", "--format", "onnx", "--models", str(run_dir)]) == 0
    return run_dir


def test_every_member_is_exported_beside_its_checkpoint_with_its_record(exported):
    for fold in (0, 1):
        ckpt = exported / f"fold{fold}" / "checkpoints" / "best.pt"
        record = read_export(onnx_path(ckpt))
        assert onnx_path(ckpt).stat().st_size > 1000
        assert record.checkpoint_sha256 == sha256_file(ckpt)
        assert 0 <= record.max_abs_logit_diff <= MAX_LOGIT_DIFF
    assert not list(exported.rglob("*.lock")) and not list(exported.rglob("*.tmp*"))


def test_onnx_probabilities_and_picks_equal_torch(exported, tiny_sim, tmp_path):
    spec, _, _ = resolve_predictor(exported)
    dataset = open_dataset(tiny_sim.kaggle_dir, split="test")
    (run,) = dataset.runs()
    torch_pred, onnx_pred = Predictor.load(spec, "cpu"), Predictor.load(spec, "cpu", runtime="onnx")
    volume, _ = torch_pred.load_input(dataset, run)
    difference = np.abs(onnx_pred.probabilities(volume) - torch_pred.probabilities(volume)).max()
    assert difference <= 1e-5

    save_thresholds(tmp_path / "thr.json", THRESHOLDS, report={})
    tables = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.csv"
        result = run_inference(exported, tiny_sim.kaggle_dir, out_csv=out, device="cpu", progress=False,
                               thresholds=tmp_path / "thr.json", runtime=runtime)
        assert result.manifest["runtime"] == runtime
        tables[runtime] = read_scored_submission(out)
    assert len(tables["torch"]) > 10
    pd.testing.assert_frame_equal(tables["onnx"], tables["torch"], check_exact=False, rtol=0, atol=1e-3)
    assert np.abs(tables["onnx"].score - tables["torch"].score).max() <= 1e-5
    manifest = json.loads(manifest_path(tmp_path / "onnx.csv").read_text())
    assert manifest["onnx"] == [str(onnx_path(exported / f"fold{f}" / "checkpoints" / "best.pt")) for f in (0, 1)]


def test_an_export_is_not_replaced_without_overwrite(exported, capsys):
    onnx = onnx_path(exported / "fold0" / "checkpoints" / "best.pt")
    before = onnx.read_bytes()
    assert main(["export-model", "--format", "onnx", "--models", str(exported)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(onnx) in err and "--overwrite" in err
    assert onnx.read_bytes() == before


def test_a_stale_or_missing_export_is_refused_before_any_prediction(tmp_path, tiny_sim, save_tiny_checkpoint,
                                                                   capsys):
    run_dir = tmp_path / "runs" / "exp"
    ckpt = save_tiny_checkpoint(run_dir / "fold0" / "checkpoints" / "best.pt", seed=3)
    out = tmp_path / "sub.csv"
    args = ["infer", "--models", str(run_dir), "--data", str(tiny_sim.kaggle_dir), "--out", str(out),
            "--device", "cpu", "--runtime", "onnx"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no ONNX export" in err and "czii export-model" in err and not out.exists()

    assert main(["export-model", "--models", str(run_dir)]) == 0
    capsys.readouterr()
    save_tiny_checkpoint(ckpt, seed=4)  # retrained: the export now holds other weights
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exported from another version" in err and str(ckpt) in err and not out.exists()

    sidecar_path(onnx_path(ckpt)).write_text(json.dumps({"schema_version": 9}))
    assert main(args) == 2
    assert "schema_version 9" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_members_give_the_probabilities_of_eager_ones(exported, tiny_sim):
    """torch.compile (inductor, a C++ compiler on CPU) fuses the same float32 arithmetic: within 1e-5."""
    spec, _, _ = resolve_predictor(exported)
    dataset = open_dataset(tiny_sim.kaggle_dir, split="test")
    (run,) = dataset.runs()
    eager, compiled = Predictor.load(spec, "cpu"), Predictor.load(spec, "cpu", runtime="compiled")
    volume, _ = eager.load_input(dataset, run)
    assert np.abs(compiled.probabilities(volume) - eager.probabilities(volume)).max() <= 1e-5


def test_without_the_onnx_extra_export_and_inference_say_what_to_install(exported, monkeypatch, capsys):
    """sys.modules[name] = None makes ``import name`` fail as it does where the package is not installed."""
    ckpt = exported / "fold0" / "checkpoints" / "best.pt"
    before = onnx_path(ckpt).read_bytes()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export-model", "--models", str(exported), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'onnxruntime'" in err and "pip install 'czii[onnx]'" in err
    assert onnx_path(ckpt).read_bytes() == before
    spec, _, _ = resolve_predictor(exported)
    with pytest.raises(ConfigError, match=r"pip install 'czii\[onnx\]'"):
        Predictor.load(spec, "cpu", runtime="onnx")
