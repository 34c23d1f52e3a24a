"""Numbers the pure core must produce exactly, each derived by hand (or by a reference written here from the
documented formula): boundary values of thresholds and sizes, counts summed over runs, blend windows, tile
steps, rotations, augmentations drawn from a seeded generator, focal loss, schedules and the columns of the
files other tools read. Each test names the rule it pins; together they kill the mutants of ``make mutate``
that would otherwise change numbers silently (benchmarks/results/mutation.md)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from czii.config import AugmentConfig, LossConfig
from czii.errors import ConfigError, DataError, SubmissionError
from czii.data.normalize import normalize_volume
from czii.formats.exports import Frame, read_picks, write_picks
from czii.formats.mrc import read_mrc, write_mrc
from czii.formats.omezarr import read_ome_zarr, write_ome_zarr
from czii.formats.tomogram import find_tomograms, is_tomogram_source
from czii.inference.tiling import axis_starts, blend_window
from czii.metric import precision_recall_fbeta, score
from czii.picks import check_picks_table, neighbours, read_picks_csv
from czii.postprocess.peaks import detect_peaks
from czii.predictor import check_recorded_hash
from czii.geometry import resample_zyx
from czii.submission import read_scored_submission, scores_path, to_submission, validate_submission
from czii.training.augment import (SpatialAug, augment_intensity, mixup, rotate_points_z, rotate_z,
                                   rotation_margin_zyx, sample_rotation_deg)
from czii.training.losses import HeatmapLoss
from czii.training.optim import lr_factor, plan_epochs
from czii.training.targets import TargetRenderer, class_probabilities

OFF = dict(flips=False, rot90_xy=False, small_rotation_deg=0.0, intensity_scale=0.0, intensity_shift=0.0,
           intensity_ramp=0.0, noise_std=0.0, mixup_prob=0.0, mixup_alpha=0.4)


def _augment(**on) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **on})


def _picks(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z"])


# ---- metric -----------------------------------------------------------------------------------------------

def test_counts_are_summed_over_runs_before_f_beta():
    """Ribosome, match radius 75 Å. Run A: 2 truths, 1 found, 1 false pick; run B: 1 truth found, 2 false picks.
    Summed: tp 2, fp 3, fn 1 → P 2/5, R 2/3, F4 = 17·P·R / (16·P + R)."""
    truth = _picks([["A", "ribosome", 1000, 1000, 1000], ["A", "ribosome", 3000, 1000, 1000],
                    ["B", "ribosome", 1000, 1000, 1000]])
    pred = _picks([["A", "ribosome", 1010, 1000, 1000], ["A", "ribosome", 5000, 5000, 5000],
                   ["B", "ribosome", 1000, 1050, 1000], ["B", "ribosome", 4000, 4000, 4000],
                   ["B", "ribosome", 6000, 4000, 4000]])
    row = score(truth, pred).table.loc["ribosome"]
    assert (row.tp, row.fp, row.fn) == (2, 3, 1)
    p, r = 2 / 5, 2 / 3
    assert row.f_beta == pytest.approx(17 * p * r / (16 * p + r))


def test_a_class_without_picks_or_truth_reports_zero_precision_and_recall():
    truth = _picks([["A", "ribosome", 1000, 1000, 1000]])
    pred = _picks([["A", "apo-ferritin", 1000, 1000, 1000]])
    report = score(truth, pred)
    ribo = report.table.loc["ribosome"]
    assert (ribo.tp, ribo.fp, ribo.fn, ribo.precision, ribo.recall) == (0, 0, 1, 0.0, 0.0)
    apo = report.table.loc["apo-ferritin"]  # absent from the solution: its picks are ignored
    assert (apo.tp, apo.fp, apo.fn, apo.precision, apo.recall, apo.f_beta) == (0, 0, 0, 0.0, 0.0, 0.0)
    assert ribo.f_beta == 0.0
    assert report.table.index.name == "particle_type"
    assert report.to_dict()["beta"] == 4.0
    assert score(truth, pred, beta=2.0).to_dict()["beta"] == 2.0


def test_f_beta_of_a_small_denominator_by_hand():
    """1 of 10 truths found with 100 kept: P 0.01, R 0.1, F4 = 17 · 0.001 / (16 · 0.01 + 0.1) = 0.017 / 0.26."""
    precision, recall, f_beta = precision_recall_fbeta(1, 100, 10)
    assert (precision, recall) == pytest.approx((0.01, 0.1))
    assert f_beta == pytest.approx(17 * 0.001 / 0.26)
    assert precision_recall_fbeta(1, 1, 1) == (1.0, 1.0, 1.0)


def test_duplicate_solution_points_are_refused_even_when_only_two_rows_share_a_position():
    truth = _picks([["A", "ribosome", 1000, 1000, 1000], ["A", "apo-ferritin", 1000, 1000, 1000]])
    with pytest.raises(SubmissionError, match="2 rows with duplicate"):
        score(truth, truth)


# ---- picks ------------------------------------------------------------------------------------------------

def test_neighbours_use_the_radii_passed_not_the_default_table():
    """Ribosome's own radius (150 Å, match 75 Å) would find a prediction 60 Å away; a radius of 100 Å (50 Å) not."""
    truth = check_picks_table(_picks([["A", "ribosome", 0, 0, 0]]), "t")
    pred = check_picks_table(_picks([["A", "ribosome", 60, 0, 0]]), "p")
    assert len(neighbours(truth, pred)[0]) == 1
    assert len(neighbours(truth, pred, radius_A={"ribosome": 100.0})[0]) == 0


