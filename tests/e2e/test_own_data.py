"""Your own tomograms: MRC folders at any voxel size through `czii infer`, scores kept, `czii export` to STAR."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch
from conftest import CPU_TINY

from czii.cli import main
from czii.data import load_solution, open_dataset
from czii.formats.mrc import write_mrc
from czii.formats.picks_json import picks_document, write_picks_json
from czii.geometry import resample_zyx
from czii.metric import score
from czii.particles import BY_NAME
from czii.simulate import SimConfig, simulate_dataset
from czii.submission import manifest_path, read_scored_submission, read_submission, scores_path

SETS = ["train.steps_per_epoch=3", "patch.size_zyx=[16,32,32]", "val.tile_zyx=[16,48,48]", "infer.tile_zyx=[16,48,48]",
        "train.epochs=1"]
RUN = "TS_test_00"


@pytest.fixture(scope="module")
def model(tiny_sim, tmp_path_factory) -> Path:
    """A finished 1-epoch cpu_tiny run (level 1: it records 20.02 Å voxels)."""
    out = tmp_path_factory.mktemp("own") / "run"
    assert main(["train", "--out", str(out), "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config),
                 "--device", "cpu", "--set", *SETS]) == 0
    return out


def _infer(model: Path, data, out: Path, *extra: str) -> int:
    return main(["infer", "--models", str(model), "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--tta", "none", "--allow-spec-mismatch", *extra])


def test_mrc_at_the_model_voxel_size_gives_the_copick_picks(model, tiny_sim, tmp_path):
    level1 = open_dataset(tiny_sim.kaggle_dir, split="test").tomogram(RUN, level=1)
    folder = tmp_path / "mrc"
    folder.mkdir()
    write_mrc(folder / f"{RUN}.mrc", level1.data, level1.spacing_zyx_A[-1])
    assert _infer(model, tiny_sim.kaggle_dir, tmp_path / "native.csv") == 0
    assert _infer(model, folder, tmp_path / "mrc.csv") == 0
    native, mrc = read_scored_submission(tmp_path / "native.csv"), read_scored_submission(tmp_path / "mrc.csv")
    assert len(native) > 0 and len(native) == len(mrc)
    np.testing.assert_allclose(mrc[["x", "y", "z", "score"]], native[["x", "y", "z", "score"]], atol=1e-2)
    facts = json.loads(manifest_path(tmp_path / "mrc.csv").read_text())["inputs"][RUN]
    assert facts["format"] == "mrc" and facts["spacing_source"] == "header" and not facts["resampled"]


@pytest.mark.parametrize("voxel_A", [7.84, 13.48])
def test_binned_mrc_is_resampled_and_picks_come_back_in_its_frame(model, tiny_sim, tmp_path, voxel_A, capsys):
    level0 = open_dataset(tiny_sim.kaggle_dir, split="test").tomogram(RUN, level=0)
    volume = resample_zyx(level0.data, level0.spacing_zyx_A, voxel_A)
    folder = tmp_path / "mrc"
    folder.mkdir()
    write_mrc(folder / f"{RUN}.rec", volume, voxel_A)
    out = tmp_path / "picks.csv"
    assert _infer(model, str(folder / "*.rec"), out) == 0
    assert "predicted at 20.02 Å" in capsys.readouterr().err
    manifest = json.loads(manifest_path(out).read_text())
    facts = manifest["inputs"][RUN]
    assert facts["resampled"] and facts["factor"] == pytest.approx(voxel_A / 20.0249, rel=1e-3)
    assert facts["frame_shape_zyx"] == list(volume.shape)
    assert facts["frame_spacing_zyx_A"] == pytest.approx([voxel_A] * 3)
    picks = read_scored_submission(out)
    extent = (np.asarray(volume.shape[::-1]) - 0.5) * voxel_A
    assert len(picks) > 0 and (picks[["x", "y", "z"]].to_numpy() <= extent).all()
    assert picks["score"].between(0, 1).all() and scores_path(out).is_file()
    star = tmp_path / "picks.star"
    assert main(["export", "--submission", str(out), "--format", "star", "--out", str(star)]) == 0
    particles = starfile.read(star, always_dict=True)["particles"]
    centre = np.asarray(volume.shape[::-1]) * voxel_A / 2
    np.testing.assert_allclose(particles[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy(),
                               picks[["x", "y", "z"]].to_numpy() - centre, atol=1e-3)
    np.testing.assert_allclose(particles["rlnAutopickFigureOfMerit"], picks["score"], rtol=1e-5)


def test_unset_header_voxel_size_is_refused_and_the_override_recorded(model, tiny_sim, tmp_path, capsys):
    level1 = open_dataset(tiny_sim.kaggle_dir, split="test").tomogram(RUN, level=1)
    write_mrc(tmp_path / f"{RUN}.mrc", level1.data, 1.0)
    out = tmp_path / "p.csv"
    assert _infer(model, tmp_path / f"{RUN}.mrc", out) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("czii infer: error:") and "looks unset" in err and f"{RUN}.mrc" in err
    assert not out.exists() and not manifest_path(out).exists() and not scores_path(out).exists()
    assert _infer(model, tmp_path / f"{RUN}.mrc", out, "--voxel-size", str(level1.spacing_zyx_A[-1])) == 0
    assert json.loads(manifest_path(out).read_text())["inputs"][RUN]["spacing_source"] == "--voxel-size"
    assert _infer(model, tiny_sim.kaggle_dir, tmp_path / "k.csv", "--voxel-size", "10") == 2
    assert "--voxel-size applies to MRC" in capsys.readouterr().err


def test_exported_picks_import_into_a_copick_project_for_training(model, tiny_sim, tmp_path):
    out = tmp_path / "picks.csv"
    assert _infer(model, tiny_sim.kaggle_dir, out) == 0
    project = tmp_path / "project"
    config = json.loads(tiny_sim.copick_config.read_text())
    config["overlay_root"] = str(project / "overlay")
    (project / "overlay").mkdir(parents=True)
    config_path = project / "copick_config.json"
    config_path.write_text(json.dumps(config))
    submission = read_scored_submission(out).assign(experiment=tiny_sim.train_runs[0])
    submission[["id", "experiment", "particle_type", "x", "y", "z"]].to_csv(tmp_path / "moved.csv", index=False)
    submission[["id", "score"]].to_csv(scores_path(tmp_path / "moved.csv"), index=False)
    manifest = json.loads(manifest_path(out).read_text())
    manifest["inputs"] = {tiny_sim.train_runs[0]: manifest["inputs"][RUN]}
    manifest_path(tmp_path / "moved.csv").write_text(json.dumps(manifest))
    for fmt in ("star", "tbl"):
        exported = tmp_path / f"moved.{fmt}"
        assert main(["export", "--submission", str(tmp_path / "moved.csv"), "--format", fmt, "--out",
                     str(exported)]) == 0
        assert main(["import", "--picks", str(exported), "--format", fmt, "--into", str(config_path), "--user",
                     f"from{fmt}", "--overwrite"]) == 0
        back = open_dataset(config_path).picks(user_id=f"from{fmt}", session_id="0")
        want = submission.sort_values(["particle_type", "x", "y", "z"]).reset_index(drop=True)
        assert len(back) == len(want)
        np.testing.assert_allclose(back[["x", "y", "z"]], want[["x", "y", "z"]], atol=1e-3)
    doc = json.loads(next((project / "overlay").rglob("fromstar_0_*.json")).read_text())
    assert doc["trust_orientation"] is False and "score" in doc["points"][0]
    assert main(["import", "--picks", str(tmp_path / "moved.star"), "--format", "star", "--into",
                 str(config_path), "--user", "fromstar"]) == 2


def _seventh_object_project(tiny_sim, root: Path) -> Path:
    """tiny_sim's copick project with a 7th pickable object, ``my-complex`` (radius 150 Å, metric weight 2), whose
    picks are the ribosomes' positions under another name (the ribosome picks are removed)."""
    config = json.loads(tiny_sim.copick_config.read_text())
    config["pickable_objects"].append({"name": "my-complex", "is_particle": True, "label": 7, "radius": 150.0,
                                       "metric_weight": 2.0, "color": [200, 0, 0, 255]})
    overlay = root / "overlay"
    shutil.copytree(Path(config["overlay_root"]), overlay)
    config["overlay_root"] = str(overlay)
    for run in tiny_sim.train_runs:
        xyz = tiny_sim.picks[(tiny_sim.picks["experiment"] == run) & (tiny_sim.picks["particle_type"] == "ribosome")]
        (overlay / "ExperimentRuns" / run / "Picks" / "curation_0_ribosome.json").unlink()
        write_picks_json(overlay / "ExperimentRuns" / run / "Picks" / "curation_0_my-complex.json",
                         picks_document("my-complex", run, xyz[["x", "y", "z"]].to_numpy()))
    path = root / "copick_config.json"
    path.write_text(json.dumps(config))
    return path


