"""detect_peaks on tiny planted probability volumes: positions in Å, kernels, plateaus, thresholds, cc3d."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from czii.errors import ConfigError, CziiError, DataError
from czii.picks import CANDIDATE_COLUMNS
from czii.postprocess.peaks import detect_peaks

SPACING_ZYX_A = (10.012444, 9.5, 11.25)  # distinct per axis so a swapped axis shows


def _blob(shape_zyx, center_zyx, sigma_vox: float, amplitude: float) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_zyx), indexing="ij")
    d2 = (z - center_zyx[0]) ** 2 + (y - center_zyx[1]) ** 2 + (x - center_zyx[2]) ** 2
    return amplitude * np.exp(-d2 / (2 * sigma_vox**2))


def _xyz_A(zyx_vox, spacing_zyx_A=SPACING_ZYX_A) -> np.ndarray:
    z, y, x = zyx_vox
    sz, sy, sx = spacing_zyx_A
    return np.array([x * sx, y * sy, z * sz])


def test_maxpool_finds_planted_blobs_at_their_angstrom_positions():
    shape = (20, 28, 36)
    classes = ["apo-ferritin", "ribosome", "thyroglobulin"]
    planted = {
        "apo-ferritin": ((5, 9, 27), 0.9),
        "ribosome": ((14, 20, 8), 0.7),
        "thyroglobulin": ((10, 4, 20.5), 0.6),  # half-voxel centre: a two-voxel plateau along x
    }
    probs = np.stack([_blob(shape, planted[c][0], 1.2, planted[c][1]) for c in classes]).astype(np.float32)

    picks = detect_peaks(probs, classes, SPACING_ZYX_A, thresholds=0.3, run="TS_1")

    assert list(picks.columns) == list(CANDIDATE_COLUMNS)
    assert (picks["experiment"] == "TS_1").all()
    assert picks["particle_type"].tolist() == classes
    for name in classes:
        row = picks[picks["particle_type"] == name].iloc[0]
        center_zyx, amplitude = planted[name]
        np.testing.assert_allclose(row[["x", "y", "z"]].to_numpy(float), _xyz_A(center_zyx), atol=1e-6)
        expected_peak = amplitude * (np.exp(-0.25 / (2 * 1.2**2)) if name == "thyroglobulin" else 1.0)
        assert row["score"] == pytest.approx(expected_peak, rel=1e-6)


def test_subvoxel_refinement_moves_a_peak_to_its_off_grid_centre():
    shape = (20, 28, 36)
    centres = [(5.3, 9.0, 27.45), (14.0, 20.8, 8.2)]  # off the voxel grid by up to 0.45 voxel
    probs = np.maximum(*(_blob(shape, c, 1.2, a) for c, a in zip(centres, (0.9, 0.7))))[None].astype(np.float32)
    probs[0, 0, 0, 0] = 0.95  # a peak in the corner: no neighbours on the low side, left where it is
    kwargs = dict(thresholds=0.3, run="TS_1", merge_factor=None)
    rounded = detect_peaks(probs, ["ribosome"], SPACING_ZYX_A, **kwargs)
    refined = detect_peaks(probs, ["ribosome"], SPACING_ZYX_A, subvoxel=True, **kwargs)
    assert len(refined) == len(rounded) == 3
    np.testing.assert_array_equal(refined["score"], rounded["score"])  # scores (and so tuning) are unchanged
    xyz = refined[["x", "y", "z"]].to_numpy(float)
    np.testing.assert_allclose(xyz[0], [0, 0, 0], atol=1e-9)
    for i, centre in enumerate(centres, start=1):
        error_A = np.abs(xyz[i] - _xyz_A(centre))
        assert np.all(error_A < 0.1 * np.array(SPACING_ZYX_A)[::-1]), (centre, error_A)
        assert np.abs(rounded[["x", "y", "z"]].to_numpy(float)[i] - _xyz_A(centre)).max() > 2.0  # rounding was off


def test_close_blobs_of_a_small_class_merge_or_resolve_with_the_kernel():
    # apo-ferritin radius 60 Å at 10.012444 Å/voxel: nms_radius_factor 0.5 → half-width 3 voxels
    shape = (16, 16, 32)
    spacing = 10.012444

    def picks_for(gap_vox: int, factor: float):
        p = _blob(shape, (8, 8, 10), 0.7, 0.9) + _blob(shape, (8, 8, 10 + gap_vox), 0.7, 0.6)
        return detect_peaks(p[None].astype(np.float32), ["apo-ferritin"], spacing, thresholds=0.2, run="r",
                            nms_radius_factor=factor)

    merged = picks_for(3, 0.5)
    assert len(merged) == 1 and merged["x"].iat[0] == pytest.approx(10 * spacing)
    resolved = picks_for(4, 0.5)
    assert sorted(resolved["x"] / spacing) == pytest.approx([10, 14])
    assert len(picks_for(3, 0.2)) == 2  # half-width 1 voxel resolves the same pair


def test_flat_plateau_gives_one_peak_at_its_centre():
    p = np.zeros((1, 16, 20, 24), dtype=np.float32)
    p[0, 3:7, 10:13, 5:10] = 0.8  # 4 × 3 × 5 voxels of equal value, wider than the kernel
    picks = detect_peaks(p, ["ribosome"], SPACING_ZYX_A, thresholds=0.5, run="r", nms_radius_factor=0.1)
    assert len(picks) == 1
    np.testing.assert_allclose(picks[["x", "y", "z"]].to_numpy()[0], _xyz_A((4.5, 11.0, 7.0)), atol=1e-9)
    assert picks["score"].iat[0] == pytest.approx(0.8)


def _smooth_field(seed: int, shape=(24, 32, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.random(shape), 1.5)
    return ((f - f.min()) / (f.max() - f.min())).astype(np.float32)


def test_thresholds_are_respected_and_filtering_equals_a_higher_threshold():
    classes = ["apo-ferritin", "beta-galactosidase"]
    probs = np.stack([_smooth_field(0), _smooth_field(1)])
    thr = {"apo-ferritin": 0.78, "beta-galactosidase": 0.83}
    high = detect_peaks(probs, classes, SPACING_ZYX_A, thresholds=thr, run="r", merge_factor=0.8)
    low = detect_peaks(probs, classes, SPACING_ZYX_A, thresholds=0.05, run="r", merge_factor=0.8)
    assert 10 < len(high) < len(low) - 20
    assert (high["score"] >= high["particle_type"].map(thr)).all()
    filtered = low[low["score"] >= low["particle_type"].map(thr)].reset_index(drop=True)
    np.testing.assert_allclose(filtered[["x", "y", "z", "score"]].to_numpy(), high[["x", "y", "z", "score"]].to_numpy())

    p = (_blob((12, 12, 12), (6, 6, 6), 1.0, 0.5)[None]).astype(np.float32)  # peak exactly 0.5
    assert len(detect_peaks(p, ["ribosome"], 10.0, thresholds=0.5, run="r")) == 1
    assert len(detect_peaks(p, ["ribosome"], 10.0, thresholds=0.5000001, run="r")) == 0


def test_cc3d_weighted_centroid_max_score_and_min_size():
    p = np.zeros((1, 20, 24, 30), dtype=np.float32)
    component = {(5, 6, 10): 0.4, (5, 6, 11): 0.8, (5, 7, 12): 0.6, (6, 8, 13): 0.2}  # edge- and corner-connected
    for zyx, v in component.items():
        p[(0, *zyx)] = v
    p[0, 15, 20, 25:27] = 0.9  # a two-voxel component
    w = np.array(list(component.values()), dtype=np.float32).astype(np.float64)
    centroid_zyx = (np.array(list(component.keys())) * w[:, None]).sum(0) / w.sum()

    both = detect_peaks(p, ["beta-galactosidase"], SPACING_ZYX_A, thresholds=0.1, run="r", method="cc3d")
    assert len(both) == 2
    big = detect_peaks(p, ["beta-galactosidase"], SPACING_ZYX_A, thresholds=0.1, run="r", method="cc3d",
                       min_size_vox={"beta-galactosidase": 3})
    assert len(big) == 1
    np.testing.assert_allclose(big[["x", "y", "z"]].to_numpy()[0], _xyz_A(centroid_zyx), atol=1e-9)
    assert big["score"].iat[0] == pytest.approx(0.8)
    small = both[both["score"] > 0.85]
    np.testing.assert_allclose(small[["x", "y", "z"]].to_numpy()[0], _xyz_A((15, 20, 25.5)), atol=1e-9)
    # at 0.5 the first component shrinks to its 0.8 and 0.6 voxels: both components are under 3 voxels
    split = detect_peaks(p, ["beta-galactosidase"], SPACING_ZYX_A, thresholds=0.5, run="r", method="cc3d",
                         min_size_vox=3)
    assert len(split) == 0


def test_merge_factor_keeps_the_highest_scoring_pick():
    shape = (16, 16, 40)
    p = _blob(shape, (8, 8, 10), 1.0, 0.9) + _blob(shape, (8, 8, 16), 1.0, 0.7)  # 6 voxels = 60 Å apart
    probs = p[None].astype(np.float32)
    kw = dict(thresholds=0.3, run="r", nms_radius_factor=0.2)
    assert len(detect_peaks(probs, ["ribosome"], 10.0, **kw)) == 2
    assert len(detect_peaks(probs, ["ribosome"], 10.0, merge_factor=0.3, **kw)) == 2  # 45 Å
    merged = detect_peaks(probs, ["ribosome"], 10.0, merge_factor=0.5, **kw)  # 75 Å
    assert len(merged) == 1 and merged["x"].iat[0] == pytest.approx(100.0)
    assert merged["score"].iat[0] == pytest.approx(0.9, rel=1e-3)


def test_empty_result_has_the_pick_columns():
    picks = detect_peaks(np.zeros((2, 8, 8, 8), np.float32), ["apo-ferritin", "ribosome"], 10.0, thresholds=0.1,
                         run="r")
    assert len(picks) == 0 and list(picks.columns) == list(CANDIDATE_COLUMNS)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(probs=np.zeros((3, 8, 8, 8), np.float32)), DataError, "C = 2 channels"),
        (dict(classes=["apo-ferritin", "ribosomes"]), ConfigError, "unknown class names"),
        (dict(thresholds={"apo-ferritin": 0.2}), ConfigError, r"no value for \['ribosome'\]"),
        (dict(thresholds=1.5), ConfigError, r"must be a number in \[0, 1\]"),
        (dict(method="watershed"), ConfigError, "unknown peak method"),
        (dict(nan=True), DataError, "NaN"),
        (dict(probs=np.full((2, 8, 8, 8), 1.5, np.float32)), DataError, r"in \[0, 1\]"),
    ],
)
def test_bad_input_raises_a_clear_error(change, error, match):
    kwargs = dict(probs=np.zeros((2, 8, 8, 8), np.float32), classes=["apo-ferritin", "ribosome"], thresholds=0.2)
    change = dict(change)
    nan = change.pop("nan", False)
    kwargs.update(change)
    if nan:
        kwargs["probs"][1, 2, 3, 4] = np.nan
    with pytest.raises(error, match=match) as info:
        detect_peaks(kwargs["probs"], kwargs["classes"], 10.0, thresholds=kwargs["thresholds"], run="TS_9",
                     method=kwargs.get("method", "maxpool"))
    assert isinstance(info.value, CziiError)