def test_run_names_that_look_like_numbers_are_read_as_text(tmp_path):
    path = tmp_path / "picks.csv"
    path.write_text("experiment,particle_type,x,y,z\n007,0042,1,2,3\n")
    df = read_picks_csv(path, "picks")
    assert (df["experiment"][0], df["particle_type"][0]) == ("007", "0042")


def test_known_particle_types_given_to_the_check_are_the_ones_used():
    table = _picks([["A", "apo-ferritin", 0, 0, 0]])
    with pytest.raises(SubmissionError, match="apo-ferritin"):
        check_picks_table(table, "picks", known=["ribosome"])
    assert len(check_picks_table(table.assign(score=1.0), "picks", score=True)) == 1  # 1 is a valid score


# ---- submission -------------------------------------------------------------------------------------------

def test_submission_rows_keep_their_order_within_a_run_and_class():
    """40 rows of one run and class after rows of a later run: a stable sort keeps the 40 in their given order."""
    rows = [["B", "ribosome", 9, 9, 9]] + [["A", "ribosome", float(i), 0, 0] for i in range(40)]
    sub = to_submission(_picks(rows))
    assert list(sub["x"][:40]) == [float(i) for i in range(40)]
    assert list(sub["id"]) == list(range(41)) and sub["id"].dtype == np.int64


# ---- peaks ------------------------------------------------------------------------------------------------

def _one_class(volume_zyx: np.ndarray) -> np.ndarray:
    return volume_zyx[None].astype(np.float32)


def test_cc3d_keeps_a_lone_component_of_exactly_min_size_and_voxels_at_the_threshold():
    p = np.zeros((8, 8, 8), np.float32)
    p[2, 2, 2:5] = 0.5  # 3 voxels exactly at the threshold
    picks = detect_peaks(_one_class(p), ["ribosome"], 10.0, thresholds=0.5, run="r", method="cc3d", min_size_vox=3)
    assert len(picks) == 1
    assert (picks.x[0], picks.y[0], picks.z[0], picks.score[0]) == (30.0, 20.0, 20.0, 0.5)
    assert len(detect_peaks(_one_class(p), ["ribosome"], 10.0, thresholds=0.5, run="r", method="cc3d",
                            min_size_vox=4)) == 0


def test_merge_keeps_a_lone_pick_and_the_index_runs_from_zero():
    p = np.zeros((9, 9, 9), np.float32)
    p[4, 4, 4] = 0.9
    a = np.zeros((9, 9, 9), np.float32)
    a[1, 1, 1] = 0.8
    picks = detect_peaks(np.stack([p, a]), ["ribosome", "apo-ferritin"], 10.0, thresholds=0.5, run="r",
                         merge_factor=1.0)
    assert list(picks.particle_type) == ["ribosome", "apo-ferritin"]
    assert list(picks.index) == [0, 1]


