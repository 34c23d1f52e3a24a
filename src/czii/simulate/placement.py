"""Placement of the simulator: what goes where in a scene (:mod:`czii.simulate.scene`).

Particles first (largest classes first, at random or where a real run has its picks), then
membranes, gold, decoys and ice, each at a free position (:meth:`czii.simulate.scene.Scene.is_free`);
a carbon edge, when a run has one, is laid down before everything else so that nothing sits in it.
Centres are uniform in x, y and Beta(2, 2)-distributed across the lamella (biased to its interior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from czii.errors import DataError
from czii.geometry import CZII_SHAPE_ZYX, CZII_SPACING_ZYX_A
from czii.particles import BY_NAME, PARTICLE_NAMES, PARTICLES
from czii.simulate.scene import (
    MEMBRANE_HALF_THICKNESS_A, Blob, CarbonEdge, Membrane, Scene, random_rotation,
)
from czii.simulate.shapes import EDGE_A, Part, decoy_parts, decoy_radius, particle_parts, random_warp

GOLD_DENSITY = 8.0
PLACEMENT_ATTEMPTS = 300
NEAR_GAP_A = 20.0  # a decoy placed beside a particle stays within this gap of touching it
MEMBRANE_ATTEMPTS = 100

# Mean curated picks per class in one real 184×630×630 training run (the seven CZII runs).
REAL_PICKS_PER_RUN: dict[str, float] = {
    "apo-ferritin": 375 / 7,
    "beta-amylase": 87 / 7,
    "beta-galactosidase": 112 / 7,
    "ribosome": 331 / 7,
    "thyroglobulin": 251 / 7,
    "virus-like-particle": 113 / 7,
}

@dataclass(frozen=True)
class ParticleStyle:
    """How particles are drawn: allowed model variants, subunit jitter and warp (fractions of the radius), and
    the spread of the per-particle density (its log is uniform in ±``density_jitter``)."""

    models: tuple[int, ...] = (0,)
    jitter: float = 0.0
    warp: float = 0.0
    density_jitter: float = 0.0

    def make(self, name: str, center_xyz_A: np.ndarray, rng: np.random.Generator) -> Blob:
        radius = BY_NAME[name].radius_A
        variant = self.models[int(rng.integers(len(self.models)))] if len(self.models) > 1 else self.models[0]
        parts = particle_parts(name, radius, variant, self.jitter, self.warp * radius, rng)
        warp = random_warp(radius, self.warp * radius, rng) if self.warp else None
        density = float(np.exp(rng.uniform(-self.density_jitter, self.density_jitter))) if self.density_jitter else 1.0
        return Blob(name, center_xyz_A, radius, random_rotation(rng), density, parts, warp, str(variant))


def _sample_center(scene: Scene, radius_A: float, rng: np.random.Generator) -> np.ndarray:
    """A centre uniform in x, y and Beta(2, 2)-distributed across the lamella (biased to its interior)."""
    ext = scene.extent_xyz_A
    x, y = rng.uniform(0.0, ext[0]), rng.uniform(0.0, ext[1])
    lo, hi = scene.lamella.faces_A(np.float64(x), np.float64(y))
    margin = min(radius_A, 0.25 * (hi - lo))
    z = lo + margin + (hi - lo - 2 * margin) * rng.beta(2.0, 2.0)
    return np.array([x, y, np.clip(z, 0.0, ext[2])])


def place_random_particles(
    scene: Scene, counts: dict[str, int], rng: np.random.Generator, style: ParticleStyle = ParticleStyle()
) -> dict[str, int]:
    """Add up to ``counts[class]`` particles per class at random free positions, largest classes first.

    Returns how many of each class could be placed (a crowded volume may take fewer).
    """
    placed = {name: 0 for name in counts}
    for particle in sorted(PARTICLES, key=lambda p: -p.radius_A):
        for _ in range(counts.get(particle.name, 0)):
            for _ in range(PLACEMENT_ATTEMPTS):
                center = _sample_center(scene, particle.radius_A, rng)
                if scene.is_free(center, particle.radius_A):
                    scene.particles.append(style.make(particle.name, center, rng))
                    placed[particle.name] += 1
                    break
            else:
                break
    return placed


def load_real_picks(csv_path: str) -> pd.DataFrame:
    """The real training picks table (x, y, z Å, particle_type, experiment); DataError naming the file if unusable."""
    try:
        df = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read the real picks table ({exc})") from None
    missing = {"x", "y", "z", "particle_type", "experiment"} - set(df.columns)
    if missing:
        raise DataError(f"{csv_path}: real picks table lacks columns {sorted(missing)}; has {list(df.columns)}")
    unknown = set(df["particle_type"]) - set(PARTICLE_NAMES)
    if unknown:
        raise DataError(f"{csv_path}: unknown particle types {sorted(unknown)}")
    return df


def place_real_particles(
    scene: Scene, real_run: pd.DataFrame, rng: np.random.Generator, style: ParticleStyle = ParticleStyle()
) -> dict:
    """Replicate one real run's picks in ``scene``.

    Mapping (documented in simulation.json): x and y are cropped to a random window of the
    scene's extent inside the real 630×630-voxel field (no crop when the scene is as wide);
    z is scaled by ``min(1, scene depth / real depth)`` so the real depth profile is kept.
    Picks landing outside the scene, or overlapping an already kept particle (classes taken
    largest radius first, rows in file order), are dropped. Returns the window and scale.
    """
    ext = scene.extent_xyz_A
    real_ext = ((np.asarray(CZII_SHAPE_ZYX) - 1) * np.asarray(CZII_SPACING_ZYX_A))[::-1]
    origin_xy = [float(rng.uniform(0.0, max(0.0, real_ext[i] - ext[i]))) for i in (0, 1)]
    z_scale = float(min(1.0, ext[2] / real_ext[2]))
    xyz = real_run[["x", "y", "z"]].to_numpy(dtype=np.float64) - [origin_xy[0], origin_xy[1], 0.0]
    xyz[:, 2] *= z_scale
    order = sorted(range(len(real_run)), key=lambda i: -BY_NAME[real_run["particle_type"].iloc[i]].radius_A)
    dropped = 0
    for i in order:
        name = real_run["particle_type"].iloc[i]
        radius = BY_NAME[name].radius_A
        center = xyz[i]
        if np.all(center >= 0.0) and np.all(center <= ext) and scene.is_free(center, radius):
            scene.particles.append(style.make(name, center, rng))
        else:
            dropped += 1
    return {"window_origin_xy_A": origin_xy, "z_scale": z_scale, "dropped": dropped}


def add_membranes(scene: Scene, n_vesicles: int, n_patches: int, rng: np.random.Generator) -> int:
    """Add vesicles (closed, radius 200–800 Å) and curved patches (radius 1.5–6 µm, 0.6–2.5 µm across)
    that keep clear of every solid already placed; returns how many fitted."""
    ext = scene.extent_xyz_A
    added = 0
    for vesicle in [True] * n_vesicles + [False] * n_patches:
        for _ in range(MEMBRANE_ATTEMPTS):
            point = _sample_center(scene, 0.0, rng)
            axis = rng.standard_normal(3)
            axis /= np.linalg.norm(axis)
            if vesicle:
                radius = float(np.exp(rng.uniform(np.log(200.0), np.log(800.0))))
                radius = min(radius, 0.45 * float(max(ext[0], ext[1])))
                membrane = Membrane(point, radius, axis, np.pi)
            else:
                radius = float(rng.uniform(1500.0, 6000.0))
                half_angle = float(rng.uniform(600.0, 2500.0)) / (2 * radius)
                membrane = Membrane(point - radius * axis, radius, axis, half_angle)
            solids = scene.solids()
            if solids:
                centers = np.array([b.center_xyz_A for b in solids])
                radii = np.array([b.radius_A for b in solids])
                if np.any(membrane.distance_A(centers) < radii + MEMBRANE_HALF_THICKNESS_A):
                    continue
            scene.membranes.append(membrane)
            added += 1
            break
    return added


def _place(scene: Scene, blob_at, radius_A: float, rng: np.random.Generator, near: bool = False) -> bool:
    """Put ``blob_at(center)`` at a free centre (beside a random particle when ``near``); False if none fitted."""
    for _ in range(PLACEMENT_ATTEMPTS):
        if near and scene.particles:
            host = scene.particles[int(rng.integers(len(scene.particles)))]
            direction = rng.standard_normal(3)
            gap = host.radius_A + radius_A + rng.uniform(0.0, NEAR_GAP_A)
            center = host.center_xyz_A + direction / np.linalg.norm(direction) * gap
            if np.any(center < 0) or np.any(center > scene.extent_xyz_A):
                continue
        else:
            center = _sample_center(scene, radius_A, rng)
        if scene.is_free(center, radius_A):
            scene.others.append(blob_at(center))
            return True
    return False


def add_gold(scene: Scene, n_gold: int, rng: np.random.Generator) -> int:
    """Add gold fiducials (radius 25–50 Å, very dense) at free positions; returns how many fitted."""
    fitted = 0
    for _ in range(n_gold):
        radius = float(rng.uniform(25.0, 50.0))
        parts = (Part((0.0, 0.0, 0.0), (radius - EDGE_A,) * 3),)
        def blob_at(center, radius=radius, parts=parts):
            return Blob("gold", center, radius, random_rotation(rng), GOLD_DENSITY, parts)

        fitted += _place(scene, blob_at, radius, rng)
    return fitted


def add_decoys(
    scene: Scene, n_decoys: int, kinds: tuple[str, ...], near_fraction: float, rng: np.random.Generator
) -> dict[str, int]:
    """Add decoys (kinds of :data:`czii.simulate.shapes.DECOY_KINDS`, drawn evenly; density 0.4–1) at free
    positions, a fraction ``near_fraction`` of them beside a particle (within 20 Å of touching it);
    returns how many of each kind fitted."""
    fitted = {kind: 0 for kind in kinds}
    for _ in range(n_decoys):
        kind = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
        radius = decoy_radius(kind, rng)
        parts = decoy_parts(kind, radius, rng)
        density = float(rng.uniform(0.4, 1.0))
        near = bool(near_fraction) and rng.random() < near_fraction

        def blob_at(center, radius=radius, parts=parts, density=density, kind=kind):
            return Blob("decoy", center, radius, random_rotation(rng), density, parts, model=kind)

        fitted[kind] += _place(scene, blob_at, radius, rng, near)
    return fitted


def add_ice(scene: Scene, n_ice: int, rng: np.random.Generator) -> int:
    """Add ice contamination: dense balls (radius 150–400 Å, density 1.5–3) sitting on a lamella face."""
    ext = scene.extent_xyz_A
    fitted = 0
    for _ in range(n_ice):
        radius = float(rng.uniform(150.0, 400.0))
        parts = (Part((0.0, 0.0, 0.0), (radius - EDGE_A,) * 3),)
        density = float(rng.uniform(1.5, 3.0))
        for _ in range(PLACEMENT_ATTEMPTS):
            x, y = rng.uniform(0.0, ext[0]), rng.uniform(0.0, ext[1])
            faces = scene.lamella.faces_A(np.float64(x), np.float64(y))
            center = np.array([x, y, faces[int(rng.integers(2))] + rng.uniform(-0.5, 0.5) * radius])
            if scene.is_free(center, radius):
                scene.others.append(Blob("ice", center, radius, np.eye(3), density, parts))
                fitted += 1
                break
    return fitted


def add_carbon_edge(scene: Scene, rng: np.random.Generator) -> CarbonEdge:
    """Cover one side of the field with carbon film (density 1–2) up to a random line (10–40 % of the width)."""
    ext = scene.extent_xyz_A
    angle = rng.uniform(0.0, 2.0 * np.pi)
    normal = (float(np.cos(angle)), float(np.sin(angle)))
    width = abs(normal[0]) * ext[0] + abs(normal[1]) * ext[1]
    far = max(normal[0] * ext[0], 0.0) + max(normal[1] * ext[1], 0.0)  # the field's largest (x, y)·normal
    scene.carbon = CarbonEdge(normal, float(far - rng.uniform(0.1, 0.4) * width), float(rng.uniform(1.0, 2.0)))
    return scene.carbon
