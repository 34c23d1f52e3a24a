"""The simulator's world knobs: particle models, jitter and warp, the decoy zoo, ice, carbon, the
imaging variations and the families built from them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from czii.errors import ConfigError
from czii.formats.omezarr import read_ome_zarr
from czii.geometry import CZII_SPACING_ZYX_A
from czii.particles import BY_NAME, PARTICLE_NAMES
from czii.simulate import FAMILIES, SimConfig, simulate_dataset
from czii.simulate.imaging import _Spectrum
from czii.simulate.placement import ParticleStyle, add_carbon_edge, add_decoys, add_ice, place_random_particles
from czii.simulate.scene import new_scene, random_rotation, render_density
from czii.simulate.shapes import (
    DECOY_KINDS, DECOY_RADIUS_A, PARTICLE_MODELS, SHELL_EXCLUDED_A, decoy_parts, decoy_radius, particle_parts,
    random_warp, render_parts,
)

SMALL_ZYX = (32, 128, 128)


def _grid(half_A: float, step_A: float = 5.0) -> np.ndarray:
    axis = np.arange(-half_A, half_A + 0.1, step_A)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float32)


@pytest.mark.parametrize("name", PARTICLE_NAMES)
def test_every_model_fits_its_radius_is_centred_and_differs_from_the_others(name):
    radius = BY_NAME[name].radius_A
    points = _grid(radius + 10.0)
    distance = np.linalg.norm(points, axis=1)
    densities = []
    for variant in PARTICLE_MODELS:
        density = render_parts(particle_parts(name, radius, variant, 0.0, 0.0, np.random.default_rng(0)), points)
        assert distance[density > 0].max() <= radius, variant
        assert distance[density > 0].max() >= 0.75 * radius, variant  # the model uses its size
        com = (points * density[:, None]).sum(0) / density.sum()
        assert np.linalg.norm(com) < 0.05 * radius, variant  # the pick is the centre of mass
        densities.append(density)
    for i in range(len(densities)):
        for j in range(i):
            assert np.corrcoef(densities[i], densities[j])[0, 1] < 0.9, (i, j)


def test_jittered_warped_particles_stay_within_their_radius_and_move():
    rng = np.random.default_rng(3)
    for name in PARTICLE_NAMES:
        radius = BY_NAME[name].radius_A
        points = _grid(radius + 10.0)
        distance = np.linalg.norm(points, axis=1)
        still = render_parts(particle_parts(name, radius, 1, 0.0, 0.0, rng), points)
        for _ in range(3):
            warp = random_warp(radius, 0.2 * radius, rng)
            parts = particle_parts(name, radius, 1, 0.2, 0.2 * radius, rng)
            density = render_parts(parts, warp.apply(points))
            assert distance[density > 0].max() <= radius, name
            assert np.abs(density - still).max() > 0.5, name  # jitter and warp change the shape


def test_warp_displacement_is_bounded_by_its_amplitude():
    rng = np.random.default_rng(0)
    points = _grid(200.0, 10.0)
    warp = random_warp(150.0, 12.0, rng)
    moved = np.linalg.norm(warp.apply(points) - points, axis=1)
    assert moved.max() <= 12.0 + 1e-3 and moved.max() > 4.0


@pytest.mark.parametrize("kind", DECOY_KINDS)
def test_every_decoy_kind_fits_its_radius(kind):
    rng = np.random.default_rng(1)
    for _ in range(5):
        radius = decoy_radius(kind, rng)
        low, high = DECOY_RADIUS_A[kind]
        assert low <= radius <= high
        points = _grid(radius + 10.0)
        density = render_parts(decoy_parts(kind, radius, rng), points @ random_rotation(rng))
        assert density.max() > 0.5 and np.linalg.norm(points, axis=1)[density > 0].max() <= radius


def test_shell_decoys_are_never_the_size_of_apo_ferritin():
    rng = np.random.default_rng(2)
    radii = np.array([decoy_radius("shell", rng) for _ in range(500)])
    low, high = SHELL_EXCLUDED_A
    assert not np.any((radii >= low) & (radii <= high))
    apo = BY_NAME["apo-ferritin"].radius_A
    assert low <= 0.85 * apo + 0.1 and high >= 1.15 * apo - 0.1
    assert radii.min() < low and radii.max() > high  # both sides of the gap are drawn


def _scene_with_particles(seed: int):
    rng = np.random.default_rng(seed)
    scene = new_scene(SMALL_ZYX, CZII_SPACING_ZYX_A, rng)
    place_random_particles(scene, {name: 3 for name in PARTICLE_NAMES}, rng, ParticleStyle(models=(0, 1, 2)))
    return scene, rng


def test_decoys_beside_particles_touch_one_and_overlap_none():
    scene, rng = _scene_with_particles(4)
    fitted = add_decoys(scene, 12, ("cluster", "rod"), 1.0, rng)
    assert sum(fitted.values()) >= 6 and set(fitted) == {"cluster", "rod"}
    centres = np.array([p.center_xyz_A for p in scene.particles])
    radii = np.array([p.radius_A for p in scene.particles])
    for decoy in scene.others:
        gap = np.linalg.norm(centres - decoy.center_xyz_A, axis=1) - radii - decoy.radius_A
        assert gap.min() >= 0.0 and gap.min() <= 20.0 + 1e-6
    assert {d.model for d in scene.others} <= {"cluster", "rod"}


def test_particles_draw_from_the_allowed_models_only():
    scene, _ = _scene_with_particles(5)
    assert {p.model for p in scene.particles} == {"0", "1", "2"}
    rng = np.random.default_rng(5)
    only = new_scene(SMALL_ZYX, CZII_SPACING_ZYX_A, rng)
    place_random_particles(only, {"ribosome": 3}, rng, ParticleStyle(models=(2,)))
    assert {p.model for p in only.particles} == {"2"}


def test_carbon_edge_is_dense_and_keeps_particles_out():
    rng = np.random.default_rng(6)
    scene = new_scene(SMALL_ZYX, CZII_SPACING_ZYX_A, rng)
    carbon = add_carbon_edge(scene, rng)
    place_random_particles(scene, {name: 4 for name in PARTICLE_NAMES}, rng)
    for p in scene.particles:
        assert carbon.depth_A(p.center_xyz_A[0], p.center_xyz_A[1]) <= -p.radius_A
    volume = render_density(scene, 1.0)
    nz, ny, nx = SMALL_ZYX
    x = np.arange(nx) * CZII_SPACING_ZYX_A[2]
    y = np.arange(ny) * CZII_SPACING_ZYX_A[1]
    depth = carbon.depth_A(x[None, :], y[:, None])
    middle = volume[nz // 2]
    assert (depth > 100).any() and (depth < -100).any()  # the edge crosses the field
    assert middle[depth > 100].mean() > middle[depth < -100].mean() + 0.8 * carbon.density


def test_ice_sits_on_a_lamella_face():
    rng = np.random.default_rng(7)
    scene = new_scene((64, 192, 192), CZII_SPACING_ZYX_A, rng)
    assert add_ice(scene, 3, rng) >= 1
    for ice in scene.others:
        lo, hi = scene.lamella.faces_A(ice.center_xyz_A[0], ice.center_xyz_A[1])
        assert min(abs(ice.center_xyz_A[2] - lo), abs(ice.center_xyz_A[2] - hi)) <= 0.5 * ice.radius_A + 1e-6
        assert ice.kind == "ice" and 150.0 <= ice.radius_A <= 400.0


def test_wedge_turns_with_the_tilt_axis():
    spec = _Spectrum((32, 32, 32), (10.0, 10.0, 10.0))
    zs = slice(0, 32)
    kz, ky, kx = 3, 0, 5  # index of a point at kz = 3/320, kx = 5/320, ky = 0
    along_y = spec.wedge(zs, 60.0, 0.0)
    across = spec.wedge(zs, 60.0, 90.0)  # the tilt axis along x: the wedge is measured against ky
    assert not along_y[kz, 0, kx]  # |kz| < tan 60° |kx|: measured when tilting about y
    assert across[kz, ky, kx]  # about x, ky = 0 lies across the axis: missing
    assert not across[kz, 5, 0]


def _volume(tmp_path, name, **overrides):
    config = SimConfig.preset("tiny", n_train=1, n_test=0, types=("denoised",), seed=11, **overrides)
    result = simulate_dataset(tmp_path / name, config, progress=False)
    volume, _ = read_ome_zarr(result.tomogram_path(result.train_runs[0]))
    return result, (volume - volume.mean()) / volume.std()


def _picks_mean(result, volume) -> float:
    run = result.train_runs[0]
    spacing = np.asarray(result.config.spacing_zyx_A)
    xyz = result.picks[result.picks["experiment"] == run][["x", "y", "z"]].to_numpy()
    index = np.rint(xyz[:, ::-1] / spacing).astype(int)
    return float(volume[tuple(index.T)].mean())


def test_sign_flip_makes_particles_bright(tmp_path):
    plain, dark = _volume(tmp_path, "plain", snr=20.0)
    flipped, bright = _volume(tmp_path, "flipped", snr=20.0, sign_flip_rate=1.0)
    assert flipped.run_params[flipped.train_runs[0]]["imaging"]["sign"] == -1.0
    assert _picks_mean(plain, dark) < -0.3 and _picks_mean(flipped, bright) > 0.3


def _high_frequency_share(volume: np.ndarray) -> float:
    power = np.abs(np.fft.fftn(volume)) ** 2
    k = np.sqrt(sum(f**2 for f in np.meshgrid(*[np.fft.fftfreq(n) for n in volume.shape], indexing="ij")))
    return float(power[k > 0.25].sum() / power.sum())


def test_filter_scale_noise_colour_and_ctf_correction_change_the_spectrum(tmp_path):
    _, base = _volume(tmp_path, "base")
    _, raw = _volume(tmp_path, "raw", filter_scale=0.0)
    _, strong = _volume(tmp_path, "strong", filter_scale=2.0)
    assert _high_frequency_share(raw) > 3 * _high_frequency_share(base) > 3 * _high_frequency_share(strong)
    _, blue = _volume(tmp_path, "blue", noise_exponent=1.5, snr=0.2)
    _, red = _volume(tmp_path, "red", noise_exponent=-1.5, snr=0.2)
    assert _high_frequency_share(blue) > 2 * _high_frequency_share(red)
    _, flips = _volume(tmp_path, "flips", ctf_corrected_rate=0.0, snr=20.0)
    _, corrected = _volume(tmp_path, "corrected", snr=20.0)
    assert np.corrcoef(flips.ravel(), corrected.ravel())[0, 1] < 0.9


def test_knobs_are_recorded_per_run(tmp_path):
    config = SimConfig.preset("tiny", family="B", n_train=2, n_test=1, types=("denoised",), seed=2)
    result = simulate_dataset(tmp_path / "b", config, progress=False)
    for run, params in result.run_params.items():
        imaging = params["imaging"]
        assert 45.0 <= imaging["tilt_range_deg"] <= 56.0 and 1e4 <= imaging["defocus_A"] <= 2.5e4
        assert imaging["ctf_corrected"] is False and 0.3 <= imaging["filter_scale"] <= 0.7
        assert set(params["decoys"]) == {"cluster", "rod"}
        assert all(set(models) == {"1"} for models in params["particle_models"].values())
        counted = {name: sum(models.values()) for name, models in params["particle_models"].items()}
        assert counted == params["particles"], run


def test_families_are_disjoint_and_valid():
    models = [set(FAMILIES[f]["particle_models"]) for f in FAMILIES]
    decoys = [set(FAMILIES[f]["decoys"]) for f in FAMILIES]
    defocus = sorted(FAMILIES[f]["defocus_um"] for f in FAMILIES)
    for i in range(len(FAMILIES)):
        for j in range(i):
            assert not models[i] & models[j] and not decoys[i] & decoys[j]
    assert all(a[1] <= b[0] for a, b in zip(defocus, defocus[1:]))  # defocus ranges do not overlap
    for family in FAMILIES:
        SimConfig.preset("small", family=family)
    with pytest.raises(ConfigError, match="unknown simulator family 'D'"):
        SimConfig.preset("small", family="D")


@pytest.mark.parametrize("overrides, match", [
    ({"particle_models": (0, 3)}, "particle_models"),
    ({"particle_models": ()}, "particle_models"),
    ({"decoys": ("blob", "virus")}, "decoys"),
    ({"decoys": "blob"}, "the string 'blob'"),
    ({"subunit_jitter": 0.5}, r"subunit_jitter must be a number in \[0, 0.2\]"),
    ({"sign_flip_rate": 1.5}, "sign_flip_rate"),
    ({"tilt_range_deg": (40.0, 95.0)}, "tilt_range_deg"),
    ({"defocus_um": (5.0, 1.0)}, "defocus_um"),
    ({"noise_exponent": "blue"}, "noise_exponent must be one number or 2"),
    ({"ice_rate": -1.0}, "ice_rate"),
])
def test_bad_knobs_are_refused_by_name(overrides, match):
    with pytest.raises(ConfigError, match=match):
        SimConfig(**overrides)


def test_a_single_number_is_a_fixed_range():
    assert SimConfig(tilt_range_deg=50).tilt_range_deg == (50.0, 50.0)


def test_cli_family_sets_the_world_and_an_unknown_one_is_refused(tmp_path, capsys):
    import czii.cli

    out = tmp_path / "fam"
    argv = ["simulate", "--out", str(out), "--preset", "tiny", "--family", "C", "--n-train", "1", "--n-test", "0",
            "--types", "denoised"]
    assert czii.cli.main(argv) == 0
    config = json.loads((out / "simulation.json").read_text())["config"]
    assert config["particle_models"] == [2] and config["decoys"] == ["aggregate", "filament"]
    assert config["defocus_um"] == [3.5, 5.0] and config["n_train"] == 1  # the family, then the flags
    assert czii.cli.main(["simulate", "--out", str(tmp_path / "x"), "--family", "Z"]) == 2
    assert "unknown simulator family 'Z'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