def test_a_diagonal_plateau_is_one_pick_and_equal_peaks_two_voxels_apart_are_two():
    """Kernel 3 (ribosome 150 Å × 0.5 / 100 Å voxels → half-width 1): two equal voxels touching at a corner are
    one plateau, at its mean; two equal voxels 2 apart along x are two maxima."""
    p = np.zeros((9, 9, 9), np.float32)
    p[3, 3, 3] = p[4, 4, 4] = 0.9
    picks = detect_peaks(_one_class(p), ["ribosome"], 100.0, thresholds=0.5, run="r")
    assert len(picks) == 1 and (picks.x[0], picks.y[0], picks.z[0]) == (350.0, 350.0, 350.0)
    q = np.zeros((9, 9, 9), np.float32)
    q[4, 4, 2] = q[4, 4, 4] = 0.9
    assert sorted(detect_peaks(_one_class(q), ["ribosome"], 100.0, thresholds=0.5, run="r").x) == [200.0, 400.0]


def test_the_kernel_half_width_is_the_rounded_radius_at_least_one():
    """Apo-ferritin 60 Å × 0.5 / 40 Å voxels = 0.75 → 1 voxel (kernel 3): peaks 2 voxels apart are both kept."""
    p = np.zeros((9, 9, 9), np.float32)
    p[4, 4, 2], p[4, 4, 4] = 0.8, 0.9
    assert len(detect_peaks(_one_class(p), ["apo-ferritin"], 40.0, thresholds=0.5, run="r")) == 2


@pytest.mark.parametrize("index", [0, 1, 7, 8])
def test_subvoxel_offsets_at_and_next_to_the_border(index):
    """Along x: values 0.5, 0.9, 0.7 around the peak give the vertex (0.5 − 0.7) / (2·(0.5 − 1.8 + 0.7)) = +1/6
    voxel; a peak on the border voxel (0 or 8 of 9) is not moved."""
    p = np.zeros((9, 9, 9), np.float32)
    p[4, 4, index] = 0.9
    if index > 0:
        p[4, 4, index - 1] = 0.5
    if index < 8:
        p[4, 4, index + 1] = 0.7
    picks = detect_peaks(_one_class(p), ["ribosome"], 10.0, thresholds=0.6, run="r", nms_radius_factor=0.1,
                         subvoxel=True)
    expected = index if index in (0, 8) else index + 1 / 6
    assert picks.x[0] == pytest.approx(10.0 * expected, abs=1e-4)
    assert (picks.y[0], picks.z[0]) == (40.0, 40.0)


@pytest.mark.parametrize("knob", ["nms_radius_factor", "merge_factor"])
def test_zero_factors_are_refused(knob):
    with pytest.raises(ConfigError, match=knob):
        detect_peaks(np.zeros((1, 4, 4, 4), np.float32), ["ribosome"], 10.0, thresholds=0.5, run="r", **{knob: 0.0})


# ---- tiling -----------------------------------------------------------------------------------------------

def test_blend_windows_by_hand():
    """Gaussian over 8 voxels: sigma 1 around 3.5; linear over 4: 1 − |offset| / 2."""
    offsets = np.arange(8) - 3.5
    assert blend_window(8, "gaussian") == pytest.approx(np.maximum(np.exp(-0.5 * offsets**2), 1e-3), rel=1e-12)
    assert blend_window(4, "linear") == pytest.approx([0.25, 0.75, 0.75, 0.25])


def test_tile_step_is_at_least_one_voxel():
    """Tile 4 at overlap 0.8: floor(0.8) = 0 → step 1, seven tiles over 10 voxels."""
    assert axis_starts(10, 4, 0.8) == (0, 1, 2, 3, 4, 5, 6)


# ---- augmentation -----------------------------------------------------------------------------------------

def test_rotated_points_by_hand():
    """Centre of a (1, 5, 7) volume: y 2, x 3. A point one voxel along +x turns by +90° to one voxel along +y."""
    out = rotate_points_z(np.array([[0.0, 2.0, 4.0], [0.0, 3.0, 3.0]]), 90.0, (1, 5, 7))
    assert out == pytest.approx(np.array([[0.0, 3.0, 3.0], [0.0, 2.0, 2.0]]), abs=1e-12)


def test_rotate_z_moves_a_voxel_where_rotate_points_z_says():
    vol = torch.zeros((1, 2, 5, 7))
    vol[0, :, 2, 4] = 1.0
    out = rotate_z(vol, 90.0)
    assert out[0, :, 3, 3].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert out.sum().item() == pytest.approx(2.0, abs=1e-5)


