"""Report figures on synthetic inputs: valid non-flat PNGs, slab choice, pick matching, npz round trip, rebuild."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import _write_oof_spec

from czii.errors import DataError
from czii.particles import PARTICLE_NAMES, get_particle
from czii.postprocess.thresholds import class_curves, tune_run_dir
from czii.report import (
    OVERLAY_FIGURE,
    THRESHOLD_FIGURE,
    TRAINING_FIGURE,
    OverlaySlab,
    build_report,
    match_flags,
    overlay_slab,
    plot_overlay,
    plot_threshold_curves,
    plot_training_curves,
)

SPACING_ZYX_A = (10.0, 10.0, 10.0)


def _picks(rng, n: int, run: str, with_score: bool) -> pd.DataFrame:
    df = pd.DataFrame({
        "experiment": run,
        "particle_type": rng.choice(PARTICLE_NAMES, n),
        "x": rng.uniform(0, 950, n), "y": rng.uniform(0, 950, n), "z": rng.uniform(0, 390, n),
    })
    if with_score:
        df["score"] = rng.uniform(0.02, 1.0, n)
    return df


def _oof(rng, run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth picks and candidates: a jittered, scored copy of most truth points plus false positives."""
    truth = _picks(rng, 40, run, with_score=False)
    hits = truth.sample(frac=0.8, random_state=int(rng.integers(1 << 30))).copy()
    hits[["x", "y", "z"]] += rng.normal(0, 5, (len(hits), 3))
    hits["score"] = rng.uniform(0.3, 1.0, len(hits))
    candidates = pd.concat([hits, _picks(rng, 60, run, with_score=True)], ignore_index=True)
    candidates["score"] = candidates["score"].clip(0, 1)
    return truth, candidates


def _slab(rng) -> OverlaySlab:
    volume = rng.normal(size=(40, 96, 96)).astype(np.float32)
    probs = rng.uniform(size=(2, 40, 96, 96)).astype(np.float32)
    truth = pd.DataFrame({"particle_type": ["ribosome"] * 5 + ["thyroglobulin"] * 2,
                          "x": [100, 300, 500, 700, 900, 200, 400], "y": [100, 300, 500, 700, 900, 800, 600],
                          "z": [200, 205, 210, 195, 60, 200, 350]})
    picks = pd.DataFrame({"particle_type": ["ribosome", "ribosome", "thyroglobulin"],
                          "x": [105, 600, 200], "y": [100, 600, 800], "z": [200, 200, 200], "score": [0.9, 0.5, 0.7]})
    return overlay_slab(volume, probs, SPACING_ZYX_A, ["ribosome", "thyroglobulin"], truth, picks, run="TS_x",
                        fold="fold0", thresholds={"ribosome": 0.4, "thyroglobulin": 0.6},
                        thresholds_origin="cross-fitted")


def test_threshold_curves_figure(tmp_path, assert_valid_png):
    rng = np.random.default_rng(0)
    truth, candidates = _oof(rng, "TS_a")
    curves = class_curves(candidates, truth)
    out = plot_threshold_curves(curves, {c: 0.3 for c in PARTICLE_NAMES}, tmp_path / "curves.png",
                                fold_thresholds={"fold0": {c: 0.25 for c in PARTICLE_NAMES}}, title="synthetic")
    assert out == tmp_path / "curves.png"
    assert_valid_png(out)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left


def test_training_curves_figure_skips_epochs_without_validation(tmp_path, assert_valid_png):
    histories = {
        f"fold{k}": pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [0.9, 0.6, 0.5, 0.45 - 0.05 * k],
                                  "val_score": [np.nan, 0.3 + 0.1 * k, np.nan, 0.5], "lr": 1e-3, "seconds": 2.0})
        for k in range(2)
    }
    assert_valid_png(plot_training_curves(histories, tmp_path / "training.png"))


