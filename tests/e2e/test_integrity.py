"""No silent wrong answers, round two: each case a new user met, end to end through the `czii` command.

Concurrent writers, IMOD unsigned bytes, edited spec records, unknown particle types on export, broken
OME-Zarr metadata, missing pyramid levels, and resumed inference whose inputs changed."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from conftest import CPU_TINY, one_line_error

from czii.cli import main
from czii.data import open_dataset
from czii.formats.mrc import write_mrc
from czii.inference.resume import work_dir
from czii.locks import folder_lock
from czii.submission import manifest_path, scores_path

TRAIN_SETS = ["train.steps_per_epoch=3", "patch.size_zyx=[16,32,32]", "val.tile_zyx=[16,48,48]",
              "infer.tile_zyx=[16,48,48]"]
IMOD_STAMP = 1146047817  # IMOD's mrc_format.txt: imodStamp at byte 152, imodFlags at 156 (bit 0: signed bytes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, save_tiny_checkpoint) -> Path:
    """A random-weight level-0 checkpoint: deterministic picks, no training needed."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", seed=3)


def _infer(models: Path, data, out: Path, *extra: str) -> int:
    return main(["infer", "--models", str(models), "--data", str(data), "--out", str(out), "--device", "cpu",
                 *extra])


# --------------------------------------------------------------------------- two writers


def _train_command(tiny_sim, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "czii", "train", "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config),
            "--out", str(out), "--device", "cpu", "--set", *TRAIN_SETS, "train.epochs=500", *extra]


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.is_file(), f"{path} never appeared (rc {proc.poll()})"


