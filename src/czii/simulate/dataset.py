"""Built-in simulator of CZII-like data: ``simulate_dataset(out_dir, config) -> SimResult``.

Layout written (docs/ARCHITECTURE.md, "Simulator")::

    out_dir/
      copick_config.json   filesystem copick project over out_dir/copick (training runs)
      copick/static/ExperimentRuns/<run>/VoxelSpacing10.000/<type>.zarr
      copick/overlay/ExperimentRuns/<run>/Picks/curation_0_<object>.json
      kaggle/train/static/ExperimentRuns/<run>/VoxelSpacing10.000/<type>.zarr   (hard links)
      kaggle/train/overlay/ExperimentRuns/<run>/Picks/<object>.json
      kaggle/test/static/ExperimentRuns/<run>/VoxelSpacing10.000/denoised.zarr
      kaggle/solution.csv  truth of the test runs: id, experiment, particle_type, x, y, z (Å)
      simulation.json      the SimConfig used and every run's drawn parameters

Choices worth knowing:

- The copick project holds the training runs only (the test runs are unlabelled, as on
  Kaggle; their truth is ``kaggle/solution.csv``). Its roots are absolute paths of ``out_dir``:
  a moved dataset needs its ``copick_config.json`` roots updated.
- ``object_names`` (canonical class → name written) renames the objects in the copick config,
  picks files and picks documents; ``type_names`` (recipe → name written) renames tomogram
  types. ``solution.csv`` and :attr:`SimResult.picks` always use the canonical class names.
- The ``VoxelSpacing`` folder carries the spacing rounded to whole Å (10.012 → ``10.000``, as
  in the competition data); the exact spacing is in each tomogram's ``.zattrs``.
- Everything is built in a hidden temporary sibling of ``out_dir`` and renamed into place at
  the end, so a failure leaves nothing behind. Identical configs give byte-identical files
  (``copick_config.json`` aside: it names ``out_dir``).

Particle counts (``layout="random"``) are Poisson around the mean real density (curated picks
per real 184×630×630 run, scaled to the volume and by ``density_scale``), at least
``min_per_class``. ``layout="real"`` replicates the picks of a real training run instead (run
``i`` uses real run ``i mod 7`` and, for training runs, takes its name; see
:func:`czii.simulate.placement.place_real_particles`).
Realism knobs (each drawn per run and recorded in ``simulation.json``): ``snr`` (times a per-run
factor e^U(±0.35)), ``contrast`` (particle density times ``contrast``·U(0.8, 1.2)), ``density_scale``
(crowding), ``ice_gradient`` (a linear ramp of ± ``ice_gradient`` tomogram standard deviations
across the field along a random y-x direction, as a lamella thickening from one side adds
background), ``intensity_scale_log10`` and ``intensity_offset`` (each tomogram is mapped to
``offset − scale·v`` with log10(scale) ~ U(range) and offset ~ U(range)·scale: the real CZII
values are near 1e-5).
World knobs (defaults keep the original world, and with them the same bytes): ``particle_models``
(which of the three models of each class a run draws from), ``subunit_jitter`` and ``particle_warp``
(fractions of the radius), ``particle_density_jitter`` (log-uniform spread of each particle's
density), ``decoys`` (kinds of :data:`czii.simulate.shapes.DECOY_KINDS`), ``decoys_per_particle``,
``decoy_near_fraction`` (share placed beside a particle), ``ice_rate`` and ``carbon_edge_rate``; and
per-run imaging drawn from ranges: ``tilt_range_deg`` (± of the tilt series), ``tilt_axis_deg``
(in-plane angle of the tilt axis from y), ``defocus_um``, ``ctf_corrected_rate`` (share of runs whose
denoised tomogram has its phase flips corrected), ``noise_exponent`` (noise colour), ``filter_scale``
(reconstruction low-pass, 0 = none) and ``sign_flip_rate`` (share of runs with protein brighter than
solvent). A range given as one number is fixed; a fixed knob draws no random number.
:data:`czii.simulate.config.FAMILIES`
names three worlds (``SimConfig.preset(name, family="A")``) with disjoint particle models, decoys and
imaging, for out-of-family tests. ``run_prefix`` starts every run name (datasets of several
families joined into one stay distinct).
Scene and imaging models: :mod:`czii.simulate.scene`, :mod:`czii.simulate.imaging`, shapes:
:mod:`czii.simulate.shapes`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from czii.formats.omezarr import write_ome_zarr
from czii.formats.picks_json import picks_document, write_picks_json
from czii.simulate.config import TEST_TOMO_TYPE, SimConfig
from czii.simulate.imaging import Imaging, image_tomograms
from czii.simulate.placement import (
    REAL_PICKS_PER_RUN, ParticleStyle, add_carbon_edge, add_decoys, add_gold, add_ice, add_membranes, load_real_picks,
    place_random_particles, place_real_particles,
)
from czii.simulate.scene import Scene, new_scene, render_density
from czii.data.staging import TRUTH_SESSION_ID, TRUTH_USER_ID
from czii.errors import ConfigError
from czii.geometry import CZII_SHAPE_ZYX
from czii.io import temp_sibling
from czii.particles import PARTICLE_NAMES, PARTICLES
from czii.submission import SUBMISSION_COLUMNS

# Recorded in simulation.json; raised whenever the same SimConfig writes different volumes.
# 2: pyramid levels are anti-aliased subsamples that sit where their metadata says (1: block means).
SIMULATOR_VERSION = 2
@dataclass(frozen=True)
class SimResult:
    """What :func:`simulate_dataset` wrote; ``picks`` holds every run's truth with canonical class names."""

    out_dir: Path
    config: SimConfig
    train_runs: tuple[str, ...]
    test_runs: tuple[str, ...]
    picks: pd.DataFrame
    run_params: dict[str, dict]

    @property
    def copick_config(self) -> Path:
        return self.out_dir / "copick_config.json"

    @property
    def kaggle_dir(self) -> Path:
        return self.out_dir / "kaggle"

    @property
    def solution_csv(self) -> Path:
        return self.kaggle_dir / "solution.csv"

    def tomogram_path(self, run: str, recipe: str = TEST_TOMO_TYPE) -> Path:
        """The ``.zarr`` of ``run`` imaged with ``recipe`` (copick tree for train runs, else the Kaggle test tree)."""
        root = self.out_dir / "copick" if run in self.train_runs else self.kaggle_dir / "test"
        return _tomogram_dir(root / "static", run, self.config.spacing_zyx_A) / f"{self.config.type_name(recipe)}.zarr"


