"""No silent wrong answers: each fault a user can make ends in one line naming it (exit 2, nothing written)
or in an explicit choice that the outputs record."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import CPU_TINY, one_line_error

from czii.cli import main
from czii.config import load_config, with_data_paths
from czii.data import load_solution, open_dataset
from czii.errors import DataError
from czii.inference.pipeline import manifest_path
from czii.inference.resume import work_dir
from czii.training.data import class_picks, open_sources

TRAIN_SETS = ["train.steps_per_epoch=3", "patch.size_zyx=[16,32,32]", "val.tile_zyx=[16,48,48]",
              "infer.tile_zyx=[16,48,48]"]


@pytest.fixture(scope="module")
def sim_copy(tiny_sim, tmp_path_factory) -> Path:
    """A private copy of the tiny simulation, for tests that damage it."""
    out = tmp_path_factory.mktemp("damaged") / "sim"
    shutil.copytree(tiny_sim.out_dir, out, symlinks=True)
    return out


@pytest.fixture(scope="module")
def trained(tiny_sim, tmp_path_factory) -> dict[str, Path]:
    """A finished 1-epoch run and a run stopped after 1 of 2 epochs (both record their training spacing)."""
    root = tmp_path_factory.mktemp("trained")
    common = ["--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config), "--device", "cpu", "--set",
              *TRAIN_SETS]
    assert main(["train", "--out", str(root / "done"), *common, "train.epochs=1"]) == 0
    assert main(["train", "--out", str(root / "half"), "--stop-after-epochs", "1", *common, "train.epochs=2",
                 "train.val_every=1"]) == 0
    return {"done": root / "done", "half": root / "half"}


def _infer(models: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--models", str(models), "--data", str(data), "--out", str(out), "--device", "cpu",
                 *extra])


def test_1_missing_zarr_chunks_are_an_error_not_zeros(trained, sim_copy, tmp_path, capsys):
    level = sim_copy / "kaggle" / "test" / "static" / "ExperimentRuns" / "TS_test_00" / "VoxelSpacing10.000" / \
        "denoised.zarr" / "1"
    chunks = [p for p in level.rglob("*") if p.is_file() and not p.name.startswith(".")]
    expected = zarr.open_array(str(level), mode="r").nchunks
    chunks[0].unlink()
    out = tmp_path / "out" / "sub.csv"
    assert _infer(trained["done"], sim_copy / "kaggle", out) == 2
    one_line_error(capsys, "infer", f"1 of {expected} chunks are missing", "TS_test_00", str(level))
    assert not out.parent.exists()


def test_2_picks_outside_the_tomogram_are_refused_or_dropped_on_request(tiny_sim, tmp_path, capsys):
    project = tmp_path / "sim"
    shutil.copytree(tiny_sim.out_dir, project, symlinks=True)
    config_file = project / "copick_config.json"  # its roots are absolute: point them at the copy
    config_file.write_text(config_file.read_text().replace(str(tiny_sim.out_dir), str(project)))
    run = tiny_sim.train_runs[0]
    picks_file = project / "copick" / "overlay" / "ExperimentRuns" / run / "Picks" / "curation_0_ribosome.json"
    doc = json.loads(picks_file.read_text())
    doc["points"][0]["location"]["x"] = 50000.0
    picks_file.write_text(json.dumps(doc))
    before = picks_file.read_bytes()

    config = with_data_paths(load_config(CPU_TINY), [project / "copick_config.json"])
    dataset = open_sources(config)["sim"]
    with pytest.raises(DataError, match=r"ribosome at \(50000\.0") as info:
        class_picks(config, dataset, run)
    assert run in str(info.value) and "data.out_of_volume: drop" in str(info.value)
    with pytest.raises(DataError, match="outside"):
        load_solution(project / "copick_config.json")

    config = with_data_paths(load_config(CPU_TINY, ["data.out_of_volume=drop"]), [project / "copick_config.json"])
    kept = class_picks(config, open_sources(config)["sim"], run)
    truth = tiny_sim.picks[tiny_sim.picks.experiment == run]
    assert len(kept) == len(truth) - 1 and (kept.x < 50000).all()
    assert "dropped 1 picks" in capsys.readouterr().err
    assert picks_file.read_bytes() == before  # the input is never modified


def _unwritable(folder: Path) -> bool:
    """Make ``folder`` refuse new files (chmod, else the immutable flag for root); False when impossible."""
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return True
    (folder / "probe").unlink()
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def test_5_unwritable_outputs_are_refused_before_any_work(trained, tiny_sim, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _unwritable(locked):
        pytest.skip("cannot make a folder unwritable here")
    try:
        assert _infer(trained["done"], tiny_sim.kaggle_dir, locked / "sub.csv") == 2
        one_line_error(capsys, "infer", str(locked), "cannot write")
        assert main(["train", "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config), "--out",
                     str(locked / "run"), "--set", *TRAIN_SETS]) == 2
        one_line_error(capsys, "train", "cannot write")
        assert main(["tune", "--run-dir", str(trained["done"]), "--out", str(locked / "t.json")]) == 2
        one_line_error(capsys, "tune", "cannot write")
        assert list(locked.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["train", "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config), "--out", str(a_file),
                 "--set", *TRAIN_SETS]) == 2
    one_line_error(capsys, "train", "is a file")
    assert a_file.read_text() == "x"


def test_6_infer_never_overwrites_without_overwrite(trained, tiny_sim, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    out.write_text("precious\n")
    assert _infer(trained["done"], tiny_sim.kaggle_dir, out) == 2
    one_line_error(capsys, "infer", "already exists", "--overwrite")
    assert out.read_text() == "precious\n" and not manifest_path(out).exists()
    assert _infer(trained["done"], tiny_sim.kaggle_dir, out, "--overwrite") == 0
    assert out.read_text().startswith("id,experiment,particle_type,x,y,z")


def test_7_unfinished_training_is_refused_unless_allowed_and_recorded(trained, tiny_sim, tmp_path, capsys):
    status = json.loads((trained["half"] / "fold0" / "status.json").read_text())
    assert status == {"planned_epochs": 2, "done_epochs": 1, "finished": False}
    assert json.loads((trained["done"] / "fold0" / "status.json").read_text())["finished"] is True
    out = tmp_path / "sub.csv"
    assert _infer(trained["half"], tiny_sim.kaggle_dir, out) == 2
    one_line_error(capsys, "infer", "trained 1 of 2 epochs", "--allow-unfinished", "czii train --resume")
    assert not out.exists()
    assert main(["kaggle-build", "--models", str(trained["half"]), "--out", str(tmp_path / "kaggle")]) == 2
    one_line_error(capsys, "kaggle-build", "trained 1 of 2 epochs")
    assert not (tmp_path / "kaggle").exists()
    assert _infer(trained["half"], tiny_sim.kaggle_dir, out, "--allow-unfinished") == 0
    manifest = json.loads(manifest_path(out).read_text())
    assert len(manifest["unfinished_members"]) == 1 and "1 of 2 epochs" in manifest["unfinished_members"][0]


def test_8_non_finite_voxels_name_the_config_field_and_repair_is_reachable(trained, tiny_sim, tmp_path, capsys):
    data = tmp_path / "kaggle"
    shutil.copytree(tiny_sim.kaggle_dir, data, symlinks=True)
    level = data / "test" / "static" / "ExperimentRuns" / "TS_test_00" / "VoxelSpacing10.000" / "denoised.zarr" / "1"
    array = zarr.open_array(str(level), mode="r+")
    values = array[...]
    values[0, 0, :5] = np.nan
    array[...] = values
    out = tmp_path / "sub.csv"
    assert _infer(trained["done"], data, out) == 2
    one_line_error(capsys, "infer", "5 non-finite voxels", "data.nan_policy")
    assert not out.exists()
    assert _infer(trained["done"], data, out, "--nan-policy", "repair") == 0
    assert json.loads(manifest_path(out).read_text())["spec"]["input"]["nan_policy"] == "repair"


def test_9_a_tomogram_at_another_spacing_is_never_used_silently(trained, tiny_sim, tmp_path, capsys):
    """OME-Zarr scale ×2: the voxels are brought to the model's voxel size by the metadata (level 0 now claims
    the model's 20.02 Å), said on stderr and recorded in the manifest; data too coarse to bring back is refused."""
    data = tmp_path / "kaggle"
    shutil.copytree(tiny_sim.kaggle_dir, data, symlinks=True)
    zattrs = data / "test" / "static" / "ExperimentRuns" / "TS_test_00" / "VoxelSpacing10.000" / "denoised.zarr" / \
        ".zattrs"
    doc = json.loads(zattrs.read_text())
    for dataset in doc["multiscales"][0]["datasets"]:
        scale = dataset["coordinateTransformations"][0]
        scale["scale"] = [2 * s for s in scale["scale"]]
    zattrs.write_text(json.dumps(doc))
    out = tmp_path / "sub.csv"
    assert _infer(trained["done"], data, out) == 0
    assert "run 'TS_test_00': read level 0 at 20.02 Å" in capsys.readouterr().err
    facts = json.loads(manifest_path(out).read_text())["inputs"]["TS_test_00"]
    assert facts["level"] == 0 and facts["source_spacing_zyx_A"][0] == pytest.approx(20.0249, rel=1e-4)
    for dataset in doc["multiscales"][0]["datasets"]:
        scale = dataset["coordinateTransformations"][0]
        scale["scale"] = [3 * s for s in scale["scale"]]
    zattrs.write_text(json.dumps(doc))
    out = tmp_path / "coarse.csv"
    assert _infer(trained["done"], data, out) == 2
    line = one_line_error(capsys, "infer", "TS_test_00", "60.07 Å", "20.02 Å", "cannot be brought")
    assert not out.exists() and "voxel" in line
    assert open_dataset(tiny_sim.kaggle_dir, split="test").tomogram("TS_test_00", level=1).spacing_zyx_A[0] < 21


