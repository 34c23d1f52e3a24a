"""Behaviours whose breakage no error would reveal, each checked against values derived by hand or by a
brute-force reference written here: targets at the patch border, sphere factors, score sidecars in another
row order, the score margin on a grid, the spec hash over every score-relevant field, Dynamo tables between
projects of different voxel sizes, and IMOD's unsigned bytes."""

from __future__ import annotations

import dataclasses
import json
import re
import struct

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import CPU_TINY

from czii.config import load_config
from czii.data.normalize import normalize_volume
from czii.errors import ConfigError, DataError
from czii.formats.exports import Frame, read_picks, tbl_sidecar, write_picks
from czii.formats.mrc import read_mrc, write_mrc
from czii.particles import get_particle
from czii.postprocess.thresholds import read_oof_spec, tune_thresholds
from czii.predictor import check_spec, load_thresholds_doc, recipe, spec_from_config, spec_hash
from czii.submission import read_scored_submission, scores_path
from czii.training.data import PatchDataset
from czii.training.patches import PatchDraw, RunData

NO_AUGMENT = ["augment.flips=false", "augment.rot90_xy=false", "augment.small_rotation_deg=0",
              "augment.intensity_scale=0", "augment.intensity_shift=0", "augment.noise_std=0", "augment.mixup_prob=0",
              "loss.name=bce", "targets.kind=sphere", "patch.size_zyx=[16,16,16]"]


def _painted(sphere_factor: float, centre_zyx: tuple[int, int, int], start_zyx: tuple[int, int, int]) -> np.ndarray:
    """The ribosome channel of the training target of one patch with one ribosome at ``centre_zyx``."""
    config = load_config(CPU_TINY, [*NO_AUGMENT, f"targets.sphere_factor={sphere_factor}"])
    run = RunData("sim", "TS", np.zeros((1, 64, 64, 64), np.float32), (10.0, 10.0, 10.0),
                  np.array([centre_zyx], dtype=np.float64), np.array([config.data.classes.index("ribosome")]))
    dataset = PatchDataset(config, [run])
    dataset.sampler.draw = lambda rng: PatchDraw(0, start_zyx, -1)  # this patch, not a random one
    _, y = dataset[0]
    return y.numpy()[config.data.classes.index("ribosome")]


