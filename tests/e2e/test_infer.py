"""``czii infer`` / run_inference end to end on the tiny simulated dataset with real (random-weight) 3D U-Nets.

Each submission is checked against a reference built independently from the lower-level parts
(open_dataset → normalize_volume → predict_volume → detect_peaks → to_submission), so wrong
settings (thresholds, weights, tiles, TTA, normalisation) show up as differing picks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import CPU_TINY, TINY_CHECKPOINT_SETS

from czii.cli import main
from czii.config import load_config, with_data_paths
from czii.data import load_solution, open_dataset
from czii.data.normalize import normalize_volume
from czii.errors import ConfigError, DataError
from czii.geometry import extent_xyz_A
from czii.inference import predict_volume
from czii.inference.pipeline import manifest_path, run_inference
from czii.inference.predictor import ensemble_member
from czii.metric import score
from czii.models import load_checkpoint
from czii.particles import PARTICLE_NAMES
from czii.picks import SUBMISSION_COLUMNS
from czii.postprocess.peaks import detect_peaks
from czii.predictor import DEFAULT_THRESHOLDS, save_thresholds
from czii.predictor import resolve_spec, spec_from_config, spec_yaml
from czii.submission import read_submission, to_submission, validate_submission
from czii.training.loop import train



@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, save_tiny_checkpoint) -> dict[str, Path]:
    """A two-fold run directory (runs/exp) plus loose checkpoints that disagree with it."""
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "fold0": save_tiny_checkpoint(root / "runs" / "exp" / "fold0" / "checkpoints" / "best.pt", seed=0),
        "fold1": save_tiny_checkpoint(root / "runs" / "exp" / "fold1" / "checkpoints" / "best.pt", seed=1),
        "three_classes": save_tiny_checkpoint(root / "three.pt", 2,
                                              classes=("apo-ferritin", "ribosome", "thyroglobulin")),
        "two_channels": save_tiny_checkpoint(root / "two.pt", 3, input_channels=("denoised", "wbp")),
        "wbp": save_tiny_checkpoint(root / "wbp.pt", 4, input_channels=("wbp",)),
    }


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    """Kaggle sources are staged for copick under $CZII_CACHE: keep that inside the test's folder."""
    monkeypatch.setenv("CZII_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def reference_probs(checkpoints, weights, dataset, runs, *, tta, tile_zyx, overlap, channels=("denoised",)) -> dict:
    """run -> (ensemble probabilities, spacing), from the lower-level parts."""
    members = [ensemble_member(*load_checkpoint(p), weight=w, name=str(p)) for p, w in zip(checkpoints, weights)]
    out = {}
    for run in runs:
        volumes = [dataset.tomogram(run, tomo_type) for tomo_type in channels]
        x = np.stack([normalize_volume(v.data) for v in volumes])
        probs = predict_volume(members, x, tile_zyx=tile_zyx, overlap=overlap, blend="gaussian", batch_size=2, tta=tta)
        out[run] = (probs, volumes[0].spacing_zyx_A)
    return out


def reference(probs_by_run: dict, *, thresholds, post) -> pd.DataFrame:
    frames = [detect_peaks(probs, PARTICLE_NAMES, spacing, thresholds=thresholds, run=run, **post)
              for run, (probs, spacing) in probs_by_run.items()]
    return to_submission(pd.concat(frames, ignore_index=True))


SAVED_POST = dataclasses.asdict(load_config(CPU_TINY).postprocess)  # what every tiny checkpoint carries


def assert_same_table(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    # sub-voxel peak positions follow the probabilities continuously: float32 summation order (tile batch
    # size, TTA order) moves them by ~1e-4 Å, so coordinates agree to 1e-3 Å
    assert len(expected) > 0
    pd.testing.assert_frame_equal(actual.reset_index(drop=True), expected.reset_index(drop=True),
                                  check_exact=False, rtol=0, atol=1e-3, check_dtype=False)


def test_cli_infer_kaggle_test_split_writes_submission_and_manifest(tiny_sim, ckpts, tmp_path, cache, capsys):
    run_dir = ckpts["fold0"].parents[2]
    out = tmp_path / "submissions" / "tiny.csv"
    rc = main(["infer", "--models", str(run_dir), "--data", str(tiny_sim.kaggle_dir), "--out", str(out),
               "--device", "cpu"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "default thresholds" in captured.err and str(out) in captured.out

    sub = read_submission(out)
    assert list(sub.columns) == list(SUBMISSION_COLUMNS)
    dataset = open_dataset(tiny_sim.kaggle_dir, split="test")
    (run,) = dataset.runs()
    vol = dataset.tomogram(run)
    validate_submission(sub, extents_xyz_A={run: extent_xyz_A(vol.data.shape, vol.spacing_zyx_A)}, runs=[run])
    probs = reference_probs([ckpts["fold0"], ckpts["fold1"]], [1, 1], dataset, [run], tta="none",
                            tile_zyx=(32, 96, 96), overlap=0.25)
    expected = reference(probs, thresholds=DEFAULT_THRESHOLDS, post=SAVED_POST)
    assert_same_table(sub, expected)

    report = score(load_solution(tiny_sim.solution_csv), sub)
    assert 0.0 <= report.score <= 1.0
    n_ribosome = int((sub.particle_type == "ribosome").sum())
    assert report.table.loc["ribosome", "tp"] + report.table.loc["ribosome", "fp"] == n_ribosome

    manifest = json.loads(manifest_path(out).read_text())
    assert manifest_path(out) == out.with_name("tiny.csv.manifest.json")
    assert [c["sha256"] for c in manifest["checkpoints"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (ckpts["fold0"], ckpts["fold1"])
    ]
    assert [c["weight"] for c in manifest["checkpoints"]] == [1.0, 1.0]
    assert manifest["thresholds"]["values"] == DEFAULT_THRESHOLDS and "default" in manifest["thresholds"]["source"]
    assert manifest["tta"] == ["identity"] and manifest["spec"]["tiling"]["tile_zyx"] == [32, 96, 96]
    assert manifest["spec"]["peaks"] == SAVED_POST and manifest["thresholds"]["spec_check"] == "defaults"
    assert manifest["spec_hash"] == resolve_spec(run_dir).hash
    assert manifest["device"] == "cpu" and manifest["torch_version"] == torch.__version__
    assert manifest["git_commit"] is None or len(manifest["git_commit"]) == 40
    assert set(manifest["timings"]) == {run}
    assert set(manifest["timings"][run]["seconds"]) == {"load", "predict", "peaks"}
    assert sum(manifest["picks_per_class"].values()) == len(sub) == manifest["n_picks"]
    assert manifest["picks_per_class"]["ribosome"] == n_ribosome
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.csv", "tiny.csv.manifest.json", "tiny.csv.scores.csv"]


def test_cli_tile_and_batch_size_override_the_saved_settings(tiny_sim, ckpts, tmp_path, cache, capsys):
    run_dir = ckpts["fold0"].parents[2]
    out = tmp_path / "small_tiles.csv"
    rc = main(["infer", "--models", str(run_dir), "--data", str(tiny_sim.kaggle_dir), "--out", str(out),
               "--device", "cpu", "--tile", "32", "32", "32", "--batch-size", "3"])
    assert rc == 0
    tiling = json.loads(manifest_path(out).read_text())["spec"]["tiling"]
    assert tiling["tile_zyx"] == [32, 32, 32] and tiling["batch_size"] == 3
    dataset = open_dataset(tiny_sim.kaggle_dir, split="test")
    probs = reference_probs([ckpts["fold0"], ckpts["fold1"]], [1, 1], dataset, dataset.runs(), tta="none",
                            tile_zyx=(32, 32, 32), overlap=0.25)
    assert_same_table(read_submission(out), reference(probs, thresholds=DEFAULT_THRESHOLDS, post=SAVED_POST))

    bad = tmp_path / "bad_tile.csv"
    capsys.readouterr()
    assert main(["infer", "--models", str(run_dir), "--data", str(tiny_sim.kaggle_dir), "--out", str(bad),
                 "--device", "cpu", "--tile", "0", "32", "32"]) == 2
    assert "tile" in capsys.readouterr().err and not bad.exists()


def test_run_dir_thresholds_json_and_flips_tta(tiny_sim, ckpts, tmp_path):
    assert resolve_spec(ckpts["fold0"].parents[2]).thresholds is None
    # a one-fold run directory with a hand-written thresholds file (it records no spec)
    tuned = tmp_path / "exp"
    (tuned / "fold0" / "checkpoints").mkdir(parents=True)
    (tuned / "fold0" / "checkpoints" / "best.pt").symlink_to(ckpts["fold0"])
    (tuned / "config.yaml").symlink_to(ckpts["fold0"].parents[2] / "config.yaml")
    thresholds = {name: 0.35 + 0.05 * i for i, name in enumerate(PARTICLE_NAMES)}
    save_thresholds(tuned / "thresholds.json", thresholds, report={})
    assert resolve_spec(tuned).thresholds == str(tuned / "thresholds.json")

    run = tiny_sim.train_runs[0]
    result = run_inference(tuned, tiny_sim.copick_config, runs=[run], out_csv=tmp_path / "out.csv", tta="flips",
                           device="cpu", progress=False)
    assert result.manifest["thresholds"] == {"values": thresholds, "source": str(tuned / "thresholds.json"),
                                             "tuned_spec_hash": None, "spec_check": "unrecorded"}
    assert result.manifest["tta"] == ["identity", "flip_z", "flip_y", "flip_x"]
    assert result.manifest["data"]["runs"] == [run]
    probs = reference_probs([ckpts["fold0"]], [1], open_dataset(tiny_sim.copick_config), [run], tta="flips",
                            tile_zyx=(32, 96, 96), overlap=0.25)
    expected = reference(probs, thresholds=thresholds, post=SAVED_POST)
    assert_same_table(result.submission, expected)
    assert_same_table(read_submission(tmp_path / "out.csv"), expected)
    assert len(reference(probs, thresholds=DEFAULT_THRESHOLDS, post=SAVED_POST)) > len(expected)  # thresholds matter


def test_ensemble_yaml_weights_overrides_and_copick_overlay(tiny_sim, ckpts, tmp_path):
    ens = tmp_path / "ensemble"
    ens.mkdir()
    for fold in ("fold0", "fold1"):
        (ens / f"{fold}.pt").symlink_to(ckpts[fold])
    thresholds = {name: 0.3 for name in PARTICLE_NAMES}
    save_thresholds(ens / "thr.json", thresholds, report={})
    post = {"method": "cc3d", "min_size_vox": 2}
    config = load_config(CPU_TINY, [*TINY_CHECKPOINT_SETS, "infer.tile_zyx=[32,64,64]", "infer.overlap=0.5",
                                    "postprocess.method=cc3d", "postprocess.min_size_vox=2"])
    spec = spec_from_config(config, [(ens / "fold0.pt", 3.0), (ens / "fold1.pt", 1.0)], ens / "thr.json")
    (ens / "ensemble.yaml").write_text(spec_yaml(spec, ens))
    assert "fold0.pt" in yaml.safe_load((ens / "ensemble.yaml").read_text())["members"][0]["checkpoint"]
    # a copick project over the simulated tomograms with an overlay of its own, for the written picks
    doc = json.loads(tiny_sim.copick_config.read_text())
    doc["overlay_root"] = str(tmp_path / "overlay")
    config = tmp_path / "copick_config.json"
    config.write_text(json.dumps(doc))

    runs = [tiny_sim.train_runs[1]]
    result = run_inference(ens / "ensemble.yaml", config, runs=runs, out_csv=tmp_path / "out.csv", device="cpu",
                           copick_user="czii", copick_session="7", progress=False)
    manifest = result.manifest
    assert [c["weight"] for c in manifest["checkpoints"]] == [3.0, 1.0]
    assert manifest["spec"]["tiling"]["tile_zyx"] == [32, 64, 64]
    assert manifest["spec"]["tiling"]["overlap"] == 0.5
    assert manifest["spec"]["peaks"] == {**SAVED_POST, **post}
    assert manifest["thresholds"]["source"] == str(ens / "thr.json")
    dataset = open_dataset(config)
    probs = reference_probs([ckpts["fold0"], ckpts["fold1"]], [3.0, 1.0], dataset, runs, tta="none",
                            tile_zyx=(32, 64, 64), overlap=0.5)
    expected = reference(probs, thresholds=thresholds, post={**SAVED_POST, **post})
    assert_same_table(result.submission, expected)

    written = dataset.picks(user_id="czii", session_id="7")
    key = ["experiment", "particle_type", "x", "y", "z"]
    pd.testing.assert_frame_equal(written.sort_values(key).reset_index(drop=True),
                                  result.submission[key].sort_values(key).reset_index(drop=True),
                                  check_exact=False, rtol=1e-9)
    assert not (Path(tiny_sim.out_dir) / "copick" / "overlay" / "ExperimentRuns" / runs[0] / "Picks" /
                "czii_7_ribosome.json").exists()


def test_input_channels_are_stacked_in_checkpoint_order(tiny_sim, ckpts, tmp_path):
    run = tiny_sim.train_runs[2]
    result = run_inference([ckpts["two_channels"]], tiny_sim.copick_config, runs=[run], out_csv=tmp_path / "out.csv",
                           device="cpu", progress=False)
    assert result.manifest["input_channels"] == ["denoised", "wbp"]
    dataset = open_dataset(tiny_sim.copick_config)
    kwargs = dict(tta="none", tile_zyx=(32, 96, 96), overlap=0.25)
    probs = reference_probs([ckpts["two_channels"]], [1], dataset, [run], channels=("denoised", "wbp"), **kwargs)
    assert_same_table(result.submission, reference(probs, thresholds=DEFAULT_THRESHOLDS, post=SAVED_POST))
    swapped = reference_probs([ckpts["two_channels"]], [1], dataset, [run], channels=("wbp", "denoised"), **kwargs)
    assert not np.allclose(probs[run][0], swapped[run][0], atol=1e-3)  # the order matters to this model


@pytest.mark.slow
def test_a_trained_run_directory_finds_the_test_particles(tiny_sim, ckpts, tmp_path, cache):
    """Train (briefly) → infer the unseen Kaggle test run → score: far above the untrained ensemble."""
    config = with_data_paths(load_config(CPU_TINY, ["train.epochs=3", "train.steps_per_epoch=20", "train.val_every=3",
                                                    "val.tile_zyx=[32,96,96]", "infer.tile_zyx=[32,96,96]",
                                                    "infer.tta=none"]), [tiny_sim.copick_config])
    run_dir = tmp_path / "runs" / "trained"
    train(config, fold=0, out_dir=run_dir)
    solution = load_solution(tiny_sim.solution_csv)
    scores = {}
    for name, models in (("trained", run_dir), ("untrained", ckpts["fold0"].parents[2])):
        result = run_inference(models, tiny_sim.kaggle_dir, out_csv=tmp_path / f"{name}.csv", device="cpu",
                               progress=False)
        scores[name] = score(solution, read_submission(tmp_path / f"{name}.csv")).score
        assert result.manifest["data"]["runs"] == list(tiny_sim.test_runs)
    assert scores["trained"] > max(0.2, 2 * scores["untrained"]), scores


def _refusal_cases(tiny_sim, ckpts, tmp_path) -> dict:
    """case -> (models, data, keyword arguments, error class, message)."""
    run_dir = ckpts["fold0"].parents[2]
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(spec_yaml(spec_from_config(load_config(CPU_TINY), [(tmp_path / "gone.pt", 1.0)]), tmp_path))
    unfinished = tmp_path / "unfinished"
    (unfinished / "fold0" / "checkpoints").mkdir(parents=True)
    copick, kaggle = tiny_sim.copick_config, tiny_sim.kaggle_dir
    return {
        "classes": ([ckpts["fold0"], ckpts["three_classes"]], copick, {}, ConfigError, "was trained with classes"),
        "channels": ([ckpts["fold0"], ckpts["two_channels"]], copick, {}, ConfigError,
                     "was trained with input.channels"),
        "checkpoint": ([tmp_path / "missing.pt"], copick, {}, DataError, "missing.pt not found"),
        "yaml_member": ([bad_yaml], copick, {}, DataError, "checkpoints not found"),
        "unfinished_fold": ([unfinished], copick, {}, DataError, "fold0 has no checkpoints/best.pt"),
        "run": ([run_dir], copick, {"runs": ["TS_nope"]}, DataError, "unknown runs ['TS_nope']"),
        "tomo_type": ([ckpts["wbp"]], kaggle, {}, DataError, "run 'TS_test_00' has no tomogram of type 'wbp'"),
        "thresholds": ([run_dir], copick, {"thresholds": tmp_path / "thr.json"}, ConfigError,
                       "thr.json does not exist"),
        "truth_user": ([run_dir], copick, {"copick_user": "curation"}, DataError, "ground-truth"),
        "tta": ([run_dir], copick, {"tta": "spin"}, ConfigError, "unknown TTA transform 'spin'"),
    }


def _cli_options(kwargs: dict) -> list[str]:
    options = []
    for key, value in kwargs.items():
        options += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return options


@pytest.mark.parametrize("case", ["classes", "channels", "checkpoint", "yaml_member", "unfinished_fold", "run",
                                  "tomo_type", "thresholds", "truth_user", "tta"])
def test_refusals_name_the_problem_and_leave_no_output(case, tiny_sim, ckpts, tmp_path, cache, capsys):
    models, data, kwargs, error, message = _refusal_cases(tiny_sim, ckpts, tmp_path)[case]
    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    with pytest.raises(error) as info:
        run_inference(models, data, out_csv=out, device="cpu", progress=False, **kwargs)
    assert message in str(info.value)
    assert list(out.parent.iterdir()) == []

    rc = main(["infer", "--models", *map(str, models), "--data", str(data), "--out", str(out), "--device", "cpu",
               *_cli_options(kwargs)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("czii infer: error: ") and message in lines[-1]
    assert list(out.parent.iterdir()) == []


def test_output_under_a_file_is_refused_before_any_prediction(tiny_sim, ckpts, tmp_path, cache, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    out = blocker / "sub" / "x.csv"
    rc = main(["infer", "--models", str(ckpts["fold0"].parents[2]), "--data", str(tiny_sim.kaggle_dir),
               "--out", str(out), "--device", "cpu"])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"] and blocker.read_text() == "x"