def test_two_trainings_of_one_fold_never_share_it_and_a_killed_one_needs_force(tiny_sim, tmp_path, capsys):
    out = tmp_path / "run"
    lock = folder_lock(out / "fold0")
    first = subprocess.Popen(_train_command(tiny_sim, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for(lock, first)
        assert main(_train_command(tiny_sim, out)[3:]) == 2
        one_line_error(capsys, "train", f"fold {out / 'fold0'} is being written by pid {first.pid}", "czii train")
        assert main(["tune", "--run-dir", str(out)]) == 2  # a tuning waits for its folds
        one_line_error(capsys, "tune", f"fold {out / 'fold0'} is being written by pid {first.pid}")
        _wait_for(out / "fold0" / "checkpoints" / "last.pt", first, seconds=240)
        first.send_signal(signal.SIGTERM)  # a scheduler's stop: the lock goes with the process
        assert first.wait(timeout=60) == 128 + signal.SIGTERM, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert not lock.exists()

    resumed = subprocess.Popen(_train_command(tiny_sim, out, "--resume"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_for(lock, resumed)
        resumed.send_signal(signal.SIGKILL)
        resumed.wait()
    finally:
        resumed.kill()
        resumed.wait()
    assert lock.is_file()
    assert main(_train_command(tiny_sim, out, "--resume", "--stop-after-epochs", "1")[3:]) == 2
    one_line_error(capsys, "train", f"stale lock {lock} left by pid {resumed.pid}", "--force")
    assert main(_train_command(tiny_sim, out, "--resume", "--stop-after-epochs", "1", "--force")[3:]) == 0
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not lock.exists()


def test_two_inferences_never_share_an_output(checkpoint, tiny_sim, tmp_path, capsys):
    out = tmp_path / "picks.csv"
    command = [sys.executable, "-m", "czii", "infer", "--models", str(checkpoint), "--data",
               str(tiny_sim.copick_config), "--out", str(out), "--device", "cpu", "--tta", "full16"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(out.with_name("picks.csv.lock"), first)
        assert _infer(checkpoint, tiny_sim.copick_config, out, "--overwrite") == 2
        one_line_error(capsys, "infer", f"output {out} is being written by pid {first.pid}")
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
        first.wait()
    assert out.is_file() and not out.with_name("picks.csv.lock").exists()


# --------------------------------------------------------------------------- IMOD unsigned bytes


def _mode0_mrc(path: Path, voxels_u8: np.ndarray, flags: int | None) -> Path:
    """The bytes of ``voxels_u8`` in an MRC of mode 0; with ``flags``, IMOD's stamp and those imodFlags."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(voxels_u8.view(np.int8))
        mrc.voxel_size = 10.0
    if flags is not None:
        with path.open("r+b") as fh:
            fh.seek(152)
            fh.write(struct.pack("<ii", IMOD_STAMP, flags))
    return path


def test_imod_unsigned_bytes_give_the_picks_of_the_same_voxels_as_floats(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    voxels = np.zeros((32, 96, 96), np.uint8)
    voxels[:] = rng.integers(60, 90, voxels.shape)
    for z, y, x in [(16, 30, 30), (16, 60, 70), (10, 48, 20)]:  # bright blobs above 127: wrapped if read signed
        voxels[z - 3:z + 3, y - 4:y + 4, x - 4:x + 4] = 230
    folders = {name: tmp_path / name for name in ("float", "imod", "signed")}
    for folder in folders.values():
        folder.mkdir()
    write_mrc(folders["float"] / "TS_a.mrc", voxels.astype(np.float32), 10.0)
    _mode0_mrc(folders["imod"] / "TS_a.mrc", voxels, flags=0)
    _mode0_mrc(folders["signed"] / "TS_a.mrc", voxels, flags=1)
    csv = {}
    for name, folder in folders.items():
        assert _infer(checkpoint, folder, tmp_path / f"{name}.csv") == 0
        csv[name] = (tmp_path / f"{name}.csv").read_bytes()
    assert len(pd.read_csv(tmp_path / "float.csv")) > 0
    assert csv["imod"] == csv["float"]
    assert csv["signed"] != csv["float"]  # flag bit 0 says signed: the same bytes are other voxels


# --------------------------------------------------------------------------- edited records, unknown names


def test_tune_refuses_an_oof_spec_whose_recipe_was_edited_under_its_old_hash(checkpoint, tmp_path, write_oof_spec,
                                                                             capsys):
    oof = tmp_path / "run" / "fold0" / "oof"
    write_oof_spec(oof)
    picks = pd.DataFrame({"experiment": ["TS_a"], "particle_type": ["ribosome"], "x": [100.0], "y": [100.0],
                          "z": [100.0]})
    picks.assign(score=0.9).to_csv(oof / "candidates.csv", index=False)
    picks.to_csv(oof / "truth.csv", index=False)
    assert main(["tune", "--run-dir", str(tmp_path / "run")]) == 0
    thresholds = json.loads((tmp_path / "run" / "thresholds.json").read_text())

    doc = json.loads((oof / "spec.json").read_text())
    doc["spec"]["tta"] = ["identity"]
    (oof / "spec.json").write_text(json.dumps(doc))
    assert main(["tune", "--run-dir", str(tmp_path / "run")]) == 2
    one_line_error(capsys, "tune", str(oof / "spec.json"), doc["spec_hash"], "edited")
    assert json.loads((tmp_path / "run" / "thresholds.json").read_text()) == thresholds

    thresholds["spec"]["peaks"]["nms_radius_factor"] = 0.9  # the same edit in a thresholds file
    (tmp_path / "edited.json").write_text(json.dumps(thresholds))
    assert _infer(checkpoint, tmp_path, tmp_path / "x.csv", "--thresholds", str(tmp_path / "edited.json")) == 2
    one_line_error(capsys, "infer", "edited.json", thresholds["spec_hash"])


def test_export_refuses_a_particle_type_the_predictor_does_not_know(checkpoint, tiny_sim, tmp_path, capsys):
    out = tmp_path / "picks.csv"
    assert _infer(checkpoint, tiny_sim.copick_config, out, "--runs", tiny_sim.train_runs[0]) == 0
    table = pd.read_csv(out)
    assert len(table) > 0
    table.loc[0, "particle_type"] = "ribosomee"
    table.to_csv(out, index=False)
    assert main(["export", "--submission", str(out), "--format", "star", "--out", str(tmp_path / "p.star")]) == 2
    one_line_error(capsys, "export", "'ribosomee'", "known: apo-ferritin", "virus-like-particle")
    assert not (tmp_path / "p.star").exists()


# --------------------------------------------------------------------------- broken OME-Zarr


def test_a_bare_zarr_store_with_unreadable_metadata_is_named(tiny_sim, checkpoint, tmp_path, capsys):
    store = tmp_path / "TS_a.zarr"
    shutil.copytree(Path(tiny_sim.kaggle_dir) / "test" / "static" / "ExperimentRuns" / "TS_test_00"
                    / "VoxelSpacing10.000" / "denoised.zarr", store)
    (store / ".zattrs").write_text('{"multiscales": [')
    for data in (store, tmp_path):
        assert _infer(checkpoint, data, tmp_path / "out.csv") == 2
        one_line_error(capsys, "infer", str(store / ".zattrs"), "unreadable OME-Zarr metadata")
    assert not (tmp_path / "out.csv").exists()


def test_a_listed_but_missing_level_0_stops_inference_before_any_prediction(tiny_sim, tmp_path, capsys,
                                                                           save_tiny_checkpoint):
    """The shipped configs read level 1; picks refer to level 0's frame, so a run without it fails up front."""
    sim = tmp_path / "sim"
    shutil.copytree(tiny_sim.out_dir, sim, symlinks=True)
    kaggle = sim / Path(tiny_sim.kaggle_dir).relative_to(tiny_sim.out_dir)
    runs = open_dataset(kaggle, split="train").runs()
    broken = runs[-1]
    shutil.rmtree(kaggle / "train" / "static" / "ExperimentRuns" / broken / "VoxelSpacing10.000" / "denoised.zarr"
                  / "0")
    model = tmp_path / "run"
    assert main(["train", "--out", str(model), "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config),
                 "--device", "cpu", "--set", *TRAIN_SETS, "train.epochs=1"]) == 0
    capsys.readouterr()
    out = tmp_path / "out.csv"
    assert _infer(model, kaggle, out, "--split", "train") == 2
    one_line_error(capsys, "infer", broken, "pyramid level 0")
    assert not out.exists() and not work_dir(out).exists()  # no run was predicted, none stored


# --------------------------------------------------------------------------- resumed inference


def _interrupted(folder: Path, checkpoint: Path, out: Path, good: np.ndarray, *extra: str) -> None:
    """Leave ``out``'s work folder holding run TS_a only: TS_b's NaN voxels stop the first inference."""
    for path in (out, manifest_path(out), scores_path(out)):
        path.unlink(missing_ok=True)
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    write_mrc(folder / "TS_b.mrc", bad, 10.0)
    assert _infer(checkpoint, folder, out, *extra) == 2
    assert sorted(p.name for p in work_dir(out).glob("*.npz")) == ["TS_a.npz"]
    write_mrc(folder / "TS_b.mrc", good[:, ::-1].copy(), 10.0)


@pytest.fixture()
def two_runs(tiny_sim, tmp_path) -> tuple[Path, np.ndarray]:
    volume = open_dataset(tiny_sim.kaggle_dir, split="test").tomogram("TS_test_00", level=0).data
    folder = tmp_path / "tomograms"
    folder.mkdir()
    write_mrc(folder / "TS_a.mrc", volume, 10.0)
    return folder, volume


def _fresh(checkpoint: Path, folder: Path, tmp_path: Path, *extra: str) -> bytes:
    """The CSV of the same command run from scratch."""
    out = tmp_path / f"fresh-{time.monotonic_ns()}.csv"
    assert _infer(checkpoint, folder, out, *extra) == 0
    return out.read_bytes()


def test_a_resumed_inference_reuses_picks_only_when_nothing_they_depend_on_changed(checkpoint, two_runs, tmp_path,
                                                                                  capsys, save_tiny_checkpoint):
    folder, volume = two_runs
    out = tmp_path / "out.csv"

    _interrupted(folder, checkpoint, out, volume)  # unchanged: TS_a is reused
    assert _infer(checkpoint, folder, out) == 0
    assert json.loads(manifest_path(out).read_text())["resumed_runs"] == ["TS_a"]
    assert out.read_bytes() == _fresh(checkpoint, folder, tmp_path)

    _interrupted(folder, checkpoint, out, volume, "--voxel-size", "10")
    capsys.readouterr()
    assert _infer(checkpoint, folder, out, "--voxel-size", "12") == 0  # a corrected voxel size
    assert "holds picks of another inference" in capsys.readouterr().err
    assert json.loads(manifest_path(out).read_text())["resumed_runs"] == []
    assert out.read_bytes() == _fresh(checkpoint, folder, tmp_path, "--voxel-size", "12")

    _interrupted(folder, checkpoint, out, volume)
    write_mrc(folder / "TS_a.mrc", volume[::-1].copy(), 10.0)  # the tomogram was replaced
    capsys.readouterr()
    assert _infer(checkpoint, folder, out) == 0
    assert "run 'TS_a': its input files changed" in capsys.readouterr().err
    assert json.loads(manifest_path(out).read_text())["resumed_runs"] == []
    assert out.read_bytes() == _fresh(checkpoint, folder, tmp_path)

    _interrupted(folder, checkpoint, out, volume)
    assert _infer(checkpoint, folder, out, "--tta", "flips") == 0  # another predictor spec
    assert json.loads(manifest_path(out).read_text())["resumed_runs"] == []
    assert out.read_bytes() == _fresh(checkpoint, folder, tmp_path, "--tta", "flips")

    _interrupted(folder, checkpoint, out, volume)
    replaced = tmp_path / "replaced.pt"
    shutil.copy2(checkpoint, replaced)
    save_tiny_checkpoint(checkpoint, seed=4)  # retrained weights under the same path
    assert _infer(checkpoint, folder, out) == 0
    assert json.loads(manifest_path(out).read_text())["resumed_runs"] == []
    assert out.read_bytes() == _fresh(checkpoint, folder, tmp_path)
    shutil.copy2(replaced, checkpoint)

    _interrupted(folder, checkpoint, out, volume)
    (tmp_path / "thr.json").write_text(json.dumps({"thresholds": {"apo-ferritin": 0.6, "beta-amylase": 0.6,
                                                                  "beta-galactosidase": 0.6, "ribosome": 0.6,
                                                                  "thyroglobulin": 0.6, "virus-like-particle": 0.6}}))
    assert _infer(checkpoint, folder, out, "--thresholds", str(tmp_path / "thr.json")) == 0  # re-tuned thresholds
    assert json.loads(manifest_path(out).read_text())["resumed_runs"] == []
    assert out.read_bytes() == _fresh(checkpoint, folder, tmp_path, "--thresholds", str(tmp_path / "thr.json"))