def test_a_seventh_pickable_object_is_trained_picked_named_and_scored(tiny_sim, tmp_path, capsys):
    project = _seventh_object_project(tiny_sim, tmp_path)
    run_dir = tmp_path / "run"
    classes = '["apo-ferritin", "my-complex"]'
    assert main(["train", "--out", str(run_dir), "--config", str(CPU_TINY), "--data", str(project), "--device", "cpu",
                 "--set", *SETS, f"data.classes={classes}"]) == 0
    ckpt = torch.load(run_dir / "fold0" / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["classes"] == ["apo-ferritin", "my-complex"]
    assert ckpt["particles"][1] == {"name": "my-complex", "radius_A": 150.0, "weight": 2.0}
    thresholds = tmp_path / "low.json"
    thresholds.write_text(json.dumps({"thresholds": {"apo-ferritin": 0.0, "my-complex": 0.0}}))
    out = tmp_path / "picks.csv"
    # a fresh process knows my-complex only from the checkpoint (the Kaggle test data has no such object)
    done = subprocess.run([sys.executable, "-m", "czii", "infer", "--models", str(run_dir / "fold0" / "checkpoints" /
                           "best.pt"), "--data", str(tiny_sim.kaggle_dir), "--out", str(out), "--device", "cpu",
                           "--thresholds", str(thresholds)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    picks = pd.read_csv(out)
    assert set(picks["particle_type"]) == {"apo-ferritin", "my-complex"}
    train_out = tmp_path / "train_picks.csv"
    assert main(["infer", "--models", str(run_dir / "fold0" / "checkpoints" / "best.pt"), "--data", str(project),
                 "--out", str(train_out), "--device", "cpu", "--thresholds", str(thresholds)]) == 0
    assert main(["score", "--submission", str(train_out), "--solution", str(project), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["classes"]["my-complex"]["weight"] == 2.0 and report["classes"]["my-complex"]["tp"] > 0
    bad = tmp_path / "typo"
    assert main(["train", "--out", str(bad), "--config", str(CPU_TINY), "--data", str(project), "--device", "cpu",
                 "--set", *SETS, 'data.classes=["my-complx"]']) == 2
    assert "my-complx" in capsys.readouterr().err and not bad.exists()


def test_training_at_a_chosen_voxel_size_resamples_and_inference_follows(tiny_sim, tmp_path):
    run_dir = tmp_path / "run16"
    assert main(["train", "--out", str(run_dir), "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config),
                 "--device", "cpu", "--set", *SETS, "data.spacing_A=16.0"]) == 0
    ckpt = torch.load(run_dir / "fold0" / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["spacing_zyx_A"] == [16.0, 16.0, 16.0]
    out = tmp_path / "p.csv"
    assert _infer(run_dir, tiny_sim.kaggle_dir, out) == 0
    facts = json.loads(manifest_path(out).read_text())["inputs"][RUN]
    assert facts["level"] == 0 and facts["resampled"] and facts["spacing_zyx_A"] == [16.0] * 3
    assert facts["factor"] == pytest.approx(10.0124 / 16.0, rel=1e-4)


def _training_copy_with_one_tomogram_at_1348(tiny_sim, tmp_path: Path, tomo_type: str) -> tuple[Path, str]:
    """A copy of the Kaggle layout whose last training run claims 1.348× the voxel size in ``tomo_type``'s
    metadata, with that tomogram's chunks broken so that a refusal must come from the metadata alone."""
    data = tmp_path / "kaggle"
    shutil.copytree(tiny_sim.kaggle_dir, data, symlinks=True)
    other = tiny_sim.train_runs[-1]
    zattrs = (data / "train" / "static" / "ExperimentRuns" / other / "VoxelSpacing10.000" / f"{tomo_type}.zarr"
              / ".zattrs")
    doc = json.loads(zattrs.read_text())
    for level in doc["multiscales"][0]["datasets"]:
        scale = level["coordinateTransformations"][0]["scale"]
        level["coordinateTransformations"][0]["scale"] = [1.348 * s for s in scale]
    zattrs.write_text(json.dumps(doc))
    chunks = [p for p in zattrs.parent.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert chunks
    for chunk in chunks:
        chunk.unlink()
        chunk.write_bytes(b"not a zarr chunk")
    return data, other


def test_training_runs_at_different_voxel_sizes_are_refused_without_a_training_voxel_size(
        tiny_sim, tmp_path, capsys):
    data, other = _training_copy_with_one_tomogram_at_1348(tiny_sim, tmp_path, "denoised")
    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), "--config", str(CPU_TINY), "--data", str(data),
                 "--device", "cpu", "--set", *SETS]) == 2
    err = capsys.readouterr().err
    assert repr(other) in err and "26.99 Å" in err and "20.02 Å" in err and "data.spacing_A" in err
    assert not (run_dir / "fold0" / "checkpoints").exists()


def test_an_extra_training_reconstruction_at_another_voxel_size_is_refused(tiny_sim, tmp_path, capsys):
    data, other = _training_copy_with_one_tomogram_at_1348(tiny_sim, tmp_path, "wbp")
    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), "--config", str(CPU_TINY), "--data", str(data),
                 "--device", "cpu", "--set", *SETS, "data.extra_train_types=[wbp]"]) == 2
    err = capsys.readouterr().err
    assert "data.extra_train_types" in err and repr(other) in err and "'wbp'" in err
    assert "26.99 Å" in err and "20.02 Å" in err and "data.spacing_A" in err
    assert not (run_dir / "fold0").exists()


@pytest.mark.slow
def test_binned_mrc_scores_like_the_native_tomograms(tmp_path):
    """A model that has learned something (cpu_tiny, 4 min on the "small" preset) predicts the same 6 held-out
    scenes written natively (10 Å OME-Zarr) and as 7.84 Å / 13.48 Å MRC files: F4 within 0.05 of the native
    score, and 80 % of the picks that found a particle natively have a match within 0.25 × radius (sub-voxel
    peaks: finer than the model's 20 Å grid)."""
    sim = simulate_dataset(tmp_path / "sim", SimConfig.preset("small", n_train=4, n_test=6, seed=21), progress=False)
    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), "--config", str(CPU_TINY), "--data", str(sim.copick_config),
                 "--device", "cpu", "--set", "train.epochs=60", "train.max_minutes=4",
                 'data.folds=[["TS_sim_03"]]']) == 0
    solution = load_solution(sim.solution_csv)
    dataset = open_dataset(sim.kaggle_dir, split="test")
    native = tmp_path / "native.csv"
    assert _infer(run_dir / "fold0" / "checkpoints" / "best.pt", sim.kaggle_dir, native) == 0
    native_picks = read_submission(native)
    native_f4 = score(solution, native_picks).score
    assert native_f4 > 0.3  # it has learned something
    for voxel_A in (7.84, 13.48):
        folder = tmp_path / f"mrc{voxel_A}"
        folder.mkdir()
        for run in dataset.runs():
            volume = dataset.tomogram(run, level=0)
            write_mrc(folder / f"{run}.mrc", resample_zyx(volume.data, volume.spacing_zyx_A, voxel_A), voxel_A)
        out = tmp_path / f"mrc{voxel_A}.csv"
        assert _infer(run_dir / "fold0" / "checkpoints" / "best.pt", folder, out) == 0
        picks = read_submission(out)
        assert abs(score(solution, picks).score - native_f4) < 0.05, (voxel_A, native_f4)
        close = []  # native picks that found a particle (within 0.5 r of the truth) and their resampled match
        for (run, cls), rows in native_picks.groupby(["experiment", "particle_type"]):
            radius = BY_NAME[cls].radius_A
            truth = solution[(solution["experiment"] == run) & (solution["particle_type"] == cls)][["x", "y", "z"]]
            other = picks[(picks["experiment"] == run) & (picks["particle_type"] == cls)][["x", "y", "z"]].to_numpy()
            if len(other) == 0 or len(truth) == 0:
                continue
            for xyz in rows[["x", "y", "z"]].to_numpy():
                on_particle = np.linalg.norm(truth.to_numpy() - xyz, axis=1).min() <= 0.5 * radius
                d = np.linalg.norm(other - xyz, axis=1).min()
                if on_particle and d < radius:
                    close.append(d <= 0.25 * radius)
        assert len(close) > 20 and np.mean(close) > 0.8, (voxel_A, len(close), np.mean(close))