def test_a_killed_multi_run_inference_resumes_to_the_identical_csv(trained, tiny_sim, tmp_path):
    """kill -9 after the first run is stored; the same command, with --force for the lock the killed one left,
    predicts only the rest; same bytes as uninterrupted."""
    slow = ["--tta", "full16", "--tile", "16", "16", "16", "--batch-size", "1", "--device", "cpu"]

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "czii", "infer", "--models", str(trained["done"]), "--data",
                str(tiny_sim.copick_config), "--out", str(out), *slow]

    reference = tmp_path / "reference.csv"
    subprocess.run(command(reference), check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed.csv"
    work = work_dir(out)
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(work.glob("*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.stem for p in work.glob("*.npz"))
    if proc.returncode != -signal.SIGKILL or not 1 <= len(done) < len(tiny_sim.train_runs):
        pytest.skip(f"the kill did not land between runs this time (rc {proc.returncode}, stored {done})")
    assert not out.exists() and not manifest_path(out).exists()

    stale = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    assert stale.returncode == 2 and f"stale lock {out}.lock left by pid {proc.pid}" in stale.stderr, stale.stderr
    rerun = subprocess.run([*command(out), "--force"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the stale lock" in rerun.stderr
    assert f"resuming: {len(done)} of {len(tiny_sim.train_runs)} runs" in rerun.stderr
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["resumed_runs"] == done
    assert all(manifest["timings"][run].get("resumed") for run in done)
    assert out.read_bytes() == reference.read_bytes()
    assert not work.exists()
