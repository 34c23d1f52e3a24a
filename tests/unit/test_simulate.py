"""The simulator: layout, picks, geometry, imaging, metadata, determinism, atomicity, readers and CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import copick
import numpy as np
import pandas as pd
import pytest

import czii.cli
from czii.data import open_dataset
from czii.formats.omezarr import read_ome_zarr
from czii.formats.picks_json import picks_document, read_picks_json, write_picks_json
from czii.simulate.imaging import TOMO_TYPES
from czii.simulate.scene import particle_density, random_rotation
from czii.simulate import PORTAL_OBJECT_NAMES, SIMULATOR_VERSION, SimConfig, simulate_dataset
from czii.config import load_config, with_data_paths
from czii.errors import ConfigError
from czii.training.data import fold_runs, open_sources, split_fold
from czii.geometry import extent_xyz_A, xyz_A_to_zyx_vox
from czii.particles import BY_NAME, PARTICLE_NAMES, PARTICLES

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "czii_reference"
VS = "VoxelSpacing10.000"


def _tiny(**overrides) -> SimConfig:
    return SimConfig.preset("tiny", **overrides)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_picks(result, run: str, particle: str) -> np.ndarray:
    df = result.picks
    return df[(df["experiment"] == run) & (df["particle_type"] == particle)][["x", "y", "z"]].to_numpy()


def _zscored(path: Path) -> np.ndarray:
    volume, _ = read_ome_zarr(path)
    return (volume - volume.mean()) / volume.std()


def test_layout_is_the_documented_one(tiny_sim):
    out = tiny_sim.out_dir
    assert len(tiny_sim.train_runs) == 3 and len(tiny_sim.test_runs) == 1
    config = json.loads((out / "copick_config.json").read_text())
    assert config["config_type"] == "filesystem"
    assert Path(config["static_root"]) == out / "copick" / "static"
    assert Path(config["overlay_root"]) == out / "copick" / "overlay"
    objects = {o["name"]: o for o in config["pickable_objects"]}
    assert list(objects) == list(PARTICLE_NAMES)
    for p in PARTICLES:
        assert objects[p.name] == {
            "name": p.name, "is_particle": True, "label": p.label, "color": list(p.color_rgba),
            "radius": p.radius_A, "pdb_id": p.pdb_id,
        }
    for run in tiny_sim.train_runs:
        copick_static = out / "copick/static/ExperimentRuns" / run / VS
        kaggle_static = out / "kaggle/train/static/ExperimentRuns" / run / VS
        assert sorted(p.name for p in copick_static.iterdir()) == sorted(f"{t}.zarr" for t in TOMO_TYPES)
        assert sorted(p.name for p in kaggle_static.iterdir()) == sorted(f"{t}.zarr" for t in TOMO_TYPES)
        chunk = Path("denoised.zarr/0/0/0/0")
        assert os.path.samefile(copick_static / chunk, kaggle_static / chunk)  # hard link, not a second copy
        copick_picks = out / "copick/overlay/ExperimentRuns" / run / "Picks"
        kaggle_picks = out / "kaggle/train/overlay/ExperimentRuns" / run / "Picks"
        assert sorted(p.name for p in copick_picks.iterdir()) == sorted(f"curation_0_{n}.json" for n in PARTICLE_NAMES)
        assert sorted(p.name for p in kaggle_picks.iterdir()) == sorted(f"{n}.json" for n in PARTICLE_NAMES)
    for run in tiny_sim.test_runs:
        assert [p.name for p in (out / "kaggle/test/static/ExperimentRuns" / run / VS).iterdir()] == ["denoised.zarr"]
        assert not (out / "copick/static/ExperimentRuns" / run).exists()
    assert not (out / "kaggle/test/overlay").exists()
    solution_columns = list(pd.read_csv(out / "kaggle/solution.csv").columns)
    assert solution_columns == ["id", "experiment", "particle_type", "x", "y", "z"]
    simulation = json.loads((out / "simulation.json").read_text())
    assert simulation["config"] == tiny_sim.config.to_dict()
    assert simulation["simulator_version"] == SIMULATOR_VERSION
    assert sorted(simulation["runs"]) == sorted(tiny_sim.train_runs + tiny_sim.test_runs)
    assert all({"imaging", "lamella", "particles"} <= set(p) for p in simulation["runs"].values())


def test_picks_files_hold_exactly_the_result_picks(tiny_sim):
    out = tiny_sim.out_dir
    for run in tiny_sim.train_runs:
        for name in PARTICLE_NAMES:
            expected = _run_picks(tiny_sim, run, name)
            for path in (
                out / "copick/overlay/ExperimentRuns" / run / "Picks" / f"curation_0_{name}.json",
                out / "kaggle/train/overlay/ExperimentRuns" / run / "Picks" / f"{name}.json",
            ):
                got_name, xyz = read_picks_json(path)
                assert got_name == name
                np.testing.assert_array_equal(xyz, expected.reshape(-1, 3))
    solution = pd.read_csv(tiny_sim.solution_csv)
    truth = tiny_sim.picks[tiny_sim.picks["experiment"].isin(tiny_sim.test_runs)].reset_index(drop=True)
    assert solution["id"].tolist() == list(range(len(truth))) and len(truth) > 0
    pd.testing.assert_frame_equal(solution.drop(columns="id"), truth)
    per_run = tiny_sim.picks.groupby("experiment")["particle_type"].nunique()
    assert (per_run == 6).all()  # the tiny preset keeps at least one particle of every class per run


def test_pick_centres_inside_volume_and_particles_do_not_overlap(tiny_sim):
    extent = extent_xyz_A(tiny_sim.config.shape_zyx, tiny_sim.config.spacing_zyx_A)
    for run, df in tiny_sim.picks.groupby("experiment"):
        xyz = df[["x", "y", "z"]].to_numpy()
        assert np.all(xyz >= 0) and np.all(xyz <= extent), run
        radii = df["particle_type"].map(lambda n: BY_NAME[n].radius_A).to_numpy()
        distance = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
        min_gap = radii[:, None] + radii[None] - 0.01  # picks are rounded to 1 mÅ
        np.fill_diagonal(distance, np.inf)
        assert np.all(distance >= min_gap), run


def test_particle_shapes_fit_their_radius_and_differ():
    rng = np.random.default_rng(1)
    grid = np.arange(-160.0, 161.0, 5.0)
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float32)
    distance = np.linalg.norm(points, axis=1)
    elongation = {}
    for p in PARTICLES:
        density = particle_density(p.name, points @ random_rotation(rng))
        assert distance[density > 0].max() <= p.radius_A
        assert distance[density > 0].max() >= 0.8 * p.radius_A
        com = (points * density[:, None]).sum(0) / density.sum()
        assert np.linalg.norm(com) < 0.05 * p.radius_A  # the pick is the centre of mass
        centred = points - com
        eig = np.linalg.eigvalsh((centred * density[:, None]).T @ centred / density.sum())
        elongation[p.name] = float(np.sqrt(eig[-1] / eig[0]))
    shell = (distance > 42.0) & (distance < 49.0)
    ferritin = particle_density("apo-ferritin", points)
    assert ferritin[distance < 20].max() == 0 and ferritin[shell].min() == 1  # hollow shell
    assert elongation["thyroglobulin"] > 2.5 and elongation["apo-ferritin"] < 1.05
    assert elongation["ribosome"] > 1.2 and elongation["virus-like-particle"] < 1.05


def test_particles_are_darker_than_random_voxels(tiny_sim, tmp_path):
    rng = np.random.default_rng(0)
    clean = _tiny(n_train=2, n_test=0, snr=1e4, types=("denoised",))
    result = simulate_dataset(tmp_path / "clean", clean, progress=False)
    centre = {n: [] for n in PARTICLE_NAMES}
    shell = []
    for run in result.train_runs:
        volume = _zscored(result.tomogram_path(run))
        random_mean = volume[tuple(rng.integers(0, s, 2000) for s in volume.shape)].mean()
        coords = [np.arange(n) * s for n, s in zip(volume.shape, result.config.spacing_zyx_A)]
        zz, yy, xx = np.meshgrid(*coords, indexing="ij")
        for name in PARTICLE_NAMES:
            for x, y, z in _run_picks(result, run, name):
                iz, iy, ix = np.rint(xyz_A_to_zyx_vox([x, y, z], result.config.spacing_zyx_A)[0]).astype(int)
                centre[name].append(volume[iz, iy, ix] - random_mean)
                if name == "apo-ferritin":
                    d = np.sqrt((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2)
                    shell.append(volume[(d > 0.65 * 60) & (d < 60)].mean() - random_mean)
    for name in PARTICLE_NAMES:
        if name != "apo-ferritin":  # a hollow shell: its centre is solvent
            assert np.mean(centre[name]) < -0.5, name
    assert np.mean(shell) < -0.5
    pooled = []  # the same sign at the default SNR of the shared fixture
    for run in tiny_sim.train_runs + tiny_sim.test_runs:
        volume = _zscored(tiny_sim.tomogram_path(run))
        xyz = tiny_sim.picks[tiny_sim.picks["experiment"] == run][["x", "y", "z"]].to_numpy()
        idx = np.rint(xyz_A_to_zyx_vox(xyz, tiny_sim.config.spacing_zyx_A)).astype(int)
        pooled.extend(volume[idx[:, 0], idx[:, 1], idx[:, 2]])
    assert np.mean(pooled) < -0.5


def test_missing_wedge_about_y(tiny_sim):
    run = tiny_sim.train_runs[0]
    volume, spacing = read_ome_zarr(tiny_sim.tomogram_path(run, "denoised"))
    power = np.abs(np.fft.fftn(volume - volume.mean())) ** 2
    kz, ky, kx = np.meshgrid(*[np.fft.fftfreq(n, d=s) for n, s in zip(volume.shape, spacing)], indexing="ij")
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    band = (k > 0.004) & (k < 0.03)
    tan60 = np.tan(np.radians(60.0))
    in_wedge = band & (np.abs(kz) > 1.1 * tan60 * np.abs(kx))
    measured = band & (np.abs(kz) < 0.9 * tan60 * np.abs(kx))
    assert in_wedge.sum() > 100 and measured.sum() > 100
    assert power[in_wedge].mean() < 1e-6 * power[measured].mean()
    # the wedge is around kz (the beam), not kx: the mirrored region is well filled
    mirrored = band & (np.abs(kx) > 1.1 * tan60 * np.abs(kz))
    assert power[mirrored].mean() > 0.1 * power[measured].mean()
    isonet, _ = read_ome_zarr(tiny_sim.tomogram_path(run, "isonetcorrected"))
    refilled = np.abs(np.fft.fftn(isonet - isonet.mean())) ** 2
    assert refilled[in_wedge].mean() > 1e-3 * refilled[measured].mean()


def test_tomogram_types_differ_and_intensity_is_rescaled(tiny_sim):
    run = tiny_sim.train_runs[0]
    volumes = {t: read_ome_zarr(tiny_sim.tomogram_path(run, t))[0] for t in TOMO_TYPES}
    for a in TOMO_TYPES:
        for b in TOMO_TYPES:
            if a < b:
                assert abs(np.corrcoef(volumes[a].ravel(), volumes[b].ravel())[0, 1]) < 0.99, (a, b)
    scales = [float(read_ome_zarr(tiny_sim.tomogram_path(r))[0].std()) for r in tiny_sim.train_runs]
    assert max(scales) > 1e-7 and max(scales) < 1e-1 and max(scales) / min(scales) > 1.5


def test_omezarr_metadata_matches_the_real_files(tiny_sim):
    zarr_dir = tiny_sim.tomogram_path(tiny_sim.train_runs[0], "wbp")
    zattrs = json.loads((zarr_dir / ".zattrs").read_text())
    assert zattrs == json.loads((REFERENCE / "denoised_zattrs.json").read_text())
    scales = [np.array(d["coordinateTransformations"][0]["scale"]) for d in zattrs["multiscales"][0]["datasets"]]
    np.testing.assert_allclose([s / scales[0] for s in scales], [[1] * 3, [2] * 3, [4] * 3])
    reference = json.loads((REFERENCE / "denoised_level2_zarray.json").read_text())
    shape = list(tiny_sim.config.shape_zyx)
    for level in ("0", "1", "2"):
        zarray = json.loads((zarr_dir / level / ".zarray").read_text())
        assert {k: v for k, v in zarray.items() if k != "shape"} == {k: v for k, v in reference.items() if k != "shape"}
        assert zarray["shape"] == shape
        shape = [(s + 1) // 2 for s in shape]


def test_picks_json_is_byte_compatible_with_real_files(tiny_sim, tmp_path):
    real_files = sorted((REFERENCE / "picks_TS_5_4").glob("*.json"))
    assert len(real_files) == 6
    for path in real_files:  # 5 of the 6 real files end without a newline, apo-ferritin's with one
        name, xyz = read_picks_json(path)
        written = tmp_path / path.name
        write_picks_json(written, picks_document(name, "TS_5_4", xyz))
        assert written.read_bytes() == path.read_bytes().removesuffix(b"\n")

    def structure(value):
        if isinstance(value, dict):
            return {k: structure(v) for k, v in value.items()}
        if isinstance(value, list):
            return [structure(value[0])] if value else []
        return type(value).__name__

    real = json.loads((REFERENCE / "picks_TS_5_4" / "ribosome.json").read_text())
    run = tiny_sim.train_runs[0]
    simulated_path = tiny_sim.kaggle_dir / "train/overlay/ExperimentRuns" / run / "Picks/ribosome.json"
    simulated = json.loads(simulated_path.read_text())
    assert list(simulated) == list(real)
    assert structure(simulated) == structure(real)
    assert simulated["run_name"] == run and simulated["user_id"] == "curation" and simulated["session_id"] == "0"


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    config = _tiny(n_train=1, n_test=1, types=("denoised", "wbp"), seed=7)
    a = simulate_dataset(tmp_path / "a", config, progress=False)
    b = simulate_dataset(tmp_path / "b", config, progress=False)
    c = simulate_dataset(tmp_path / "c", _tiny(n_train=1, n_test=1, types=("denoised", "wbp"), seed=8), progress=False)
    files_a, files_b, files_c = _files(a.out_dir), _files(b.out_dir), _files(c.out_dir)
    config_a = files_a.pop("copick_config.json").decode().replace(str(a.out_dir), "OUT")
    assert config_a == files_b.pop("copick_config.json").decode().replace(str(b.out_dir), "OUT")
    assert files_a == files_b
    pd.testing.assert_frame_equal(a.picks, b.picks)
    chunk = f"copick/static/ExperimentRuns/{a.train_runs[0]}/{VS}/denoised.zarr/0/0/0/0"
    assert files_a[chunk] != files_c[chunk]
    assert not a.picks[["x", "y", "z"]].equals(c.picks[["x", "y", "z"]])


def test_refuses_to_overwrite_and_leaves_no_partial_output(tmp_path):
    config = _tiny(n_train=1, n_test=0, types=("denoised",))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        simulate_dataset(foreign, config, progress=False)
    with pytest.raises(ConfigError, match="not a simulator output"):
        simulate_dataset(foreign, config, overwrite=True, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]

    out = tmp_path / "sim"
    first = simulate_dataset(out, config, progress=False)
    before = _files(out)
    impossible = _tiny(n_train=1, n_test=0, types=("denoised",), shape_zyx=(8, 8, 8))
    with pytest.raises(ConfigError, match="could not fit"):
        simulate_dataset(out, impossible, overwrite=True, progress=False)
    assert _files(out) == before  # the failed overwrite kept the previous simulation
    with pytest.raises(ConfigError, match="could not fit"):
        simulate_dataset(tmp_path / "never", impossible, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "sim"]  # no temporary leftovers

    reseeded = _tiny(n_train=1, n_test=0, types=("denoised",), seed=1)
    second = simulate_dataset(out, reseeded, overwrite=True, progress=False)
    assert not second.picks[["x", "y", "z"]].equals(first.picks[["x", "y", "z"]])
    assert json.loads((out / "simulation.json").read_text())["config"]["seed"] == 1


def test_copick_reads_tomograms_and_picks(tiny_sim):
    root = copick.from_file(str(tiny_sim.copick_config))
    assert sorted(r.name for r in root.runs) == sorted(tiny_sim.train_runs)
    run_name = tiny_sim.train_runs[1]
    run = root.get_run(run_name)
    (tomogram,) = run.get_voxel_spacing(10.0).get_tomograms("denoised")
    tomogram = tomogram.numpy()
    expected, _ = read_ome_zarr(tiny_sim.tomogram_path(run_name))
    np.testing.assert_array_equal(tomogram, expected)
    for name in PARTICLE_NAMES:
        (picks,) = run.get_picks(object_name=name, user_id="curation", session_id="0")
        positions, _ = picks.numpy()
        np.testing.assert_array_equal(positions.reshape(-1, 3), _run_picks(tiny_sim, run_name, name).reshape(-1, 3))


def test_open_dataset_round_trip(tiny_sim, tmp_path):
    columns = ["experiment", "particle_type", "x", "y", "z"]
    train_truth = tiny_sim.picks[tiny_sim.picks["experiment"].isin(tiny_sim.train_runs)]
    train_truth = train_truth.sort_values(columns).reset_index(drop=True)
    for source, workdir in ((tiny_sim.copick_config, None), (tiny_sim.kaggle_dir, tmp_path / "stage")):
        dataset = open_dataset(source, workdir=workdir)
        assert sorted(dataset.runs()) == sorted(tiny_sim.train_runs)
        picks = dataset.picks()[columns].sort_values(columns).reset_index(drop=True)
        pd.testing.assert_frame_equal(picks, train_truth, check_dtype=False)
        volume = dataset.tomogram(tiny_sim.train_runs[0], "denoised")
        np.testing.assert_array_equal(volume.data, read_ome_zarr(tiny_sim.tomogram_path(tiny_sim.train_runs[0]))[0])
    test_split = open_dataset(tiny_sim.kaggle_dir, split="test", workdir=tmp_path / "stage_test")
    assert test_split.runs() == list(tiny_sim.test_runs)
    assert test_split.tomogram(tiny_sim.test_runs[0]).data.shape == tiny_sim.config.shape_zyx


def test_portal_style_names_round_trip_through_aliases(tmp_path):
    config = _tiny(
        n_train=1, n_test=0, types=("denoised",), object_names=PORTAL_OBJECT_NAMES, type_names={"denoised": "wbp"}
    )
    result = simulate_dataset(tmp_path / "portal", config, progress=False)
    run = result.train_runs[0]
    objects = [o["name"] for o in json.loads(result.copick_config.read_text())["pickable_objects"]]
    assert objects == [PORTAL_OBJECT_NAMES[n] for n in PARTICLE_NAMES]
    picks_dir = result.out_dir / "copick/overlay/ExperimentRuns" / run / "Picks"
    name, xyz = read_picks_json(picks_dir / "curation_0_ferritin-complex.json")
    assert name == "ferritin-complex"
    np.testing.assert_array_equal(xyz, _run_picks(result, run, "apo-ferritin").reshape(-1, 3))
    assert result.tomogram_path(run).name == "wbp.zarr" and result.tomogram_path(run).is_dir()
    aliases = {v: k for k, v in PORTAL_OBJECT_NAMES.items()}
    dataset = open_dataset(result.copick_config, aliases=aliases, tomo_type="wbp")
    assert sorted(dataset.picks()["particle_type"]) == sorted(result.picks["particle_type"])
    assert dataset.tomogram(run).data.shape == config.shape_zyx


def test_real_layout_replicates_a_real_run(tmp_path):
    config = _tiny(n_train=1, n_test=0, types=("denoised",), layout="real", shape_zyx=(48, 200, 200))
    result = simulate_dataset(tmp_path / "real", config, progress=False)
    run = result.train_runs[0]
    source = result.run_params[run]["real_source"]
    real = pd.read_csv(config.real_picks_csv)
    assert source["run"] == sorted(real["experiment"].unique())[0]
    real = real[real["experiment"] == source["run"]]
    mapped = real[["x", "y", "z"]].to_numpy() - [*source["window_origin_xy_A"], 0.0]
    mapped[:, 2] *= source["z_scale"]
    extent = extent_xyz_A(config.shape_zyx, config.spacing_zyx_A)
    inside = np.all((mapped >= 0) & (mapped <= extent), axis=1)
    sim = result.picks[result.picks["experiment"] == run]
    assert 0 < len(sim) <= inside.sum() and len(sim) + source["dropped"] == len(real)
    assert source["z_scale"] < 1.0
    for (x, y, z), name in zip(sim[["x", "y", "z"]].to_numpy(), sim["particle_type"]):
        candidates = mapped[(real["particle_type"] == name).to_numpy()]
        assert np.min(np.linalg.norm(candidates - [x, y, z], axis=1)) < 0.01


def test_real_layout_names_training_runs_after_the_real_runs_so_real_configs_fit(tmp_path):
    config = _tiny(n_train=8, n_test=1, types=("denoised",), layout="real", shape_zyx=(32, 64, 64))
    result = simulate_dataset(tmp_path / "rehearsal", config, progress=False)
    real_runs = sorted(pd.read_csv(config.real_picks_csv)["experiment"].unique())
    assert result.train_runs == (*real_runs, f"{real_runs[0]}_sim1")
    assert [result.run_params[r]["real_source"]["run"] for r in result.train_runs] == [*real_runs, real_runs[0]]
    real7 = load_config(Path(__file__).parents[2] / "configs" / "real7.yaml")
    real7 = with_data_paths(real7, [str(result.kaggle_dir)])
    datasets = open_sources(real7, workdir=tmp_path / "work")
    folds = fold_runs(real7, datasets)
    assert sorted(run for fold in folds for run in fold) == real_runs
    split = split_fold(real7, datasets, 0)
    assert split.val == [("real", run) for run in folds[0]]
    assert sorted(run for _, run in split.train) == sorted(set(result.train_runs) - set(folds[0]))


def test_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match="types"):
        SimConfig(types=("denoised", "raw"))
    with pytest.raises(ConfigError, match="the string 'wbp'"):
        SimConfig(types="wbp")
    with pytest.raises(ConfigError, match="copick name"):
        SimConfig(object_names={"apo-ferritin": "ferritin_complex"})
    with pytest.raises(ConfigError, match="same name"):
        SimConfig(object_names={"apo-ferritin": "ribosome"})
    with pytest.raises(ConfigError, match="object_names keys"):
        SimConfig(object_names={"ferritin": "x"})
    with pytest.raises(ConfigError, match="shape_zyx"):
        SimConfig(shape_zyx=(4, 64, 64))
    with pytest.raises(ConfigError, match="n_train"):
        SimConfig(n_train=0, n_test=0)
    with pytest.raises(ConfigError, match="preset"):
        SimConfig.preset("huge")
    with pytest.raises(ConfigError, match="unknown SimConfig fields"):
        SimConfig.preset("tiny", n_runs=3)
    assert SimConfig.preset("full").shape_zyx == (184, 630, 630)


def test_cli_simulate(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["simulate", "--out", str(out), "--preset", "tiny", "--n-train", "1", "--n-test", "1",
            "--shape", "32", "64", "80", "--types", "denoised", "--seed", "3", "--snr", "2"]
    assert czii.cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "1 train + 1 test runs of 32×64×80" in printed and str(out / "copick_config.json") in printed
    simulation = json.loads((out / "simulation.json").read_text())
    assert simulation["config"]["shape_zyx"] == [32, 64, 80] and simulation["config"]["seed"] == 3
    assert simulation["config"]["types"] == ["denoised"] and simulation["config"]["snr"] == 2.0
    assert all(name in printed for name in PARTICLE_NAMES)
    assert len(pd.read_csv(out / "kaggle/solution.csv")) > 0
    assert czii.cli.main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert czii.cli.main(argv + ["--overwrite", "--seed", "4"]) == 0
    knobs = ["--contrast", "0.7", "--density-scale", "2", "--ice-gradient", "0.5", "--intensity-scale-log10",
             "-5", "-4", "--intensity-offset", "1", "3", "--voxel-size", "13.48", "--overwrite"]
    assert czii.cli.main(argv + knobs) == 0
    config = json.loads((out / "simulation.json").read_text())["config"]
    assert (config["contrast"], config["density_scale"], config["ice_gradient"]) == (0.7, 2.0, 0.5)
    assert config["intensity_scale_log10"] == [-5.0, -4.0] and config["intensity_offset"] == [1.0, 3.0]
    assert config["spacing_zyx_A"] == [13.48] * 3


@pytest.mark.slow
def test_full_size_run_has_the_real_pyramid(tmp_path):
    config = SimConfig.preset("full", n_train=1, n_test=0, types=("denoised",))
    result = simulate_dataset(tmp_path / "full", config, progress=False)
    reference = json.loads((REFERENCE / "denoised_level2_zarray.json").read_text())
    zarray = json.loads((result.tomogram_path(result.train_runs[0]) / "2" / ".zarray").read_text())
    assert zarray == reference
    counts = result.picks["particle_type"].value_counts()
    assert 100 < counts.sum() < 400 and set(counts.index) == set(PARTICLE_NAMES)


def _contrast_at_picks(result) -> float:
    """Mean z-scored intensity at the particle centres (negative: protein is dark)."""
    values = []
    for run in result.train_runs:
        volume = _zscored(result.tomogram_path(run))
        xyz = result.picks[(result.picks["experiment"] == run) & (result.picks["particle_type"] != "apo-ferritin")]
        idx = np.rint(xyz_A_to_zyx_vox(xyz[["x", "y", "z"]].to_numpy(), result.config.spacing_zyx_A)).astype(int)
        values.extend(volume[idx[:, 0], idx[:, 1], idx[:, 2]])
    return float(np.mean(values))


def test_contrast_knob_scales_the_particles(tmp_path):
    low, high = (
        simulate_dataset(tmp_path / name, _tiny(n_train=2, n_test=0, types=("denoised",), snr=20.0, contrast=c),
                         progress=False)
        for name, c in (("low", 0.3), ("high", 3.0))
    )
    for result, c in ((low, 0.3), (high, 3.0)):
        drawn = [p["particle_contrast"] for p in result.run_params.values()]
        assert all(0.8 * c <= d <= 1.2 * c for d in drawn)
    assert _contrast_at_picks(high) < _contrast_at_picks(low) - 0.3


def test_ice_gradient_knob_adds_a_ramp_across_the_field(tmp_path):
    def side_difference(gradient: float) -> float:
        config = _tiny(n_train=1, n_test=0, types=("denoised",), ice_gradient=gradient, seed=3)
        result = simulate_dataset(tmp_path / f"g{gradient}", config, progress=False)
        volume = _zscored(result.tomogram_path(result.train_runs[0]))
        angle = result.run_params[result.train_runs[0]]["imaging"]["ice_angle_rad"]
        _, ny, nx = volume.shape
        y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
        along = np.cos(angle) * x + np.sin(angle) * y
        profile = volume.mean(axis=0)  # protein is dark (−scale): the ramp is inverted too
        return float(profile[along < -0.5].mean() - profile[along > 0.5].mean())

    assert abs(side_difference(0.0)) < 0.3
    assert side_difference(1.5) > 1.0


def test_intensity_scale_and_offset_ranges(tmp_path):
    config = _tiny(n_train=1, n_test=1, types=("denoised",), intensity_scale_log10=(-5.0, -5.0),
                   intensity_offset=(100.0, 100.0))
    result = simulate_dataset(tmp_path / "s", config, progress=False)
    for run in result.train_runs + result.test_runs:
        imaging = result.run_params[run]["imaging"]
        assert imaging["intensity_scale"] == pytest.approx(1e-5)
        volume, _ = read_ome_zarr(result.tomogram_path(run))
        assert volume.mean() == pytest.approx(1e-3, rel=0.05)
        assert 1e-7 < volume.std() < 1e-4
    with pytest.raises(ConfigError, match="intensity_scale_log10"):
        _tiny(intensity_scale_log10=(-3.0, -6.0))
    with pytest.raises(ConfigError, match="contrast"):
        _tiny(contrast=0.0)
    with pytest.raises(ConfigError, match="ice_gradient"):
        _tiny(ice_gradient=-1.0)