def test_rotation_margins_by_hand():
    """Patch (4, 9, 13) turned 30°: half-sides y 4, x 6 → y ceil(4 cos + 6 sin − 4) = 3,
    x ceil(4 sin + 6 cos − 6) = 2."""
    margin = rotation_margin_zyx(30.0, (4, 9, 13))
    assert margin.tolist() == [0, 3, 2] and margin.dtype == np.int64
    assert rotation_margin_zyx(0.0, (4, 9, 13)).tolist() == [0, 0, 0]
    assert rotation_margin_zyx(45.0, (4, 9, 9)).tolist() == [0, 2, 2]  # ceil(8 · 0.7071 − 4) = ceil(1.657)


def test_rotation_angles_span_both_signs_and_are_zero_when_off():
    rng = np.random.default_rng(0)
    angles = [sample_rotation_deg(rng, _augment(small_rotation_deg=0.5)) for _ in range(200)]
    assert -0.5 <= min(angles) < -0.4 and 0.4 < max(angles) <= 0.5
    rng = np.random.default_rng(5)
    assert sample_rotation_deg(rng, _augment()) == 0.0
    assert rng.random() == np.random.default_rng(5).random()  # off draws nothing: later draws are unchanged


def test_flips_and_turns_are_fair_coins():
    rng = np.random.default_rng(1)
    draws = [SpatialAug.sample(rng, _augment(flips=True, rot90_xy=True)) for _ in range(800)]
    for axis in range(3):
        assert 0.42 < np.mean([d.flip_zyx[axis] for d in draws]) < 0.58
    assert {d.rot90_k for d in draws} == {0, 1, 2, 3}


def test_flip_dims_are_z_y_x_of_the_last_three_axes():
    t = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 2, 3, 4, 5)
    assert torch.equal(SpatialAug((False, True, False)).apply(t), torch.flip(t, dims=(-2,)))
    assert torch.equal(SpatialAug((False, False, False), 1).apply(t), torch.rot90(t, 1, dims=(-2, -1)))


def _reference_intensity(x: np.ndarray, seed: int, cfg: AugmentConfig) -> tuple[np.ndarray, float]:
    """The docstring's recipe, drawing from the generator in the documented order; and the generator's next draw."""
    rng = np.random.default_rng(seed)
    if cfg.intensity_scale > 0:
        x = x * rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)
    if cfg.intensity_shift > 0:
        x = x + rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    if cfg.intensity_ramp > 0:
        amplitude, angle = rng.uniform(0.0, cfg.intensity_ramp), rng.uniform(0.0, 2.0 * np.pi)
        yy, xx = np.meshgrid(np.linspace(-1, 1, x.shape[-2]), np.linspace(-1, 1, x.shape[-1]), indexing="ij")
        along = np.cos(angle) * xx + np.sin(angle) * yy
        x = x + amplitude * along / np.abs(along).max()
    if cfg.noise_std > 0:
        sigma = rng.uniform(0.0, cfg.noise_std)
        x = (x + rng.normal(0.0, sigma, size=x.shape)) / np.sqrt(1.0 + sigma**2)
    return x, rng.random()


