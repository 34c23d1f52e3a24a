"""What is tuned is what ships: out-of-fold candidates, thresholds and inference share one predictor spec."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import CPU_TINY

from czii.cli import main
from czii.config import load_config, with_data_paths
from czii.errors import ConfigError
from czii.inference.pipeline import manifest_path, run_inference
from czii.predictor import resolve_spec
from czii.training.loop import train

KEY = ["experiment", "particle_type", "x", "y", "z"]


@pytest.fixture(scope="module")
def trained(tiny_sim, tmp_path_factory):
    """fold 0 of cpu_tiny trained briefly on the tiny simulation (TTA flips, as cpu_tiny ships), then tuned."""
    config = with_data_paths(load_config(CPU_TINY, [
        "train.epochs=1", "train.steps_per_epoch=6", "patch.size_zyx=[16,32,32]", "val.tile_zyx=[16,48,48]",
        "infer.tile_zyx=[16,48,48]", "val.oof_threshold=0.05",
    ]), [tiny_sim.copick_config])
    run_dir = tmp_path_factory.mktemp("spec") / "runs" / "tiny"
    train(config, fold=0, out_dir=run_dir)
    assert main(["tune", "--run-dir", str(run_dir)]) == 0
    return run_dir


def _kept(candidates: pd.DataFrame, thresholds: dict) -> pd.DataFrame:
    kept = candidates[candidates["score"] >= candidates["particle_type"].map(thresholds)]
    return kept[KEY].sort_values(KEY).reset_index(drop=True)


def test_infer_on_the_held_out_run_gives_the_oof_picks_at_the_tuned_thresholds(trained, tiny_sim, tmp_path):
    oof_spec = json.loads((trained / "fold0" / "oof" / "spec.json").read_text())
    doc = json.loads((trained / "thresholds.json").read_text())
    spec = resolve_spec(trained)
    assert oof_spec["spec_hash"] == doc["spec_hash"] == spec.hash
    assert spec.tta == ["identity", "flip_z", "flip_y", "flip_x"], "cpu_tiny ships 4 flips; OOF used them too"

    (held_out,) = json.loads((trained / "fold0" / "seed.json").read_text())["val_runs"]
    out = tmp_path / "heldout.csv"
    result = run_inference(trained, tiny_sim.copick_config, runs=[held_out], out_csv=out, device="cpu",
                           progress=False)
    candidates = pd.read_csv(trained / "fold0" / "oof" / "candidates.csv", dtype={"experiment": str})
    expected = _kept(candidates, doc["thresholds"])
    assert len(expected) > 0
    actual = result.submission[KEY].sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-6, atol=1e-3)

    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["spec_hash"] == spec.hash and manifest["thresholds"]["tuned_spec_hash"] == spec.hash
    assert manifest["thresholds"]["spec_check"] == "match" and manifest["spec"]["tta"] == spec.tta


def test_a_spec_that_changes_scores_is_refused_unless_allowed(trained, tiny_sim, tmp_path, capsys):
    spec = resolve_spec(trained)
    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    args = ["infer", "--models", str(trained), "--data", str(tiny_sim.copick_config), "--out", str(out),
            "--device", "cpu", "--tta", "flips_rot90"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("czii infer: error: ") and spec.hash in err and "--allow-spec-mismatch" in err
    assert "tta" in err and "czii tune --run-dir" in err
    assert list(out.parent.iterdir()) == []
    with pytest.raises(ConfigError, match="tiling.tile_zyx"):
        run_inference(trained, tiny_sim.copick_config, out_csv=out, tile_zyx=[32, 48, 48], progress=False)

    assert main([*args, "--allow-spec-mismatch", "--runs", tiny_sim.train_runs[0]]) == 0
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["thresholds"]["spec_check"] == "mismatch-allowed"
    assert manifest["thresholds"]["tuned_spec_hash"] == spec.hash != manifest["spec_hash"]
    # the batch size does not change scores: no refusal
    run_inference(trained, tiny_sim.copick_config, runs=[tiny_sim.train_runs[0]], out_csv=tmp_path / "b.csv",
                  batch_size=3, device="cpu", progress=False)


def test_tune_set_repredicts_the_oof_runs_under_the_new_spec(trained, tiny_sim, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    before = resolve_spec(run_dir).hash
    assert main(["tune", "--run-dir", str(run_dir), "--set", "infer.tta=none"]) == 0
    assert "re-predicted" in capsys.readouterr().out
    after = resolve_spec(run_dir)
    assert after.tta == ["identity"] and after.hash != before
    assert json.loads((run_dir / "fold0" / "oof" / "spec.json").read_text())["spec_hash"] == after.hash
    result = run_inference(run_dir, tiny_sim.copick_config, runs=[tiny_sim.train_runs[0]],
                           out_csv=tmp_path / "none.csv", device="cpu", progress=False)
    assert result.manifest["thresholds"]["spec_check"] == "match" and result.manifest["tta"] == ["identity"]
    assert main(["tune", "--run-dir", str(run_dir), "--set", "train.epochs=3"]) == 2
    assert "need `czii train`" in capsys.readouterr().err


def test_the_spec_records_the_members_voxel_size_and_refuses_another(trained, tiny_sim, tmp_path, capsys):
    import dataclasses

    from czii.models import read_checkpoint
    from czii.predictor import load_spec, save_spec

    trained_at = read_checkpoint(trained / "fold0" / "checkpoints" / "best.pt")["spacing_zyx_A"]
    assert trained_at == pytest.approx([2 * 10.012] * 3, rel=1e-3)  # cpu_tiny: level 1 of the 10.012 Å data
    # the out-of-fold spec, and so the thresholds file's recipe, record it
    recorded = json.loads((trained / "thresholds.json").read_text())["spec"]["input"]["spacing_zyx_A"]
    assert recorded == pytest.approx(trained_at)
    spec = resolve_spec(trained)
    assert spec.input.spacing_zyx_A == pytest.approx(trained_at)
    # a spec YAML that says another voxel size is refused with both numbers, and writes nothing
    wrong = dataclasses.replace(spec, input=dataclasses.replace(spec.input, spacing_zyx_A=[13.48] * 3))
    assert wrong.hash == spec.hash  # the members' property, checked against them rather than hashed
    save_spec(wrong, tmp_path / "wrong.yaml")
    out = tmp_path / "out" / "sub.csv"
    assert main(["infer", "--models", str(tmp_path / "wrong.yaml"), "--data", str(tiny_sim.copick_config),
                 "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "13.48" in err and f"{trained_at[0]}" in err and "spacing_zyx_A" in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    # null is filled in from the members
    unknown = dataclasses.replace(spec, input=dataclasses.replace(spec.input, spacing_zyx_A=None))
    save_spec(unknown, tmp_path / "unknown.yaml")
    from czii.inference import Predictor

    assert Predictor.load(load_spec(tmp_path / "unknown.yaml")).spec.input.spacing_zyx_A == pytest.approx(trained_at)


def test_python_dash_m_czii_and_a_torch_free_config():
    proc = subprocess.run([sys.executable, "-m", "czii", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "infer" in proc.stdout and "usage: czii" in proc.stdout
    probe = ("import sys; from czii.config import load_config; from czii.predictor import spec_from_config; "
             f"c = load_config({str(CPU_TINY)!r}); spec_from_config(c, [('m.pt', 1.0)]); "
             "print(sorted(m for m in ('torch', 'copick', 'zarr') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
