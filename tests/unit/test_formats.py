"""File formats: MRC/OME-Zarr tomogram checks, resampling geometry, STAR / .tbl / CSV round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import zarr

from czii.cli import main
from czii.errors import DataError
from czii.formats.exports import FORMATS, Frame, read_picks, write_picks
from czii.formats.mrc import read_mrc_header, write_mrc
from czii.formats.omezarr import write_ome_zarr
from czii.formats.tomogram import find_tomograms, is_tomogram_source
from czii.geometry import resample_zyx, xyz_A_to_zyx_vox
from czii.postprocess.peaks import detect_peaks

FRAMES = {"TS_a": Frame((40, 100, 120), 7.84), "TS_b": Frame((30, 80, 80), 13.48, (5.0, 0.0, 0.0))}


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for run, frame in FRAMES.items():
        upper = np.asarray(frame.shape_zyx[::-1]) * frame.spacing_A
        for particle in ("ribosome", "apo-ferritin", "my-complex"):
            for xyz in rng.uniform(0, upper, (4, 3)):
                rows.append({"experiment": run, "particle_type": particle, "x": xyz[0], "y": xyz[1], "z": xyz[2],
                             "score": float(rng.uniform(0.05, 1))})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_import_round_trip_keeps_picks_and_scores(fmt, tmp_path):
    table = _table()
    written = write_picks(table, tmp_path / f"picks.{fmt}", fmt, FRAMES)
    assert all(p.is_file() for p in written)
    back = read_picks(written[0], fmt, FRAMES)
    key = ["experiment", "particle_type", "score"]
    a = table.sort_values(key).reset_index(drop=True)
    b = back.sort_values(key).reset_index(drop=True)
    assert list(a["particle_type"]) == list(b["particle_type"]) and list(a["experiment"]) == list(b["experiment"])
    np.testing.assert_allclose(b[["x", "y", "z"]], a[["x", "y", "z"]], atol=1e-3)
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-5)


def test_relion5_star_centred_coordinates_match_a_hand_computed_example(tmp_path):
    frame = {"TS_1": Frame((184, 630, 630), 10.0)}
    table = pd.DataFrame([{"experiment": "TS_1", "particle_type": "ribosome", "x": 100.0, "y": 3150.0, "z": 920.0,
                           "score": 0.5}])
    write_picks(table, tmp_path / "p.star", "star", frame)
    particles = starfile.read(tmp_path / "p.star", always_dict=True)["particles"]
    # RELION 5: Å from the centre, N/2 voxels from the first voxel centre: 100 − 630·10/2, 3150 − 3150, 920 − 920
    row = particles.iloc[0]
    assert (row.rlnCenteredCoordinateXAngst, row.rlnCenteredCoordinateYAngst, row.rlnCenteredCoordinateZAngst) == \
        pytest.approx((-3050.0, 0.0, 0.0))
    assert row.rlnTomoName == "TS_1" and row.rlnAutopickFigureOfMerit == pytest.approx(0.5)
    write_picks(table, tmp_path / "p4.star", "relion4", frame)
    r4 = starfile.read(tmp_path / "p4.star", always_dict=True)["particles"].iloc[0]
    assert (r4.rlnCoordinateX, r4.rlnCoordinateY, r4.rlnCoordinateZ, r4.rlnPixelSize) == (10.0, 315.0, 92.0, 10.0)
    write_picks(table, tmp_path / "p.tbl", "tbl", frame)
    tbl = np.loadtxt(tmp_path / "p.tbl", ndmin=2)
    assert tbl.shape == (1, 35) and tuple(tbl[0, 23:26]) == (11.0, 316.0, 93.0) and tbl[0, 9] == 0.5


def test_foreign_star_without_class_names_needs_a_particle(tmp_path):
    star = tmp_path / "relion.star"
    starfile.write({"particles": pd.DataFrame({"rlnTomoName": ["TS_a"], "rlnCoordinateX": [10.0],
                                               "rlnCoordinateY": [20.0], "rlnCoordinateZ": [5.0]})}, star)
    with pytest.raises(DataError, match="--particle"):
        read_picks(star, "relion4", FRAMES, voxel_size_A=7.84)
    back = read_picks(star, "relion4", FRAMES, particle="ribosome", voxel_size_A=7.84)
    assert back.iloc[0][["x", "y", "z"]].tolist() == pytest.approx([78.4, 156.8, 39.2])
    assert np.isnan(back.iloc[0]["score"])


def test_tomogram_headers_are_checked_before_reading(tmp_path):
    volume = np.zeros((8, 16, 16), np.float32)
    write_mrc(tmp_path / "good.mrc", volume, 7.84)
    assert read_mrc_header(tmp_path / "good.mrc").voxel_size_zyx_A == pytest.approx((7.84,) * 3)
    (found,) = find_tomograms(tmp_path / "good.mrc")
    assert (found.run, found.spacing_zyx_A, found.spacing_source) == ("good", pytest.approx((7.84,) * 3), "header")
    for size in (0.0, 1.0):
        write_mrc(tmp_path / "unset.rec", volume, size)
        with pytest.raises(DataError, match=r"unset.rec.*looks unset.*--voxel-size"):
            find_tomograms(tmp_path / "unset.rec")
    override = find_tomograms(tmp_path / "unset.rec", voxel_size_A=13.48)[0]
    assert override.spacing_zyx_A == (13.48,) * 3 and override.spacing_source == "--voxel-size"
    import mrcfile

    with mrcfile.new(tmp_path / "aniso.mrc") as mrc:
        mrc.set_data(volume)
        mrc.voxel_size = (10.0, 10.0, 20.0)
    with pytest.raises(DataError, match="aniso.mrc: anisotropic"):
        find_tomograms(tmp_path / "aniso.mrc")
    write_mrc(tmp_path / "flat.mrc", np.zeros((1, 16, 16), np.float32), 10.0)
    with pytest.raises(DataError, match="flat.mrc: expected a 3-D"):
        find_tomograms(tmp_path / "flat.mrc")
    with pytest.raises(DataError, match="no tomograms found"):
        find_tomograms(tmp_path / "*.nothing")
    assert is_tomogram_source(tmp_path) and is_tomogram_source(str(tmp_path / "*.mrc"))


def test_bare_omezarr_spacing_and_translation_are_read(tmp_path):
    store = tmp_path / "TS_z.zarr"
    write_ome_zarr(store, np.zeros((16, 32, 32), np.float32), 13.48)
    doc = json.loads((store / ".zattrs").read_text())
    doc["multiscales"][0]["datasets"][0]["coordinateTransformations"].append(
        {"type": "translation", "translation": [0.0, 10.0, 20.0]})
    (store / ".zattrs").write_text(json.dumps(doc))
    (found,) = find_tomograms(store)
    assert found.run == "TS_z" and found.spacing_zyx_A == pytest.approx((13.48,) * 3)
    assert found.translation_zyx_A == (0.0, 10.0, 20.0) and found.format == "ome-zarr"
    assert found.read().shape == (16, 32, 32)


@pytest.mark.parametrize("target_A", [7.84, 13.48, 20.0])
def test_resampling_keeps_a_particle_at_its_angstrom_position(target_A):
    """A Gaussian blob resampled from 10 Å to another voxel size peaks at the same Å (within 0.25 × radius)."""
    source_A, radius_A = 10.0, 60.0
    centre_xyz_A = np.array([333.0, 411.0, 207.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) * source_A for n in (48, 80, 72)], indexing="ij"), -1)
    d2 = ((grid - centre_xyz_A[::-1]) ** 2).sum(-1)
    volume = np.exp(-d2 / (2 * (0.4 * radius_A) ** 2)).astype(np.float32)
    resampled = resample_zyx(volume, source_A, target_A)
    assert resampled.shape == tuple(int(np.floor((n - 1) * source_A / target_A + 1e-9)) + 1 for n in volume.shape)
    picks = detect_peaks(resampled[None], ["apo-ferritin"], (target_A,) * 3, thresholds=0.3, run="r")
    assert len(picks) == 1
    error = np.linalg.norm(picks[["x", "y", "z"]].to_numpy()[0] - centre_xyz_A)
    assert error < 0.25 * radius_A, error
    assert np.allclose(xyz_A_to_zyx_vox(centre_xyz_A, target_A) * target_A, centre_xyz_A[::-1])


def test_cli_export_and_import_name_their_problems(tmp_path, capsys):
    csv = tmp_path / "sub.csv"
    csv.write_text("id,experiment,particle_type,x,y,z\n0,TS_a,ribosome,1,2,3\n")
    assert main(["export", "--submission", str(csv), "--format", "star", "--out", str(tmp_path / "o.star")]) == 2
    assert "no manifest" in capsys.readouterr().err and not (tmp_path / "o.star").exists()
    assert main(["import", "--picks", str(tmp_path / "none.star"), "--format", "star", "--into",
                 str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err


def test_written_ome_zarr_metadata_is_the_competition_s_own(tmp_path):
    """The .zattrs of a store written at the real spacing equals the real one (tests/fixtures), every level's
    .zarray holds the real chunks, codec, dtype, fill value and separator, sides halve rounding up, and level 1
    voxel i sits on level-0 voxel 2i (a linear ramp survives the anti-aliasing away from the borders)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "czii_reference"
    real_zattrs = json.loads((fixtures / "denoised_zattrs.json").read_text())
    real_zarray = json.loads((fixtures / "denoised_level2_zarray.json").read_text())
    spacing = real_zattrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    z, y, x = np.meshgrid(np.arange(23), np.arange(21), np.arange(40), indexing="ij")
    volume = (0.5 * x + 0.25 * y + 0.125 * z).astype(np.float32)
    store = tmp_path / "denoised.zarr"
    write_ome_zarr(store, volume, spacing)
    assert json.loads((store / ".zattrs").read_text()) == real_zattrs
    for level, shape in enumerate([(23, 21, 40), (12, 11, 20), (6, 6, 10)]):
        zarray = json.loads((store / str(level) / ".zarray").read_text())
        assert zarray == {**real_zarray, "shape": list(shape)}, level
    level1 = zarr.open_array(zarr.DirectoryStore(str(store / "1"), dimension_separator="/"), mode="r")[...]
    np.testing.assert_allclose(level1[3:-3, 3:-3, 3:-3], volume[6:-6:2, 6:-6:2, 6:-6:2][:level1.shape[0] - 6,
                               :level1.shape[1] - 6, :level1.shape[2] - 6], atol=1e-4)