def _tomogram_dir(static_root: Path, run: str, spacing_zyx_A: Sequence[float]) -> Path:
    return static_root / "ExperimentRuns" / run / f"VoxelSpacing{round(spacing_zyx_A[-1]):.3f}"


def _link_tree(src: Path, dst: Path) -> None:
    """Mirror ``src`` at ``dst`` with hard links (copies where the filesystem refuses links)."""
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copy2(Path(root) / name, target / name)


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: output path exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir}: output directory exists and is not empty (use overwrite=True / --overwrite)")
        if not (out_dir / "simulation.json").is_file():
            raise ConfigError(
                f"{out_dir}: refusing to overwrite a directory that is not a simulator output (no simulation.json)"
            )


def _draw(rng: np.random.Generator, low_high: tuple[float, float]) -> float:
    """A value uniform in ``low_high``; a fixed value (low = high) draws nothing, so fixed knobs keep the stream."""
    low, high = low_high
    return float(rng.uniform(low, high)) if high > low else low


def _happens(rng: np.random.Generator, rate: float) -> bool:
    """True with probability ``rate``; rates of 0 and 1 draw nothing."""
    return rate >= 1.0 or (rate > 0.0 and bool(rng.random() < rate))


def _draw_run(
    config: SimConfig, run: str, index: int, rng: np.random.Generator, real: pd.DataFrame | None
) -> tuple[Scene, Imaging, float, dict]:
    """Build one run's scene and imaging parameters; returns (scene, imaging, particle contrast, params)."""
    scene = new_scene(config.shape_zyx, config.spacing_zyx_A, rng)
    volume_fraction = float(np.prod(config.shape_zyx) / np.prod(CZII_SHAPE_ZYX))
    params: dict = {"lamella": asdict(scene.lamella)}
    if _happens(rng, config.carbon_edge_rate):
        params["carbon_edge"] = asdict(add_carbon_edge(scene, rng))
    style = ParticleStyle(config.particle_models, config.subunit_jitter, config.particle_warp,
                          config.particle_density_jitter)
    if real is None:
        requested = {
            name: max(config.min_per_class, int(rng.poisson(mean * volume_fraction * config.density_scale)))
            for name, mean in REAL_PICKS_PER_RUN.items()
        }
        placed = place_random_particles(scene, requested, rng, style)
        short = [name for name in PARTICLE_NAMES if placed[name] < config.min_per_class]
        if short:
            raise ConfigError(
                f"run {run}: could not fit min_per_class={config.min_per_class} particles of {short} in a "
                f"{'×'.join(map(str, config.shape_zyx))} volume; use a larger shape or a lower "
                "density_scale/min_per_class"
            )
        params["requested"] = requested
    else:
        source_runs = sorted(real["experiment"].unique())
        source = source_runs[index % len(source_runs)]
        placed_real = place_real_particles(scene, real[real["experiment"] == source], rng, style)
        params["real_source"] = {"run": source, **placed_real}
    n_vesicles = int(rng.poisson(config.membrane_rate * (0.4 + 2.0 * volume_fraction)))
    n_patches = int(rng.poisson(config.membrane_rate * (0.3 + 1.5 * volume_fraction)))
    params["membranes"] = add_membranes(scene, n_vesicles, n_patches, rng)
    n_gold = int(rng.poisson(config.gold_rate * (0.3 + 4.0 * volume_fraction)))
    n_decoys = int(rng.poisson(config.decoys_per_particle * max(len(scene.particles), 1)))
    params["gold"] = add_gold(scene, n_gold, rng)
    params["decoys"] = add_decoys(scene, n_decoys, config.decoys, config.decoy_near_fraction, rng)
    if config.ice_rate:
        params["ice"] = add_ice(scene, int(rng.poisson(config.ice_rate * (0.3 + 2.0 * volume_fraction))), rng)
    params["particles"] = scene.counts()
    params["particle_models"] = {
        name: {m: sum(b.kind == name and b.model == m for b in scene.particles)
               for m in map(str, config.particle_models)}
        for name in PARTICLE_NAMES
    }
    contrast = float(config.contrast * rng.uniform(0.8, 1.2))
    scale = float(10.0 ** rng.uniform(*config.intensity_scale_log10))
    low_defocus, high_defocus = config.defocus_um
    imaging = Imaging(
        defocus_A=float(rng.uniform(low_defocus * 1e4, high_defocus * 1e4)),
        bfactor_A2=float(rng.uniform(200.0, 800.0)),
        snr=float(config.snr * np.exp(rng.uniform(-0.35, 0.35))),
        tilt_range_deg=_draw(rng, config.tilt_range_deg),
        texture_std=float(rng.uniform(0.03, 0.08)),
        intensity_scale=scale,
        intensity_offset=float(rng.uniform(*config.intensity_offset) * scale),
        ice_gradient=config.ice_gradient,
        ice_angle_rad=float(rng.uniform(0.0, 2.0 * np.pi)) if config.ice_gradient else 0.0,
        tilt_axis_deg=_draw(rng, config.tilt_axis_deg),
        ctf_corrected=_happens(rng, config.ctf_corrected_rate),
        noise_exponent=_draw(rng, config.noise_exponent),
        filter_scale=_draw(rng, config.filter_scale),
        sign=-1.0 if _happens(rng, config.sign_flip_rate) else 1.0,
    )
    params.update(particle_contrast=contrast, imaging=asdict(imaging))
    return scene, imaging, contrast, params