@pytest.mark.parametrize("on", [dict(intensity_scale=0.3), dict(intensity_shift=0.4), dict(intensity_ramp=0.5),
                                dict(noise_std=0.8),
                                dict(intensity_scale=0.3, intensity_shift=0.4, intensity_ramp=0.5, noise_std=0.8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_intensity_augmentation_follows_its_recipe(on, seed):
    x = np.random.default_rng(9).normal(size=(1, 3, 6, 5))
    cfg = _augment(**on)
    out = augment_intensity(torch.from_numpy(x.astype(np.float32)), np.random.default_rng(seed), cfg)
    assert out.numpy() == pytest.approx(_reference_intensity(x, seed, cfg)[0], abs=1e-5)
    rng = np.random.default_rng(seed)
    augment_intensity(torch.from_numpy(x.astype(np.float32)), rng, cfg)
    assert rng.random() == _reference_intensity(x, seed, cfg)[1]  # as many draws as the recipe: later ones unchanged


def test_intensity_scale_and_shift_reach_both_ends_of_their_ranges():
    ones = torch.ones((1, 2, 2, 2))
    rng = np.random.default_rng(3)
    scales = [augment_intensity(ones, rng, _augment(intensity_scale=0.5))[0, 0, 0, 0].item() for _ in range(300)]
    shifts = [augment_intensity(ones, rng, _augment(intensity_shift=0.5))[0, 0, 0, 0].item() - 1 for _ in range(300)]
    for values in (np.array(scales) - 1, np.array(shifts)):
        assert -0.5 <= values.min() < -0.45 and 0.45 < values.max() <= 0.5


def test_mixup_blends_pairs_as_documented():
    x = torch.arange(4.0).reshape(4, 1)
    y = 10 * x
    prob, alpha = 0.7, 0.4
    for seed in range(20):
        rng = np.random.default_rng(seed)
        if rng.random() >= prob:
            expected_x, expected_y = x, y
        else:
            lam = rng.beta(alpha, alpha)
            perm = rng.permutation(4)
            expected_x, expected_y = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
        got_x, got_y = mixup(x, y, np.random.default_rng(seed), prob, alpha)
        assert torch.allclose(got_x, expected_x.float()) and torch.allclose(got_y, expected_y.float())
    two = torch.arange(2.0).reshape(2, 1)
    assert any(not torch.equal(mixup(two, two, np.random.default_rng(s), 1.0, 0.4)[0], two) for s in range(10))


# ---- targets, loss, schedule ------------------------------------------------------------------------------

def test_a_heat_of_exactly_one_half_labels_its_class():
    heat = np.zeros((2, 1, 1, 3), np.float32)
    heat[1, 0, 0, 0] = 0.5
    heat[0, 0, 0, 1] = 0.49
    labels = class_probabilities(heat)
    assert labels[:, 0, 0, 0].tolist() == [0, 0, 1] and labels[:, 0, 0, 1].tolist() == [1, 0, 0]


def test_focal_loss_by_hand():
    """Two classes at p = 0.2 and 0.6, two voxels each, soft target 0.5, γ 2, class weights 1 and 3, pos_weight 5:
    per voxel BCE = −(0.5 ln p + 0.5 ln(1 − p)), p_t = 0.5, weight = w · (1 + 4 · 0.5); the loss is the mean over
    voxels and classes."""
    probs = (0.2, 0.6)
    logits = torch.tensor([math.log(p / (1 - p)) for p in probs]).view(1, 2, 1, 1, 1).expand(1, 2, 1, 1, 2)
    target = torch.full((1, 2, 1, 1, 2), 0.5)
    loss = HeatmapLoss(LossConfig("focal", [1.0, 3.0], pos_weight=5.0, background_weight=1.0, focal_gamma=2.0), 2)
    bce = [-(0.5 * math.log(p) + 0.5 * math.log(1 - p)) for p in probs]
    expected = np.mean([b * 0.25 * w * 3.0 for b, w in zip(bce, (1.0, 3.0)) for _ in range(2)])
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_target_reach_by_hand():
    """Radius 10 voxels: a Gaussian of σ = 0.5 · radius reaches ceil(3σ) = 15 voxels, a sphere of factor 0.45
    floor(4.5) = 4."""
    radius = np.full((1, 3), 10.0)
    assert TargetRenderer("gaussian", radius, 0.5, 0.45).reach_zyx_vox().tolist() == [[15.0, 15.0, 15.0]]
    assert TargetRenderer("sphere", radius, 0.5, 0.45).reach_zyx_vox().tolist() == [[4.0, 4.0, 4.0]]


def test_schedules_by_hand():
    assert lr_factor(2, 2, 1, "cosine", 0.1) == pytest.approx(0.1)  # past the last step: the floor
    assert plan_epochs(0, 100, 10.0, 0.5) == 20  # half-second epochs: 10 s hold 20 of them


# ---- exports ----------------------------------------------------------------------------------------------

def test_relion4_pixel_size_in_the_file_wins_over_the_frame(tmp_path):
    """A Warp table at 7 Å pixels imported into a project whose tomogram has 10 Å voxels: x = 100 px × 7 Å."""
    path = tmp_path / "warp.star"
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["TS"], "rlnCoordinateX": [100.0],
                                               "rlnCoordinateY": [50.0], "rlnCoordinateZ": [20.0],
                                               "rlnPixelSize": [7.0]})}, path)
    table = read_picks(path, "relion4", {"TS": Frame((64, 128, 128), 10.0)}, particle="ribosome")
    assert table[["x", "y", "z"]].to_numpy().tolist() == [[700.0, 350.0, 140.0]]
    assert list(table.columns) == ["experiment", "particle_type", "x", "y", "z", "score"]