def _brute_force_sphere(radius_vox: float, centre_zyx, start_zyx, size: int = 16) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s, s + size) for s in start_zyx], indexing="ij")
    d2 = (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2
    return (d2 <= radius_vox**2).astype(np.float32)


@pytest.mark.parametrize("outside", [1, 3, 6])
def test_a_particle_centred_just_outside_the_patch_still_paints_its_part(outside):
    """Ribosome radius 150 Å at 10 Å voxels, sphere factor 0.5: 7.5 voxels; centre ``outside`` voxels past x's edge."""
    start = (20, 20, 20)
    centre = (28, 28, 20 + 15 + outside)
    painted = _painted(0.5, centre, start)
    expected = _brute_force_sphere(7.5, centre, start)
    assert expected.sum() > 0
    np.testing.assert_array_equal(painted, expected)


@pytest.mark.parametrize("factor", [0.3, 0.8])
def test_a_non_default_sphere_factor_sets_the_target_radius(factor):
    start, centre = (20, 20, 20), (28, 28, 28)
    painted = _painted(factor, centre, start)
    np.testing.assert_array_equal(painted, _brute_force_sphere(factor * 15.0, centre, start))
    assert painted.sum() != _brute_force_sphere(0.5 * 15.0, centre, start).sum()  # not the default's sphere


def test_score_sidecar_rows_are_attached_by_id_whatever_their_order(tmp_path):
    ids = np.arange(6)
    submission = pd.DataFrame({"id": ids, "experiment": "TS_a", "particle_type": "ribosome",
                               "x": 100.0 + ids, "y": 200.0, "z": 300.0})
    submission.to_csv(tmp_path / "s.csv", index=False)
    scores = pd.DataFrame({"id": ids, "score": 0.1 + 0.1 * ids}).iloc[[4, 0, 5, 2, 1, 3]]
    scores.to_csv(scores_path(tmp_path / "s.csv"), index=False)
    table = read_scored_submission(tmp_path / "s.csv")
    np.testing.assert_allclose(table["score"], 0.1 + 0.1 * table["id"])
    np.testing.assert_allclose(table["x"], 100.0 + table["id"])


def _one_class(scores_of_truths: list[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    truth = pd.DataFrame({"experiment": "TS_a", "particle_type": "ribosome",
                          "x": [1000.0 * (i + 1) for i in range(len(scores_of_truths))], "y": 500.0, "z": 500.0})
    return truth.assign(score=scores_of_truths), truth


@pytest.mark.parametrize(("weakest", "expected"), [(0.83, 0.5), (0.8, 0.4), (0.61, 0.4)])
def test_on_a_grid_the_margin_rounds_up_never_below_half_the_weakest_kept_truth(weakest, expected):
    """Every truth point found at any threshold up to ``weakest``, no false picks: the F4 curve is flat, the
    lowest grid value wins unless the margin holds it at or above 0.5 × weakest (0.415 → 0.5; 0.4 → 0.4;
    0.305 → 0.4 on a grid of tenths)."""
    candidates, truth = _one_class([weakest, 0.95])
    grid = np.round(np.arange(0.0, 1.0001, 0.1), 10)
    thresholds = tune_thresholds(candidates, truth, ["ribosome"], grid=grid, margin=0.5, bootstrap=0)
    assert thresholds["ribosome"] == pytest.approx(expected)
    assert thresholds["ribosome"] >= 0.5 * weakest and thresholds["ribosome"] <= weakest


# The spec fields documented as score-neutral (czii.predictor module docstring): they change neither the
# probabilities nor the picks of given weights.
SCORE_NEUTRAL = {"members", "thresholds", "tiling.batch_size", "input.nan_policy", "input.spacing_zyx_A"}
CHANGED = {
    "classes": ["apo-ferritin", "ribosome"],
    "input.channels": ["wbp"],
    "input.level": 0,
    "input.clip_percentiles": [1.0, 99.0],
    "tiling.tile_zyx": [32, 64, 64],
    "tiling.overlap": 0.5,
    "tiling.blend": "constant",
    "tta": ["identity", "flip_x"],
    "peaks.method": "cc3d",
    "peaks.nms_radius_factor": 0.3,
    "peaks.min_size_vox": 3,
    "peaks.merge_factor": None,
    "peaks.subvoxel": False,
}


def _fields(obj, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _fields(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def test_the_spec_hash_changes_with_every_field_but_the_documented_score_neutral_ones():
    spec = spec_from_config(load_config(CPU_TINY), [("a.pt", 1.0)])
    keys = _fields(spec)
    assert set(keys) == set(CHANGED) | SCORE_NEUTRAL, "a new spec field: say whether it changes scores"

    def replaced(key: str, value):
        head, _, tail = key.partition(".")
        if not tail:
            return dataclasses.replace(spec, **{head: value})
        return dataclasses.replace(spec, **{head: dataclasses.replace(getattr(spec, head), **{tail: value})})

    for key, value in CHANGED.items():
        head, _, tail = key.partition(".")
        old = getattr(getattr(spec, head), tail) if tail else getattr(spec, head)
        assert value != old, key
        assert spec_hash(replaced(key, value)) != spec.hash, f"{key} does not change the score hash"
    neutral = {"members": [], "thresholds": "t.json", "tiling.batch_size": 7, "input.nan_policy": "repair",
               "input.spacing_zyx_A": [7.0, 7.0, 7.0]}
    assert set(neutral) == SCORE_NEUTRAL
    for key, value in neutral.items():
        assert spec_hash(replaced(key, value)) == spec.hash, key


def test_a_dynamo_table_keeps_its_own_voxel_size_in_a_project_of_another(tmp_path):
    """x = 100 Å at 10 Å voxels is Dynamo column 24 = 100 / 10 + 1 = 11; read into a project at 7 Å voxels
    (or one at 12.5 Å) it is 100 Å again, because the sidecar records 10 Å."""
    picks = pd.DataFrame({"experiment": ["TS_a", "TS_a"], "particle_type": ["ribosome", "thyroglobulin"],
                          "x": [100.0, 250.0], "y": [40.0, 60.0], "z": [20.0, 30.0], "score": [0.9, 0.5]})
    path = tmp_path / "p.tbl"
    write_picks(picks, path, "tbl", {"TS_a": Frame((50, 60, 70), 10.0)})
    rows = np.loadtxt(path, ndmin=2)
    np.testing.assert_allclose(rows[:, 23:26], [[11.0, 5.0, 3.0], [26.0, 7.0, 4.0]])
    assert json.loads(tbl_sidecar(path).read_text())["voxel_size_A"] == {"TS_a": 10.0}
    for other in (7.0, 12.5):
        back = read_picks(path, "tbl", {"TS_a": Frame((50, 60, 70), other)})
        np.testing.assert_allclose(back[["x", "y", "z"]], picks[["x", "y", "z"]])
        assert list(back["particle_type"]) == list(picks["particle_type"])
    doc = json.loads(tbl_sidecar(path).read_text())
    del doc["voxel_size_A"]
    tbl_sidecar(path).write_text(json.dumps(doc))
    back = read_picks(path, "tbl", {"TS_a": Frame((50, 60, 70), 7.0)})  # no record: the project's voxels
    np.testing.assert_allclose(back["x"], [70.0, 175.0])


def _mode0(path, voxels_u8: np.ndarray, stamp_flags: tuple[int, int] | None) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(voxels_u8.view(np.int8))
    if stamp_flags is not None:
        with open(path, "r+b") as fh:
            fh.seek(152)
            fh.write(struct.pack("<ii", *stamp_flags))


def test_mode_0_bytes_are_unsigned_only_where_imod_says_so(tmp_path):
    voxels = np.array([0, 1, 127, 128, 200, 255] * 4, np.uint8).reshape(2, 3, 4)
    as_signed = np.array([0, 1, 127, -128, -56, -1] * 4, np.float32).reshape(2, 3, 4)
    cases = {"imod-unsigned": ((1146047817, 0), voxels.astype(np.float32)),
             "imod-unsigned-other-flags": ((1146047817, 4), voxels.astype(np.float32)),
             "imod-signed": ((1146047817, 1), as_signed),
             "mrc2014": (None, as_signed)}
    for name, (stamp_flags, expected) in cases.items():
        _mode0(tmp_path / f"{name}.mrc", voxels, stamp_flags)
        np.testing.assert_array_equal(read_mrc(tmp_path / f"{name}.mrc"), expected, err_msg=name)
    assert get_particle("ribosome").radius_A == 150.0  # the radius the border tests above rely on


def _two_picks() -> pd.DataFrame:
    return pd.DataFrame({"experiment": ["TS_b", "TS_a"], "particle_type": ["thyroglobulin", "ribosome"],
                         "x": [250.0, 100.0], "y": [60.0, 40.0], "z": [30.0, 20.0], "score": [np.nan, 0.9]})


def test_the_dynamo_table_holds_each_column_dynamo_reads(tmp_path):
    """Columns (1-based) by hand: 1 tag 1..N, 2-3 aligned/averaged 1, 10 cc = score (0 when unknown), 20 tomogram
    index (runs sorted), 22 class (classes sorted), 24-26 x, y, z / voxel + 1; every other column 0."""
    path = tmp_path / "p.tbl"
    write_picks(_two_picks(), path, "tbl", {"TS_a": Frame((50, 60, 70), 10.0), "TS_b": Frame((50, 60, 70), 5.0)})
    rows = np.loadtxt(path, ndmin=2)
    expected = np.zeros((2, 35))
    expected[:, 0] = [1, 2]
    expected[:, 1:3] = 1
    expected[:, 9] = [0.0, 0.9]
    expected[:, 19] = [2, 1]
    expected[:, 21] = [2, 1]
    expected[:, 23:26] = [[51.0, 13.0, 7.0], [11.0, 5.0, 3.0]]
    np.testing.assert_array_equal(rows, expected)
    assert json.loads(tbl_sidecar(path).read_text()) == {
        "format": "dynamo-tbl", "tomograms": {"1": "TS_a", "2": "TS_b"},
        "classes": {"1": "ribosome", "2": "thyroglobulin"}, "voxel_size_A": {"TS_a": 10.0, "TS_b": 5.0}}


def test_the_relion4_star_names_each_pick_s_micrograph_and_pixel_size(tmp_path):
    path = tmp_path / "p.star"
    write_picks(_two_picks(), path, "relion4", {"TS_a": Frame((50, 60, 70), 10.0), "TS_b": Frame((50, 60, 70), 5.0)})
    particles = starfile.read(path, always_dict=True)["particles"]
    assert list(particles["rlnTomoName"]) == ["TS_b", "TS_a"]
    assert list(particles["rlnMicrographName"]) == ["TS_b", "TS_a"]
    np.testing.assert_array_equal(particles["rlnPixelSize"], [5.0, 10.0])
    np.testing.assert_array_equal(particles[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]],
                                  [[50.0, 12.0, 6.0], [10.0, 4.0, 2.0]])
    np.testing.assert_array_equal(particles["rlnClassNumber"], [2, 1])


def test_normalisation_matches_a_float64_reference_and_clips_both_tails():
    """Reference written here: percentiles, mean and std of every second voxel in float64, clipped both ways."""
    rng = np.random.default_rng(0)
    volume = (100.0 + rng.normal(0.0, 1.0, (20, 22, 24))).astype(np.float32)
    volume[0, 0, 0], volume[2, 2, 2], volume[4, 4, 4] = -1e6, 1e6, np.float32(103.0)
    sample = volume[::2, ::2, ::2].astype(np.float64)
    low, high = np.percentile(sample, [0.5, 99.5])
    clipped = np.clip(sample, low, high)
    expected = (np.clip(volume.astype(np.float64), low, high) - clipped.mean()) / clipped.std()
    out = normalize_volume(volume)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=5e-5)
    assert out.min() == pytest.approx(expected.min(), abs=5e-5) and out.min() > -4


def test_mrc_voxels_come_back_as_float32_whatever_the_mode(tmp_path):
    ints = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 12
    with mrcfile.new(tmp_path / "i.mrc") as mrc:
        mrc.set_data(ints)
    back = read_mrc(tmp_path / "i.mrc")
    assert back.dtype == np.float32 and np.array_equal(back, ints.astype(np.float32))
    write_mrc(tmp_path / "f.mrc", ints.astype(np.float64) / 7, 7.84)
    with mrcfile.open(tmp_path / "f.mrc") as mrc:
        assert int(mrc.header.mode) == 2 and mrc.voxel_size.x == pytest.approx(7.84)
    np.testing.assert_array_equal(read_mrc(tmp_path / "f.mrc"), (ints / 7).astype(np.float32))


def test_the_spec_hash_is_12_hex_digits_of_canonical_json_whatever_the_key_order():
    spec = spec_from_config(load_config(CPU_TINY), [("a.pt", 1.0)])
    doc = recipe(spec)
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(doc.items())}
    assert list(reordered) != list(doc)
    assert spec_hash(reordered) == spec_hash(doc) == spec.hash
    assert len(spec.hash) == 12 and int(spec.hash, 16) >= 0


def test_a_recorded_hash_that_no_longer_matches_its_recipe_is_refused(tmp_path):
    spec = spec_from_config(load_config(CPU_TINY), [("a.pt", 1.0)])
    thresholds = {"thresholds": {"ribosome": 0.4}, "spec_hash": spec.hash, "spec": recipe(spec)}
    (tmp_path / "t.json").write_text(json.dumps(thresholds))
    assert load_thresholds_doc(tmp_path / "t.json")["spec_hash"] == spec.hash
    (tmp_path / "spec.json").write_text(json.dumps({"spec_hash": spec.hash, "spec": recipe(spec)}))
    assert read_oof_spec(tmp_path / "spec.json")["spec_hash"] == spec.hash
    thresholds["spec"]["tiling"]["overlap"] = 0.5
    (tmp_path / "t.json").write_text(json.dumps(thresholds))
    with pytest.raises(ConfigError, match=f"t.json: records predictor spec hash {spec.hash}"):
        load_thresholds_doc(tmp_path / "t.json")
    edited = {"spec_hash": spec.hash, "spec": {**recipe(spec), "tta": ["identity"]}}
    (tmp_path / "spec.json").write_text(json.dumps(edited))
    with pytest.raises(DataError, match=f"spec.json: records predictor spec hash {spec.hash}"):
        read_oof_spec(tmp_path / "spec.json")
    (tmp_path / "hand.json").write_text(json.dumps({"thresholds": {"ribosome": 0.4}}))  # hand-written: no record
    assert load_thresholds_doc(tmp_path / "hand.json")["thresholds"] == {"ribosome": 0.4}


BAD_SPEC_VALUES = [
    ("members", []), ("members.weight", 0.0), ("members.weight", float("nan")), ("classes", []),
    ("classes", ["ribosome", "ribosome"]), ("classes", ["ribosome", ""]), ("input.channels", []),
    ("input.nan_policy", "ignore"), ("input.level", -1), ("input.spacing_zyx_A", [10.0, 10.0]),
    ("input.spacing_zyx_A", [10.0, 0.0, 10.0]), ("input.spacing_zyx_A", [10.0, float("inf"), 10.0]),
    ("input.clip_percentiles", [50.0, 50.0]), ("input.clip_percentiles", [-1.0, 99.0]),
    ("input.clip_percentiles", [0.5, 100.5]), ("input.clip_percentiles", [1.0]), ("tiling.tile_zyx", [0, 64, 64]),
    ("tiling.tile_zyx", [64, 64]), ("tiling.overlap", 1.0), ("tiling.overlap", -0.1), ("tiling.blend", "median"),
    ("tiling.batch_size", 0), ("tta", ["upside_down"]), ("peaks.method", "watershed"),
    ("peaks.nms_radius_factor", 0.0), ("peaks.min_size_vox", -1), ("peaks.merge_factor", 0.0),
]
GOOD_EDGE_VALUES = [
    ("members.weight", 1e-6), ("input.level", 0), ("input.spacing_zyx_A", None),
    ("input.spacing_zyx_A", [0.5, 0.5, 0.5]), ("input.clip_percentiles", [0.0, 100.0]), ("tiling.tile_zyx", [1, 1, 1]),
    ("tiling.overlap", 0.0), ("tiling.batch_size", 1), ("peaks.nms_radius_factor", 1e-3), ("peaks.min_size_vox", 0),
    ("peaks.merge_factor", None), ("input.nan_policy", "repair"),
]


def _with(spec, key: str, value):
    head, _, tail = key.partition(".")
    if head == "members" and tail:
        return dataclasses.replace(spec, members=[dataclasses.replace(spec.members[0], **{tail: value})])
    if not tail:
        return dataclasses.replace(spec, **{head: value})
    return dataclasses.replace(spec, **{head: dataclasses.replace(getattr(spec, head), **{tail: value})})


@pytest.mark.parametrize(("key", "value"), BAD_SPEC_VALUES)
def test_a_spec_value_no_predictor_can_use_is_refused_naming_its_key(key, value):
    spec = spec_from_config(load_config(CPU_TINY), [("a.pt", 1.0)])
    with pytest.raises(ConfigError, match=re.escape(f"here: {key.replace('.weight', '[0].weight')}")):
        check_spec(_with(spec, key, value), "here")


@pytest.mark.parametrize(("key", "value"), GOOD_EDGE_VALUES)
def test_the_edge_of_every_valid_range_is_accepted(key, value):
    spec = spec_from_config(load_config(CPU_TINY), [("a.pt", 1.0)])
    assert check_spec(_with(spec, key, value), "here") is not None


def test_a_config_voxel_size_and_thresholds_file_reach_the_spec():
    spec = spec_from_config(load_config(CPU_TINY, ["data.spacing_A=12.5"]), [("fold0/best.pt", 2.0)], "thr.json")
    assert spec.input.spacing_zyx_A == [12.5, 12.5, 12.5]
    assert spec.thresholds == "thr.json"
    assert [(m.checkpoint, m.weight) for m in spec.members] == [("fold0/best.pt", 2.0)]
    assert spec_from_config(load_config(CPU_TINY), [("a.pt", 1.0)]).thresholds is None