def test_overlay_slab_is_centred_on_the_truth_and_reduces_the_volume():
    rng = np.random.default_rng(1)
    slab = _slab(rng)
    start, stop = slab.z_range_vox
    # four ribosomes and a thyroglobulin lie at z = 19.5..21 voxels; centres 15..25 hold all five: middle 20
    assert (start, stop) == (14, 27)
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(40, 96, 96)).astype(np.float32)
    probs = rng.uniform(size=(2, 40, 96, 96)).astype(np.float32)
    np.testing.assert_allclose(slab.tomogram_yx, volume[start:stop].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(slab.heatmaps_cyx, probs[:, start:stop].max(axis=1).astype(np.float16))


def test_overlay_slab_round_trips_through_npz(tmp_path):
    slab = _slab(np.random.default_rng(2))
    back = OverlaySlab.load(slab.save(tmp_path / "overlay.npz"))
    assert (back.run, back.fold, back.z_range_vox) == (slab.run, slab.fold, slab.z_range_vox)
    assert back.classes == slab.classes
    assert back.spacing_zyx_A == SPACING_ZYX_A and back.thresholds == slab.thresholds
    assert back.thresholds_origin == "cross-fitted"
    np.testing.assert_array_equal(back.tomogram_yx, slab.tomogram_yx)
    np.testing.assert_array_equal(back.heatmaps_cyx, slab.heatmaps_cyx)
    pd.testing.assert_frame_equal(back.truth, slab.truth, check_dtype=False)
    pd.testing.assert_frame_equal(back.picks, slab.picks, check_dtype=False)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        OverlaySlab.load(tmp_path / "broken.npz")


def test_match_flags_follow_the_metric_radius_and_class():
    r = get_particle("ribosome").match_radius_A
    truth = pd.DataFrame({"experiment": ["TS_a", "TS_a", "TS_a", "TS_b"],
                          "particle_type": ["ribosome", "ribosome", "apo-ferritin", "ribosome"],
                          "x": [0.0, 1000.0, 0.0, 3000.0], "y": [0.0, 0.0, 500.0, 0.0], "z": [0.0] * 4})
    picks = pd.DataFrame({"experiment": ["TS_a", "TS_a", "TS_a", "TS_a", "TS_a"],
                          "particle_type": ["ribosome", "ribosome", "thyroglobulin", "apo-ferritin", "ribosome"],
                          "x": [r, 1000.0 + r + 1.0, 0.0, 0.0, 3000.0], "y": [0.0, 0.0, 0.0, 500.0, 0.0],
                          "z": [0.0] * 5})
    found, matched = match_flags(truth, picks)
    # at exactly 0.5 x radius a pick counts (inclusive); just beyond it does not; another class never does;
    # a pick at the very position of a truth point of another run does not find it
    assert found.tolist() == [True, False, True, False]
    assert matched.tolist() == [True, False, False, True, False]


def test_overlay_figure(tmp_path, assert_valid_png):
    assert_valid_png(plot_overlay(_slab(np.random.default_rng(3)), tmp_path / "overlay.png"))


def _run_dir(tmp_path, rng):
    run_dir = tmp_path / "runs" / "synthetic"
    for k, run in enumerate(["TS_a", "TS_b"]):
        truth, candidates = _oof(rng, run)
        (run_dir / f"fold{k}" / "oof").mkdir(parents=True)
        truth.to_csv(run_dir / f"fold{k}" / "oof" / "truth.csv", index=False)
        candidates.to_csv(run_dir / f"fold{k}" / "oof" / "candidates.csv", index=False)
        _write_oof_spec(run_dir / f"fold{k}" / "oof")
        pd.DataFrame({"epoch": [1, 2], "train_loss": [0.8, 0.5], "val_score": [0.2, 0.4], "lr": 1e-3,
                      "seconds": 1.0}).to_csv(run_dir / f"fold{k}" / "history.csv", index=False)
    return run_dir


def test_build_report_rebuilds_what_the_saved_outputs_allow(tmp_path, assert_valid_png):
    run_dir = _run_dir(tmp_path, np.random.default_rng(4))
    with pytest.raises(DataError, match="thresholds.json not found"):
        build_report(run_dir)
    assert not (run_dir / "report").exists()

    tune_run_dir(run_dir)
    report = build_report(run_dir)
    assert [p.name for p in report.written] == [THRESHOLD_FIGURE, TRAINING_FIGURE]
    assert list(report.skipped) == [OVERLAY_FIGURE] and "overlay.npz" in report.skipped[OVERLAY_FIGURE]
    for path in report.written:
        assert_valid_png(path)

    _slab(np.random.default_rng(5)).save(run_dir / "report" / "overlay.npz")
    report = build_report(run_dir)
    assert [p.name for p in report.written] == [THRESHOLD_FIGURE, TRAINING_FIGURE, OVERLAY_FIGURE]
    assert not report.skipped
    assert_valid_png(run_dir / "report" / OVERLAY_FIGURE)
    assert json.loads((run_dir / "thresholds.json").read_text())["thresholds_by_fold"].keys() == {"fold0", "fold1"}