def test_a_star_file_with_one_unnamed_block_is_read(tmp_path):
    path = tmp_path / "one.star"
    starfile.write({"": pd.DataFrame({"rlnTomoName": ["TS"], "rlnCenteredCoordinateXAngst": [0.0],
                                      "rlnCenteredCoordinateYAngst": [0.0], "rlnCenteredCoordinateZAngst": [0.0]})},
                   path)
    table = read_picks(path, "star", {"TS": Frame((64, 128, 100), 10.0)}, particle="ribosome")
    assert table[["x", "y", "z"]].to_numpy().tolist() == [[500.0, 640.0, 320.0]]


def test_exported_csv_and_tables_have_exactly_their_columns(tmp_path):
    picks = pd.DataFrame({"experiment": ["TS"], "particle_type": ["ribosome"], "x": [10.0], "y": [20.0],
                          "z": [30.0], "score": [0.5]})
    frames = {"TS": Frame((64, 64, 64), 10.0)}
    [csv] = write_picks(picks, tmp_path / "p.csv", "csv", frames)
    assert pd.read_csv(csv).columns.tolist() == ["experiment", "particle_type", "x", "y", "z", "score"]
    for fmt in ("tbl", "star", "csv"):
        back = read_picks(write_picks(picks, tmp_path / f"p.{fmt}", fmt, frames)[0], fmt, frames)
        assert back.columns.tolist() == ["experiment", "particle_type", "x", "y", "z", "score"]
        assert back.index.tolist() == [0]


def test_a_dynamo_table_of_exactly_26_columns_and_an_empty_one_are_read(tmp_path):
    """Columns 24–26 hold x, y, z + 1 in pixels; 26 columns are the least a table may have."""
    row = np.zeros(26)
    row[19], row[21], row[23:26] = 1, 1, (11.0, 21.0, 31.0)
    path = tmp_path / "short.tbl"
    np.savetxt(path, row[None])
    table = read_picks(path, "tbl", {"TS": Frame((64, 64, 64), 10.0)}, particle="ribosome")
    assert table[["x", "y", "z"]].to_numpy().tolist() == [[100.0, 200.0, 300.0]]
    empty = tmp_path / "empty.tbl"
    empty.write_text("")
    assert len(read_picks(empty, "tbl", {"TS": Frame((64, 64, 64), 10.0)}, particle="ribosome")) == 0


def test_sub_angstrom_dynamo_voxel_sizes_are_accepted(tmp_path):
    """A sidecar voxel size of 0.8 Å is unusual but valid: x = (11 − 1) × 0.8."""
    row = np.zeros(35)
    row[19], row[21], row[23:26] = 1, 1, (11.0, 1.0, 1.0)
    path = tmp_path / "fine.tbl"
    np.savetxt(path, row[None])
    (tmp_path / "fine.tbl.czii.json").write_text('{"tomograms": {"1": "TS"}, "voxel_size_A": {"TS": 0.8}}')
    table = read_picks(path, "tbl", {"TS": Frame((64, 64, 64), 10.0)}, particle="ribosome")
    assert table.x[0] == pytest.approx(8.0)


# ---- tomograms and their metadata -------------------------------------------------------------------------