def _write_picks(root: Path, config: SimConfig, scene: Scene, run: str, kaggle: bool) -> None:
    picks_dir = root / "overlay" / "ExperimentRuns" / run / "Picks"
    for particle in PARTICLES:
        name = config.object_name(particle.name)
        xyz = [np.round(b.center_xyz_A, 3) for b in scene.particles if b.kind == particle.name]
        document = picks_document(name, run, np.array(xyz).reshape(-1, 3), TRUTH_USER_ID, TRUTH_SESSION_ID)
        filename = f"{name}.json" if kaggle else f"{TRUTH_USER_ID}_{TRUTH_SESSION_ID}_{name}.json"
        write_picks_json(picks_dir / filename, document)


def _copick_config(config: SimConfig, out_dir: Path) -> dict:
    objects = [
        {
            "name": config.object_name(p.name), "is_particle": True, "label": p.label,
            "color": list(p.color_rgba), "radius": p.radius_A, "pdb_id": p.pdb_id,
        }
        for p in PARTICLES
    ]
    return {
        "config_type": "filesystem",
        "name": "czii-simulated",
        "description": f"Simulated CZII-like training runs (czii simulate, seed {config.seed})",
        "version": "1.0.0",
        "pickable_objects": objects,
        "overlay_root": str(out_dir / "copick" / "overlay"),
        "overlay_fs_args": {"auto_mkdir": True},
        "static_root": str(out_dir / "copick" / "static"),
    }


