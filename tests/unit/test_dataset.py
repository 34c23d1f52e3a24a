"""czii.data.open_dataset on real copick projects and Kaggle layouts built in tmp_path.

Tomograms are tiny OME-Zarr stores written with czii.formats.omezarr; picks are the real TS_5_4
files from tests/fixtures and the real train_picks.csv rows of TS_69_2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import copick
import numpy as np
import pandas as pd
import pytest

from czii.simulate import DEFAULT_REAL_PICKS_CSV
from czii.data import Dataset, Volume, open_dataset
from czii.formats.omezarr import downsample2, read_ome_zarr, write_ome_zarr
from czii.formats.picks_json import picks_document, read_picks_json, write_picks_json
from czii.errors import ConfigError, DataError
from czii.particles import PARTICLE_NAMES

PICKS_DIR = Path(__file__).parents[1] / "fixtures" / "czii_reference" / "picks_TS_5_4"
TRAIN_PICKS_CSV = Path(DEFAULT_REAL_PICKS_CSV)
SHAPE_ZYX = (16, 48, 48)
SPACING_A = 10.012444
COLUMNS = ["experiment", "particle_type", "x", "y", "z"]


def _tomo(path: Path, seed: int, spacing=SPACING_A, shape=SHAPE_ZYX) -> np.ndarray:
    data = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    write_ome_zarr(path, data, spacing)
    return data


def _csv_rows(run: str) -> pd.DataFrame:
    df = pd.read_csv(TRAIN_PICKS_CSV)
    return df[df["experiment"] == run]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df[COLUMNS].sort_values(COLUMNS).reset_index(drop=True)


def _one_pick(run: str, particle_type: str = "ribosome") -> pd.DataFrame:
    return pd.DataFrame({"experiment": [run], "particle_type": [particle_type], "x": [1.0], "y": [2.0], "z": [3.0]})


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def kaggle_template(tmp_path_factory) -> tuple[Path, dict]:
    """A Kaggle download: train TS_5_4 (real picks files) + TS_69_2 (csv picks); test TS_5_4 + TS_6_4."""
    comp = tmp_path_factory.mktemp("template") / "czii-cryo-et-object-identification"
    arrays = {}
    split_runs = [("train", "TS_5_4"), ("train", "TS_69_2"), ("test", "TS_5_4"), ("test", "TS_6_4")]
    for seed, (split, run) in enumerate(split_runs):
        vs = comp / split / "static" / "ExperimentRuns" / run / "VoxelSpacing10.000"
        arrays[split, run] = _tomo(vs / "denoised.zarr", seed=seed)
    _tomo(comp / "train/static/ExperimentRuns/TS_5_4/VoxelSpacing10.000/wbp.zarr", seed=7)
    picks = comp / "train" / "overlay" / "ExperimentRuns"
    for f in PICKS_DIR.glob("*.json"):
        (picks / "TS_5_4" / "Picks").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, picks / "TS_5_4" / "Picks" / f.name)
    for ptype, rows in _csv_rows("TS_69_2").groupby("particle_type"):
        doc = picks_document(ptype, "TS_69_2", rows[["x", "y", "z"]].to_numpy())
        write_picks_json(picks / "TS_69_2" / "Picks" / f"{ptype}.json", doc)
    return comp, arrays


@pytest.fixture
def kaggle(kaggle_template, tmp_path) -> dict:
    """A private copy of the Kaggle template (tests may damage it), its arrays and a workdir."""
    comp = tmp_path / kaggle_template[0].name
    shutil.copytree(kaggle_template[0], comp)
    return {"root": comp, "arrays": kaggle_template[1], "work": tmp_path / "work"}


def _copick_project(tmp_path: Path, objects: dict[str, list], tomo_type="wbp", runs=("TS_1",)) -> tuple[Path, dict]:
    """A filesystem copick project: ``objects`` object name → xyz rows (same for each run)."""
    arrays = {}
    for i, run in enumerate(runs):
        arrays[run] = _tomo(
            tmp_path / "proj/static/ExperimentRuns" / run / "VoxelSpacing10.012" / f"{tomo_type}.zarr", seed=40 + i
        )
        for name, xyz in objects.items():
            doc = picks_document(name, run, np.asarray(xyz, dtype=float))
            write_picks_json(tmp_path / "proj/overlay/ExperimentRuns" / run / "Picks" / f"curation_0_{name}.json", doc)
    config = {
        "config_type": "filesystem",
        "name": "test project",
        "pickable_objects": [
            {"name": name, "is_particle": True, "label": i + 1} for i, name in enumerate(objects)
        ],
        "overlay_root": f"local://{tmp_path / 'proj/overlay'}",
        "static_root": f"local://{tmp_path / 'proj/static'}",
    }
    path = tmp_path / "proj" / "copick_config.json"
    path.write_text(json.dumps(config))
    return path, arrays


# --- Kaggle layout ---------------------------------------------------------------------------


def test_kaggle_train_split_reads_runs_types_and_denoised_volume(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    assert isinstance(ds, Dataset) and ds.split == "train" and ds.tomo_type == "denoised"
    assert ds.runs() == ["TS_5_4", "TS_69_2"]
    assert ds.tomogram_types("TS_5_4") == ["denoised", "wbp"]
    assert ds.tomogram_types("TS_69_2") == ["denoised"]
    vol = ds.tomogram("TS_69_2")
    assert isinstance(vol, Volume)
    with pytest.raises(dataclasses.FrozenInstanceError):
        vol.level = 1
    assert (vol.run, vol.tomo_type, vol.level) == ("TS_69_2", "denoised", 0)
    assert vol.data.dtype == np.float32 and vol.data.shape == SHAPE_ZYX
    np.testing.assert_array_equal(vol.data, kaggle["arrays"]["train", "TS_69_2"])
    wbp = ds.tomogram("TS_5_4", "wbp")
    assert wbp.tomo_type == "wbp" and not np.array_equal(wbp.data, kaggle["arrays"]["train", "TS_5_4"])


def test_kaggle_test_split_reads_its_own_runs_and_has_no_picks(kaggle):
    ds = open_dataset(kaggle["root"], split="test", workdir=kaggle["work"])
    assert ds.split == "test" and ds.runs() == ["TS_5_4", "TS_6_4"]
    # TS_5_4 exists in both splits: the test split must read the test volume
    np.testing.assert_array_equal(ds.tomogram("TS_5_4").data, kaggle["arrays"]["test", "TS_5_4"])
    assert not np.array_equal(kaggle["arrays"]["test", "TS_5_4"], kaggle["arrays"]["train", "TS_5_4"])
    picks = ds.picks()
    assert list(picks.columns) == COLUMNS and len(picks) == 0


def test_split_folder_opens_like_the_competition_dir(kaggle):
    via_root = open_dataset(kaggle["root"], split="test", workdir=kaggle["work"])
    via_folder = open_dataset(kaggle["root"] / "test", workdir=kaggle["work"])
    assert via_folder.split == "test" and via_folder.runs() == via_root.runs()
    train = open_dataset(kaggle["root"] / "train", workdir=kaggle["work"])
    pd.testing.assert_frame_equal(train.picks(), open_dataset(kaggle["root"], workdir=kaggle["work"]).picks())
    with pytest.raises(DataError, match="split folder 'test'"):
        open_dataset(kaggle["root"] / "test", split="train", workdir=kaggle["work"])


def test_truth_picks_equal_the_json_files_and_train_csv(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    df = ds.picks()
    assert list(df.columns) == COLUMNS
    assert set(df["particle_type"]) == set(PARTICLE_NAMES)
    for f in PICKS_DIR.glob("*.json"):
        name, xyz = read_picks_json(f)
        got = df[(df["experiment"] == "TS_5_4") & (df["particle_type"] == name)][["x", "y", "z"]].to_numpy()
        np.testing.assert_array_equal(got, xyz[np.lexsort(xyz.T[::-1])])
    expected = pd.concat([_csv_rows("TS_5_4"), _csv_rows("TS_69_2")])
    pd.testing.assert_frame_equal(_sorted(df), _sorted(expected), check_exact=True)


def test_picks_are_sorted_and_filtered_by_run(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    df = ds.picks()
    pd.testing.assert_frame_equal(df, df.sort_values(COLUMNS).reset_index(drop=True))
    only = ds.picks(runs=["TS_69_2"])
    assert set(only["experiment"]) == {"TS_69_2"} and len(only) == len(_csv_rows("TS_69_2"))
    with pytest.raises(DataError, match="unknown run 'TS_0'.*TS_5_4, TS_69_2"):
        ds.picks(runs=["TS_0"])


def test_input_tree_is_unchanged_by_reading_and_writing(kaggle, tmp_path, monkeypatch):
    monkeypatch.setenv("CZII_CACHE", str(tmp_path / "cache"))
    before = _tree_digest(kaggle["root"])
    for split in ("train", "test"):
        ds = open_dataset(kaggle["root"], split=split)
        for run in ds.runs():
            ds.tomogram(run)
            ds.tomogram_shape(run, level=2)
        truth = ds.picks()
        ds.write_picks(_one_pick(ds.runs()[0]) if truth.empty else truth)
        assert ds.config_path.is_relative_to(tmp_path / "cache")
        assert len(ds.picks(user_id="czii")) == (1 if truth.empty else len(truth))
    assert _tree_digest(kaggle["root"]) == before


def test_default_workdir_is_keyed_by_the_input_path(kaggle, tmp_path, monkeypatch):
    monkeypatch.setenv("CZII_CACHE", str(tmp_path / "cache"))
    first = open_dataset(kaggle["root"]).config_path
    assert open_dataset(kaggle["root"]).config_path == first
    assert open_dataset(kaggle["root"] / "train").config_path == first
    assert open_dataset(kaggle["root"], split="test").config_path != first
    other = tmp_path / "copy" / kaggle["root"].name
    shutil.copytree(kaggle["root"], other)
    assert open_dataset(other).config_path.parent != first.parent
    staged = sorted(p.name for p in first.parent.glob("overlay/ExperimentRuns/TS_5_4/Picks/*.json"))
    assert staged == sorted(f"curation_0_{f.name}" for f in PICKS_DIR.glob("*.json"))


def test_staging_drops_truth_files_whose_source_is_gone(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    ds.write_picks(_one_pick("TS_5_4"))
    (kaggle["root"] / "train/overlay/ExperimentRuns/TS_5_4/Picks/ribosome.json").unlink()
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    assert "ribosome" not in set(ds.picks(runs=["TS_5_4"])["particle_type"])
    assert len(ds.picks(user_id="czii")) == 1  # written predictions survive re-staging


def test_spacing_comes_from_zattrs_not_the_folder_name(kaggle):
    spacing = (12.5, 11.25, 10.75)
    _tomo(kaggle["root"] / "train/static/ExperimentRuns/TS_69_2/VoxelSpacing10.000/odd.zarr", seed=3, spacing=spacing)
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    assert ds.tomogram("TS_69_2", "odd").spacing_zyx_A == spacing
    assert ds.tomogram("TS_69_2", "odd", level=2).spacing_zyx_A == tuple(4 * s for s in spacing)
    assert ds.tomogram("TS_69_2").spacing_zyx_A == (SPACING_A,) * 3


def test_pyramid_levels_have_halved_shapes_and_downsampled_data(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    level0 = kaggle["arrays"]["train", "TS_5_4"]
    expected = level0
    for level in (1, 2):
        expected = downsample2(expected)
        vol = ds.tomogram("TS_5_4", level=level)
        assert vol.level == level
        assert ds.tomogram_shape("TS_5_4", level=level) == vol.data.shape == tuple(s // 2**level for s in SHAPE_ZYX)
        np.testing.assert_allclose(vol.data, expected, rtol=1e-6)
        assert vol.spacing_zyx_A == pytest.approx((SPACING_A * 2**level,) * 3)


def test_coarser_levels_keep_a_particle_where_their_metadata_puts_it(tmp_path):
    # a blob centred at level-0 voxel (20, 31, 34); every level's scale-only metadata must place it at the
    # same Å position (a 2×2×2 block mean would move it by half a level-0 voxel per axis at level 1)
    zyx = np.indices((48, 64, 72)).astype(np.float64)
    centre = np.array([20.0, 31.0, 34.0])
    blob = np.exp(-((zyx - centre[:, None, None, None]) ** 2).sum(0) / (2 * 3.0**2)).astype(np.float32)
    write_ome_zarr(tmp_path / "blob.zarr", blob, 10.0)
    for level in (0, 1, 2):
        data, spacing = read_ome_zarr(tmp_path / "blob.zarr", level)
        weights = np.clip(data - 0.05 * data.max(), 0, None)
        centroid_vox = np.array([(np.indices(data.shape)[a] * weights).sum() / weights.sum() for a in range(3)])
        np.testing.assert_allclose(centroid_vox * np.array(spacing), centre * 10.0, atol=1.0, err_msg=f"level {level}")


def test_write_picks_round_trips_through_copick(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    truth = ds.picks()
    rng = np.random.default_rng(0)
    pred = truth.sample(frac=0.5, random_state=0).assign(score=lambda d: rng.uniform(0, 1, len(d)))
    pred[["x", "y", "z"]] += rng.normal(0, 5, size=(len(pred), 3))
    ds.write_picks(pred, user_id="czii", session_id="1")
    pd.testing.assert_frame_equal(ds.picks(user_id="czii", session_id="1"), _sorted(pred), check_exact=True)
    # a plain copick client of the generated config sees the predictions, one file per class
    run = copick.from_file(str(ds.config_path)).get_run("TS_5_4")
    files = run.get_picks(user_id="czii", session_id="1")
    assert sorted(p.pickable_object_name for p in files) == sorted(PARTICLE_NAMES)
    ribo = next(p for p in files if p.pickable_object_name == "ribosome")
    want = pred[(pred["experiment"] == "TS_5_4") & (pred["particle_type"] == "ribosome")]
    np.testing.assert_array_equal(np.sort(ribo.numpy()[0][:, 0]), np.sort(want["x"].to_numpy()))
    np.testing.assert_allclose(np.sort(ribo.scores()), np.sort(want["score"].to_numpy()))
    # writing again replaces the previous picks of the runs written
    ds.write_picks(pred.iloc[:3], user_id="czii", session_id="1")
    again = ds.picks(user_id="czii", session_id="1")
    assert len(again) == 3 + len(pred[~pred["experiment"].isin(set(pred.iloc[:3]["experiment"]))])
    assert len(ds.picks()) == len(truth)


# --- copick projects and aliases ---------------------------------------------------------------


def test_copick_project_reads_tomograms_and_picks(tmp_path):
    objects = {"apo-ferritin": [[10.0, 20.0, 30.0]], "ribosome": [[1.0, 2.0, 3.0]] * 2}
    config, arrays = _copick_project(tmp_path, objects)
    ds = open_dataset(config)
    assert ds.split is None and ds.runs() == ["TS_1"]
    vol = ds.tomogram("TS_1")  # the run's only type is the default
    assert vol.tomo_type == "wbp"
    np.testing.assert_array_equal(vol.data, arrays["TS_1"])
    df = ds.picks()
    assert df["particle_type"].value_counts().to_dict() == {"ribosome": 2, "apo-ferritin": 1}
    pred = df.assign(x=df["x"] + 1.0)
    ds.write_picks(pred)
    assert (tmp_path / "proj/overlay/ExperimentRuns/TS_1/Picks/czii_0_ribosome.json").is_file()
    pd.testing.assert_frame_equal(ds.picks(user_id="czii"), _sorted(pred))


def test_aliases_map_portal_names_to_classes_and_none_ignores(tmp_path):
    objects = {
        "ferritin-complex": [[5.0, 6.0, 7.0]], "cytosolic-ribosome": [[1.0, 2.0, 3.0]], "membrane": [[0.0, 0.0, 0.0]],
    }
    config, _ = _copick_project(tmp_path, objects, runs=("TS_1", "TS_2"))
    with pytest.raises(DataError, match=r"run 'TS_1'.*'cytosolic-ribosome'.*apo-ferritin.*aliases"):
        open_dataset(config).picks()
    aliases = {"ferritin-complex": "apo-ferritin", "cytosolic-ribosome": "ribosome", "membrane": None}
    ds = open_dataset(config, aliases=aliases)
    df = ds.picks()
    assert sorted(df["particle_type"].unique()) == ["apo-ferritin", "ribosome"]
    assert len(df) == 4
    ferritin = df[df["particle_type"] == "apo-ferritin"]
    np.testing.assert_array_equal(ferritin[["x", "y", "z"]].to_numpy(), [[5, 6, 7]] * 2)
    ds.write_picks(df[df["experiment"] == "TS_2"], user_id="model")
    assert (tmp_path / "proj/overlay/ExperimentRuns/TS_2/Picks/model_0_cytosolic-ribosome.json").is_file()
    pd.testing.assert_frame_equal(ds.picks(user_id="model"), _sorted(df[df["experiment"] == "TS_2"]))
    with pytest.raises(DataError, match="no pickable object for classes \\['thyroglobulin'\\]"):
        ds.write_picks(_one_pick("TS_1", "thyroglobulin"))
    with pytest.raises(ConfigError, match="'membrane' maps to 'lipid'"):
        open_dataset(config, aliases={"membrane": "lipid"})


def test_kaggle_picks_with_unknown_names_need_aliases(kaggle):
    doc = picks_document("pp7-vlp", "TS_69_2", np.array([[1.0, 2.0, 3.0]]))
    write_picks_json(kaggle["root"] / "train/overlay/ExperimentRuns/TS_69_2/Picks/pp7-vlp.json", doc)
    with pytest.raises(DataError, match="run 'TS_69_2'.*'pp7-vlp'"):
        open_dataset(kaggle["root"], workdir=kaggle["work"]).picks()
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"], aliases={"pp7-vlp": "virus-like-particle"})
    vlp = ds.picks(runs=["TS_69_2"]).query("particle_type == 'virus-like-particle'")
    assert len(vlp) == (_csv_rows("TS_69_2")["particle_type"] == "virus-like-particle").sum() + 1
    assert "pp7-vlp" in {o.name for o in copick.from_file(str(ds.config_path)).pickable_objects}


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["missing", "empty_dir", "text_file", "json_not_copick"])
def test_source_that_is_neither_copick_nor_kaggle(tmp_path, make):
    source = tmp_path / "src"
    if make == "empty_dir":
        source.mkdir()
    elif make == "text_file":
        source.write_text("not json")
    elif make == "json_not_copick":
        source.write_text(json.dumps({"runs": []}))
    with pytest.raises(DataError, match=r"src.*expected a copick config JSON.*static/ExperimentRuns"):
        open_dataset(source)


def test_copick_config_without_runs(tmp_path):
    config = tmp_path / "empty.json"
    roots = {"overlay_root": f"local://{tmp_path / 'nothing/overlay'}", "static_root": str(tmp_path / "nothing/static")}
    config.write_text(json.dumps({"config_type": "filesystem", "pickable_objects": [], **roots}))
    with pytest.raises(DataError, match="empty.json: no runs found .*nothing/static/ExperimentRuns"):
        open_dataset(config)
    assert not (tmp_path / "nothing").exists()


def test_missing_split_and_unsupported_config_type(kaggle, tmp_path):
    shutil.rmtree(kaggle["root"] / "test")
    with pytest.raises(DataError, match="no split 'test'.*splits present: train"):
        open_dataset(kaggle["root"], split="test", workdir=kaggle["work"])
    portal = tmp_path / "portal.json"
    portal.write_text(json.dumps({"config_type": "cryoet_data_portal", "pickable_objects": [], "dataset_ids": [1]}))
    with pytest.raises(DataError, match="portal.json.*'cryoet_data_portal' is not supported"):
        open_dataset(portal)


def test_workdir_inside_the_input_is_refused(kaggle):
    with pytest.raises(DataError, match="inside the input"):
        open_dataset(kaggle["root"], workdir=kaggle["root"] / "work")
    assert not (kaggle["root"] / "work").exists()


def test_unknown_run_and_missing_tomogram_type(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    with pytest.raises(DataError, match="unknown run 'TS_9'.*runs: TS_5_4, TS_69_2"):
        ds.tomogram("TS_9")
    with pytest.raises(DataError, match="run 'TS_69_2' has no 'wbp' tomogram; types present: denoised"):
        ds.tomogram("TS_69_2", "wbp")


def test_missing_voxel_spacing(kaggle):
    (kaggle["root"] / "train/static/ExperimentRuns/TS_7/").mkdir()
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    assert "TS_7" in ds.runs()
    with pytest.raises(DataError, match="run 'TS_7': no voxel spacing"):
        ds.tomogram("TS_7")


def test_missing_pyramid_level_lists_levels(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    with pytest.raises(DataError, match=r"denoised.zarr: no pyramid level 3.*\['0', '1', '2'\]"):
        ds.tomogram("TS_5_4", level=3)
    with pytest.raises(DataError, match="no pyramid level 3"):
        ds.tomogram_shape("TS_5_4", level=3)


def test_corrupt_zarr_names_the_store(kaggle):
    store = kaggle["root"] / "train/static/ExperimentRuns/TS_69_2/VoxelSpacing10.000/denoised.zarr"
    chunk = next(p for p in (store / "0").rglob("*") if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"garbage")
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    assert ds.tomogram_shape("TS_69_2") == SHAPE_ZYX  # metadata is intact
    with pytest.raises(DataError, match=r"TS_69_2/VoxelSpacing10.000/denoised.zarr/0: unreadable zarr data"):
        ds.tomogram("TS_69_2")
    (store / ".zattrs").write_text("{broken")
    with pytest.raises(DataError, match=r"denoised.zarr: unreadable zarr group"):
        ds.tomogram("TS_69_2")


@pytest.mark.parametrize("content, message", [("", "picks file is empty"), ('{"points": 3}', "malformed picks file")])
def test_bad_kaggle_picks_file_is_named_at_open(kaggle, content, message):
    bad = kaggle["root"] / "train/overlay/ExperimentRuns/TS_69_2/Picks/ribosome.json"
    bad.write_text(content)
    with pytest.raises(DataError, match=f"TS_69_2/Picks/ribosome.json: {message}"):
        open_dataset(kaggle["root"], workdir=kaggle["work"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "picks file is empty"),
        ("{oops", "not valid JSON"),
        ('{"points": [{"location": {"x": 1}}]}', "malformed picks file"),
        (json.dumps(picks_document("ribosome", "TS_1", [[1, 2, 3], [np.nan, 1, 1]])), "point 1 has a non-finite"),
    ],
)
def test_bad_copick_picks_file_is_named_when_read(tmp_path, content, message):
    config, _ = _copick_project(tmp_path, {"ribosome": [[1.0, 2.0, 3.0]]})
    (tmp_path / "proj/overlay/ExperimentRuns/TS_1/Picks/curation_0_ribosome.json").write_text(content)
    with pytest.raises(DataError, match=f"curation_0_ribosome.json: {message}"):
        open_dataset(config).picks()


def test_copick_project_with_kaggle_picks_names_is_explained(tmp_path):
    config, _ = _copick_project(tmp_path, {"ribosome": [[1.0, 2.0, 3.0]]})
    shutil.copyfile(PICKS_DIR / "ribosome.json", tmp_path / "proj/overlay/ExperimentRuns/TS_1/Picks/ribosome.json")
    with pytest.raises(DataError, match="run 'TS_1'.*<user>_<session>_<object>.json"):
        open_dataset(config).picks()


def test_non_finite_voxels_error_or_repair_with_warning(kaggle):
    data = kaggle["arrays"]["train", "TS_69_2"].copy()
    data[0, 0, :3] = np.nan
    data[1, 2, 3] = np.inf
    store = kaggle["root"] / "train/static/ExperimentRuns/TS_69_2/VoxelSpacing10.000/denoised.zarr"
    write_ome_zarr(store, data, SPACING_A)
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    with pytest.raises(DataError, match="run 'TS_69_2' tomogram 'denoised' level 0.*4 non-finite voxels"):
        ds.tomogram("TS_69_2")
    with pytest.warns(UserWarning, match="replaced 4 non-finite voxels"):
        vol = ds.tomogram("TS_69_2", nan_policy="repair")
    finite = np.isfinite(data)
    assert np.isfinite(vol.data).all()
    np.testing.assert_array_equal(vol.data[finite], data[finite])
    np.testing.assert_allclose(vol.data[~finite], data[finite].mean(dtype=np.float64), rtol=1e-6)
    with pytest.raises(ConfigError, match="nan_policy"):
        ds.tomogram("TS_69_2", nan_policy="ignore")


def test_write_picks_rejects_bad_tables_and_writes_nothing(kaggle):
    ds = open_dataset(kaggle["root"], workdir=kaggle["work"])
    overlay = kaggle["work"] / "overlay"
    before = _tree_digest(overlay)
    good = pd.concat([_one_pick("TS_5_4"), _one_pick("TS_69_2")]).to_dict(orient="list")
    cases = [
        (dict(good, experiment=["TS_5_4", "TS_0"]), {}, "unknown run 'TS_0'"),
        (dict(good, particle_type=["ribosome", "proteasome"]), {}, "unknown particle types \\['proteasome'\\]"),
        (dict(good, z=[3.0, np.nan]), {}, "non-finite"),
        ({k: v for k, v in good.items() if k != "z"}, {}, "missing columns \\['z'\\]"),
        (good, {"user_id": "curation", "session_id": "0"}, "ground-truth"),
        (good, {"user_id": "my_model"}, "user_id 'my_model' is not a valid copick id"),
    ]
    for table, kwargs, message in cases:
        with pytest.raises(DataError, match=message):
            ds.write_picks(pd.DataFrame(table), **kwargs)
    assert _tree_digest(overlay) == before