def test_tomograms_without_a_translation_sit_at_the_origin_and_other_files_are_ignored(tmp_path):
    volume = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    write_mrc(tmp_path / "TS_a.mrc", volume, 10.0)
    write_ome_zarr(tmp_path / "TS_b.zarr", volume, 12.0, n_levels=2)
    (tmp_path / "notes.txt").write_text("not a tomogram")
    found = find_tomograms(tmp_path)
    assert [f.run for f in found] == ["TS_a", "TS_b"]
    assert [f.translation_zyx_A for f in found] == [(0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]
    assert [f.shape_zyx for f in found] == [(4, 6, 8), (4, 6, 8)]
    assert [f.header_spacing_zyx_A for f in found] == [(10.0, 10.0, 10.0), (12.0, 12.0, 12.0)]
    assert all(np.array_equal(f.read(), volume) for f in found)
    assert [f.run for f in find_tomograms(str(tmp_path / "TS_*"))] == ["TS_a", "TS_b"]
    assert is_tomogram_source(tmp_path) and is_tomogram_source(str(tmp_path / "*.mrc"))
    (tmp_path / "empty").mkdir()
    assert not is_tomogram_source(tmp_path / "empty")


def test_a_zarr_store_with_broken_metadata_is_reported_as_a_tomogram(tmp_path):
    store = tmp_path / "TS.zarr"
    store.mkdir()
    (store / ".zattrs").write_text("{not json")
    with pytest.raises(DataError, match=r"\.zattrs: unreadable OME-Zarr metadata"):
        find_tomograms(store)


def test_an_ome_zarr_is_read_at_level_zero_unless_asked(tmp_path):
    write_ome_zarr(tmp_path / "TS.zarr", np.zeros((4, 6, 8), np.float32), 10.0, n_levels=2)
    data, spacing = read_ome_zarr(tmp_path / "TS.zarr")
    assert data.shape == (4, 6, 8) and spacing == (10.0, 10.0, 10.0)


@pytest.mark.parametrize("size", [0.0, -1.0, float("inf"), float("nan")])
def test_a_voxel_size_given_must_be_a_positive_number(tmp_path, size):
    write_mrc(tmp_path / "TS.mrc", np.zeros((4, 4, 4), np.float32), 10.0)
    with pytest.raises(DataError, match="--voxel-size must be a positive number"):
        find_tomograms(tmp_path, voxel_size_A=size)
    assert find_tomograms(tmp_path, voxel_size_A=0.5)[0].spacing_zyx_A == (0.5, 0.5, 0.5)


def test_normalised_volumes_are_float32_whatever_comes_in():
    assert normalize_volume(np.random.default_rng(0).normal(size=(4, 4, 4))).dtype == np.float32


def test_a_hash_recorded_without_its_recipe_is_not_checked():
    check_recorded_hash({"spec_hash": "0123456789ab", "thresholds": {}}, "thresholds.json")
    with pytest.raises(ConfigError, match="thresholds.json"):
        check_recorded_hash({"spec_hash": "0123456789ab", "spec": {}}, "thresholds.json")


def test_tied_peaks_keep_raster_order_and_the_first_of_a_tied_pair_survives_the_merge():
    """64 isolated peaks of two heights, alternating in z, y, x order: picks come highest first and, within a
    height, in z, y, x order (an unstable sort scrambles ties beyond 16 elements). Each peak then gets a tied twin
    2 voxels along x (inside the merge radius of 1.5 × 150 Å at 100 Å voxels, outside the kernel): the first of
    each pair in z, y, x order is kept."""
    p = np.zeros((12, 12, 40), np.float32)
    centres = [(z, y, x) for z in range(1, 12, 3) for y in range(1, 12, 3) for x in range(1, 38, 10)]
    heights = [0.9 if i % 2 == 0 else 0.8 for i in range(len(centres))]
    for (z, y, x), h in zip(centres, heights):
        p[z, y, x] = h
    expected = [(100.0 * z, 100.0 * y, 100.0 * x) for h in (0.9, 0.8)
                for (z, y, x), hi in zip(centres, heights) if hi == h]
    picks = detect_peaks(_one_class(p), ["ribosome"], 100.0, thresholds=0.5, run="r", nms_radius_factor=0.1)
    assert list(zip(picks.z, picks.y, picks.x)) == expected
    for (z, y, x), h in zip(centres, heights):
        p[z, y, x + 2] = h
    merged = detect_peaks(_one_class(p), ["ribosome"], 100.0, thresholds=0.5, run="r", nms_radius_factor=0.1,
                          merge_factor=1.5)
    assert list(zip(merged.z, merged.y, merged.x)) == expected


def test_downsampling_smooths_with_the_documented_gaussian():
    """x halved (σ = (2 − 1) / 2 = 0.5 voxel), y kept (σ = 0): on (−1)^(x+y) · 100 stored as int16, an interior output
    voxel j keeps the sign of input voxel 2j times Σ_k w_k (−1)^k / Σ_k w_k with w_k = exp(−k² / (2σ²)), |k| ≤ 2
    (scipy truncates at 4σ); the border voxel sees the edge value repeated: (w0 + 2 w2) / Σ w."""
    y, x = np.meshgrid(np.arange(6), np.arange(16), indexing="ij")
    volume = np.broadcast_to(100 * (-1) ** (x + y), (3, 6, 16)).astype(np.int16)  # sign of voxel (y, x)
    out = resample_zyx(volume, (10.0, 10.0, 10.0), (10.0, 10.0, 20.0))
    w = np.exp(-np.arange(-2, 3) ** 2 / (2 * 0.25))
    interior = 100 * (w * (-1.0) ** np.arange(-2, 3)).sum() / w.sum()
    assert out.dtype == np.float32 and out.shape == (3, 6, 8)
    assert out[1, :, 2:6] == pytest.approx(interior * (-1.0) ** y[:, :4], rel=1e-5)
    assert out[1, 0, 0] == pytest.approx(100 * (w[2] + 2 * w[0]) / w.sum(), rel=1e-5)


def test_a_dynamo_table_without_names_is_refused_when_the_run_is_ambiguous(tmp_path):
    row = np.zeros(35)
    row[19], row[21], row[23:26] = 1, 1, (11.0, 1.0, 1.0)
    path = tmp_path / "bare.tbl"
    np.savetxt(path, row[None])
    frames = {"TS_a": Frame((64, 64, 64), 10.0), "TS_b": Frame((64, 64, 64), 10.0)}
    with pytest.raises(DataError, match="tomogram indices"):
        read_picks(path, "tbl", frames, particle="ribosome")
    assert read_picks(path, "tbl", {"TS_a": frames["TS_a"]}, particle="ribosome").experiment[0] == "TS_a"
    (tmp_path / "bare.tbl.czii.json").write_text('{"tomograms": {"1": "TS_a"}, "voxel_size_A": {"TS_a": 0}}')
    with pytest.raises(DataError, match="positive"):
        read_picks(path, "tbl", frames, particle="ribosome")


def test_submission_scores_and_ids_are_checked(tmp_path):
    picks = _picks([["A", "ribosome", 0, 0, 0]]).assign(score=1.5)
    with pytest.raises(SubmissionError, match="score"):
        to_submission(picks, keep_score=True)
    sub = to_submission(picks.drop(columns="score")).astype({"id": object})
    sub.loc[0, "id"] = "a"
    with pytest.raises(SubmissionError, match="integers"):
        validate_submission(sub)
    path = tmp_path / "dup.csv"
    path.write_text("id,experiment,particle_type,x,y,z\n0,A,ribosome,0,0,0\n0,A,ribosome,5,5,5\n")
    scores_path(path).write_text("id,score\n0,0.5\n0,0.6\n")
    with pytest.raises(SubmissionError, match="duplicate ids"):
        read_scored_submission(path)


def test_an_mrc_file_without_its_map_stamp_is_refused(tmp_path):
    path = tmp_path / "broken.mrc"
    write_mrc(path, np.zeros((4, 4, 4), np.float32), 10.0)
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"XXXX"  # the "MAP " stamp of MRC2014
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="broken.mrc"):
        read_mrc(path)