def _train_run_names(n_train: int, real: pd.DataFrame | None) -> tuple[str, ...]:
    """``TS_sim_00``…; with a real layout, training run ``i`` takes the name of the real run it replicates
    (``TS_5_4``…, ``TS_5_4_sim1`` once every real run is used), so configs written for the real runs
    (their folds name them) run unchanged on the simulated rehearsal."""
    if real is None:
        return tuple(f"TS_sim_{i:02d}" for i in range(n_train))
    sources = sorted(real["experiment"].unique())
    return tuple(
        sources[i % len(sources)] + (f"_sim{i // len(sources)}" if i >= len(sources) else "") for i in range(n_train)
    )


def _build(tmp: Path, out_dir: Path, config: SimConfig, real: pd.DataFrame | None, progress: bool | None) -> SimResult:
    train_runs = tuple(config.run_prefix + name for name in _train_run_names(config.n_train, real))
    test_runs = tuple(f"{config.run_prefix}TS_test_{i:02d}" for i in range(config.n_test))
    runs = [(r, "train") for r in train_runs] + [(r, "test") for r in test_runs]
    seeds = np.random.SeedSequence(config.seed).spawn(len(runs))
    steps = len(runs) + config.n_train * len(config.types) + config.n_test
    picks, run_params = [], {}
    with tqdm(total=steps, desc="simulate", unit="step", disable=None if progress is None else not progress) as bar:
        for index, ((run, split), seed) in enumerate(zip(runs, seeds)):
            bar.set_postfix_str(f"{run}: scene")
            rng = np.random.default_rng(seed)
            scene, imaging, contrast, params = _draw_run(config, run, index, rng, real)
            run_params[run] = {"split": split, **params}
            picks.append(scene.picks(run))
            bar.update()
            types = config.types if split == "train" else (TEST_TOMO_TYPE,)
            root = tmp / ("copick" if split == "train" else "kaggle/test")
            tomo_dir = _tomogram_dir(root / "static", run, config.spacing_zyx_A)
            tomograms = image_tomograms(render_density(scene, contrast), config.spacing_zyx_A, imaging, types, rng)
            for recipe, volume in tomograms:
                bar.set_postfix_str(f"{run}: {recipe}")
                write_ome_zarr(tomo_dir / f"{config.type_name(recipe)}.zarr", volume, config.spacing_zyx_A)
                del volume
                bar.update()
            if split == "train":
                _link_tree(tomo_dir, _tomogram_dir(tmp / "kaggle/train/static", run, config.spacing_zyx_A))
                _write_picks(tmp / "copick", config, scene, run, kaggle=False)
                _write_picks(tmp / "kaggle/train", config, scene, run, kaggle=True)
    all_picks = pd.concat(picks, ignore_index=True)
    solution = all_picks[all_picks["experiment"].isin(test_runs)].reset_index(drop=True)
    solution.insert(0, "id", np.arange(len(solution)))
    (tmp / "kaggle").mkdir(exist_ok=True)
    solution[list(SUBMISSION_COLUMNS)].to_csv(tmp / "kaggle" / "solution.csv", index=False)
    (tmp / "copick_config.json").write_text(json.dumps(_copick_config(config, out_dir), indent=4) + "\n")
    simulation = {"simulator_version": SIMULATOR_VERSION, "config": config.to_dict(), "train_runs": train_runs,
                  "test_runs": test_runs, "runs": run_params}
    (tmp / "simulation.json").write_text(json.dumps(simulation, indent=2) + "\n")
    return SimResult(out_dir, config, train_runs, test_runs, all_picks, run_params)


def simulate_dataset(
    out_dir: str | Path, config: SimConfig, *, overwrite: bool = False, progress: bool | None = None
) -> SimResult:
    """Simulate ``config`` into ``out_dir`` (layout in the module docstring) and describe what was written.

    An existing non-empty ``out_dir`` is refused unless ``overwrite`` is true and it holds a
    previous simulation (``simulation.json``). ``progress``: show the tqdm bar (None: only on a TTY).
    """
    out_dir = Path(out_dir).absolute()
    _check_destination(out_dir, overwrite)
    real = load_real_picks(config.real_picks_csv) if config.layout == "real" else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temp_sibling(out_dir), temp_sibling(out_dir, "old")
    try:
        tmp.mkdir()
        result = _build(tmp, out_dir, config, real, progress)
        if out_dir.exists():
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except OSError:
            if old.exists():
                old.rename(out_dir)
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    return result