def test_imports_honour_the_voxel_size_given_and_keep_unknown_scores(tmp_path):
    """A Dynamo row at x = 11 (Dynamo counts from 1) read with --voxel-size 7: x = 10 × 7 Å; a CSV without scores
    reads with NaN scores."""
    row = np.zeros(35)
    row[19], row[21], row[23:26] = 1, 1, (11.0, 1.0, 1.0)
    path = tmp_path / "t.tbl"
    np.savetxt(path, row[None])
    frames = {"TS": Frame((64, 64, 64), 10.0)}
    assert read_picks(path, "tbl", frames, particle="ribosome", voxel_size_A=7.0).x[0] == pytest.approx(70.0)
    csv = tmp_path / "p.csv"
    csv.write_text("experiment,particle_type,x,y,z\nTS,ribosome,1,2,3\n")
    assert np.isnan(read_picks(csv, "csv", frames).score[0])


def test_exports_refuse_scores_outside_zero_to_one(tmp_path):
    picks = pd.DataFrame({"experiment": ["TS"], "particle_type": ["ribosome"], "x": [1.0], "y": [2.0], "z": [3.0],
                          "score": [1.5]})
    with pytest.raises(SubmissionError, match="score"):
        write_picks(picks, tmp_path / "p.star", "star", {"TS": Frame((64, 64, 64), 10.0)})
    assert not (tmp_path / "p.star").exists()
