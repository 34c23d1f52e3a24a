"""Scene model of the simulator: what lies where in one run, and its density volume.

A scene is a lamella (a slab of background density with two parallel, slightly tilted faces)
holding the six particle classes, crowding distractors (blobs of no class), membranes
(vesicles and curved patches with a ~4 nm bilayer profile) and gold fiducials. Densities are
"protein = 1" units above the solvent; imaging (:mod:`czii.simulate.imaging`) turns them
into tomograms. Positions are x, y, z in Å (voxel index ``i`` is centred at ``i * spacing``).

Particle shapes are analytic and sized so that every voxel with density lies within the
class radius from :mod:`czii.particles`:

- apo-ferritin: hollow spherical shell (cavity 0.65 × radius)
- virus-like-particle: thin shell (inner 0.84 × radius) with packaged-RNA density inside
- ribosome: large subunit ellipsoid + small subunit ellipsoid on one side
- thyroglobulin: elongated dimer of two tilted ellipsoids
- beta-galactosidase: four lobes in a D2 arrangement around a small core
- beta-amylase: one small compact ellipsoid

Each object gets a uniformly random 3-D orientation (its sampling grid is rotated). Solid
objects never overlap: centres are at least the sum of their radii apart (so are particles
and membranes: a particle keeps ``radius + MEMBRANE_HALF_THICKNESS_A`` from the bilayer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from czii.errors import DataError
from czii.geometry import CZII_SHAPE_ZYX, CZII_SPACING_ZYX_A
from czii.particles import BY_NAME, PARTICLE_NAMES, PARTICLES

EDGE_A = 5.0  # soft-edge half width of every analytic shape
GOLD_DENSITY = 8.0
MEMBRANE_DENSITY = 0.9
LEAFLET_OFFSET_A = 13.0  # head-group layers at ±13 Å, σ 5 Å: a bilayer ~4 nm thick
LEAFLET_SIGMA_A = 5.0
MEMBRANE_HALF_THICKNESS_A = 25.0
LAMELLA_EDGE_A = 40.0
PLACEMENT_ATTEMPTS = 300
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

Shape = Callable[[np.ndarray, float], np.ndarray]


def _soft(signed_distance_A: np.ndarray) -> np.ndarray:
    """Occupancy in [0, 1] from a signed distance (negative inside), linear over ±EDGE_A."""
    return np.clip(0.5 - signed_distance_A / (2.0 * EDGE_A), 0.0, 1.0)


def _ball(p: np.ndarray, center, radius_A: float) -> np.ndarray:
    return _soft(np.linalg.norm(p - np.asarray(center, dtype=p.dtype), axis=1) - radius_A)


def _ellipsoid(p: np.ndarray, center, semi_axes_A, rotation: np.ndarray | None = None) -> np.ndarray:
    q = p - np.asarray(center, dtype=p.dtype)
    if rotation is not None:
        q = q @ rotation.astype(p.dtype)
    semi = np.asarray(semi_axes_A, dtype=p.dtype)
    return _soft((np.linalg.norm(q / semi, axis=1) - 1.0) * semi.max())


def _rot_z(deg: float) -> np.ndarray:
    return Rotation.from_euler("z", deg, degrees=True).as_matrix()


def _apo_ferritin(p: np.ndarray, r: float) -> np.ndarray:
    d = np.linalg.norm(p, axis=1)
    return _soft(d - r) - _soft(d - 0.65 * r)


def _virus_like_particle(p: np.ndarray, r: float) -> np.ndarray:
    d = np.linalg.norm(p, axis=1)
    return _soft(d - r) - _soft(d - 0.84 * r) + 0.35 * _soft(d - 0.6 * r)


def _ribosome(p: np.ndarray, r: float) -> np.ndarray:
    large = _ellipsoid(p, (0.0, 0.0, -0.16 * r), (0.7 * r, 0.62 * r, 0.55 * r))
    small = _ellipsoid(p, (0.08 * r, 0.0, 0.56 * r), (0.6 * r, 0.4 * r, 0.28 * r))
    return np.maximum(large, small)


def _thyroglobulin(p: np.ndarray, r: float) -> np.ndarray:
    semi = (0.52 * r, 0.33 * r, 0.3 * r)
    left = _ellipsoid(p, (-0.45 * r, 0.0, 0.0), semi, _rot_z(20.0))
    right = _ellipsoid(p, (0.45 * r, 0.0, 0.0), semi, _rot_z(-20.0))
    return np.maximum(left, right)


def _beta_galactosidase(p: np.ndarray, r: float) -> np.ndarray:
    lobes = [_ball(p, (sx * 0.5 * r, sy * 0.3 * r, sx * sy * 0.1 * r), 0.4 * r) for sx in (-1, 1) for sy in (-1, 1)]
    return np.maximum.reduce(lobes + [_ball(p, (0.0, 0.0, 0.0), 0.3 * r)])


def _beta_amylase(p: np.ndarray, r: float) -> np.ndarray:
    return _ellipsoid(p, (0.0, 0.0, 0.0), (r, 0.8 * r, 0.65 * r))


SHAPES: dict[str, Shape] = {
    "apo-ferritin": _apo_ferritin,
    "beta-amylase": _beta_amylase,
    "beta-galactosidase": _beta_galactosidase,
    "ribosome": _ribosome,
    "thyroglobulin": _thyroglobulin,
    "virus-like-particle": _virus_like_particle,
}


def particle_density(name: str, points_xyz_A: np.ndarray) -> np.ndarray:
    """Density of class ``name`` at body-frame points (N, 3) Å around its centre; zero beyond its radius."""
    return SHAPES[name](points_xyz_A, BY_NAME[name].radius_A - EDGE_A)


@dataclass(frozen=True)
class Lamella:
    """Slab between ``z_lo + slope·(x, y)`` and ``z_hi + slope·(x, y)`` (Å) filled with ``background``."""

    z_lo_A: float
    z_hi_A: float
    slope_xy: tuple[float, float]
    center_xy_A: tuple[float, float]
    background: float

    def faces_A(self, x_A: np.ndarray, y_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tilt = self.slope_xy[0] * (x_A - self.center_xy_A[0]) + self.slope_xy[1] * (y_A - self.center_xy_A[1])
        return self.z_lo_A + tilt, self.z_hi_A + tilt


@dataclass(frozen=True)
class Membrane:
    """A spherical bilayer (centre, radius) limited to a cap of ``half_angle`` around ``axis`` (π: vesicle)."""

    center_xyz_A: np.ndarray
    radius_A: float
    axis: np.ndarray
    half_angle: float

    def distance_A(self, points_xyz_A: np.ndarray) -> np.ndarray:
        """Distance (N,) from points to the membrane surface."""
        v = np.atleast_2d(points_xyz_A) - self.center_xyz_A
        norm = np.linalg.norm(v, axis=1)
        cos_angle = (v @ self.axis) / np.maximum(norm, 1e-9)
        on_cap = np.abs(norm - self.radius_A)
        perp = v - np.outer(v @ self.axis, self.axis)
        perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
        rim = self.radius_A * (np.cos(self.half_angle) * self.axis + np.sin(self.half_angle) * perp)
        to_rim = np.linalg.norm(v - rim, axis=1)
        return np.where(cos_angle >= np.cos(self.half_angle), on_cap, to_rim)

    def bbox_xyz_A(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box holding the cap (padded by the bilayer thickness)."""
        theta = np.arccos(np.clip(self.axis, -1.0, 1.0))
        hi = np.cos(np.maximum(0.0, theta - self.half_angle))
        lo = -np.cos(np.maximum(0.0, np.pi - theta - self.half_angle))
        pad = 2 * MEMBRANE_HALF_THICKNESS_A
        return self.center_xyz_A + self.radius_A * lo - pad, self.center_xyz_A + self.radius_A * hi + pad


@dataclass(frozen=True)
class Blob:
    """A solid object: a particle (``kind`` is its class), a ``"distractor"`` or ``"gold"``."""

    kind: str
    center_xyz_A: np.ndarray
    radius_A: float
    rotation: np.ndarray
    density: float
    lobes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = ()

    def render(self, points_xyz_A: np.ndarray) -> np.ndarray:
        body = points_xyz_A @ self.rotation.astype(points_xyz_A.dtype)
        if self.kind in SHAPES:
            return self.density * particle_density(self.kind, body)
        if self.kind == "gold":
            return self.density * _ball(body, (0.0, 0.0, 0.0), self.radius_A - EDGE_A)
        return self.density * np.maximum.reduce([_ellipsoid(body, c, s) for c, s in self.lobes])


@dataclass
class Scene:
    """Everything in one run; ``particles`` carry the truth picks."""

    shape_zyx: tuple[int, int, int]
    spacing_zyx_A: tuple[float, float, float]
    lamella: Lamella
    particles: list[Blob] = field(default_factory=list)
    others: list[Blob] = field(default_factory=list)
    membranes: list[Membrane] = field(default_factory=list)

    @property
    def extent_xyz_A(self) -> np.ndarray:
        """Largest voxel-centre coordinate per axis (x, y, z Å)."""
        return ((np.asarray(self.shape_zyx) - 1) * np.asarray(self.spacing_zyx_A))[::-1]

    def solids(self) -> list[Blob]:
        return self.particles + self.others

    def is_free(self, center_xyz_A: np.ndarray, radius_A: float) -> bool:
        """True when a solid of ``radius_A`` at ``center_xyz_A`` touches no solid and no membrane."""
        solids = self.solids()
        if solids:
            centers = np.array([b.center_xyz_A for b in solids])
            radii = np.array([b.radius_A for b in solids])
            if np.any(np.linalg.norm(centers - center_xyz_A, axis=1) < radii + radius_A):
                return False
        return all(m.distance_A(center_xyz_A)[0] >= radius_A + MEMBRANE_HALF_THICKNESS_A for m in self.membranes)

    def picks(self, run: str) -> pd.DataFrame:
        """Truth picks ``experiment, particle_type, x, y, z`` (Å, rounded to 1 mÅ like the real files)."""
        rows = [(run, b.kind, *np.round(b.center_xyz_A, 3)) for b in self.particles]
        table = pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z"])
        return table.astype({"experiment": object, "particle_type": object, "x": float, "y": float, "z": float})

    def counts(self) -> dict[str, int]:
        kinds = [b.kind for b in self.particles]
        return {name: kinds.count(name) for name in PARTICLE_NAMES}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed 3-D rotation matrix (normalised Gaussian quaternion)."""
    q = rng.standard_normal(4)
    return Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()


def new_scene(
    shape_zyx: tuple[int, int, int], spacing_zyx_A: tuple[float, float, float], rng: np.random.Generator
) -> Scene:
    """An empty scene with a random lamella spanning most of the depth, tilted by up to ~2°."""
    depth_A = (shape_zyx[0] - 1) * spacing_zyx_A[0]
    scene = Scene(tuple(shape_zyx), tuple(spacing_zyx_A), lamella=Lamella(0, 0, (0, 0), (0, 0), 0))
    ext = scene.extent_xyz_A
    scene.lamella = Lamella(
        z_lo_A=float(rng.uniform(0.03, 0.1) * depth_A),
        z_hi_A=float(rng.uniform(0.9, 0.97) * depth_A),
        slope_xy=tuple(float(s) for s in rng.uniform(-0.03, 0.03, 2)),
        center_xy_A=(float(ext[0] / 2), float(ext[1] / 2)),
        background=float(rng.uniform(0.1, 0.3)),
    )
    return scene


def _sample_center(scene: Scene, radius_A: float, rng: np.random.Generator) -> np.ndarray:
    """A centre uniform in x, y and Beta(2, 2)-distributed across the lamella (biased to its interior)."""
    ext = scene.extent_xyz_A
    x, y = rng.uniform(0.0, ext[0]), rng.uniform(0.0, ext[1])
    lo, hi = scene.lamella.faces_A(np.float64(x), np.float64(y))
    margin = min(radius_A, 0.25 * (hi - lo))
    z = lo + margin + (hi - lo - 2 * margin) * rng.beta(2.0, 2.0)
    return np.array([x, y, np.clip(z, 0.0, ext[2])])


def place_random_particles(scene: Scene, counts: dict[str, int], rng: np.random.Generator) -> dict[str, int]:
    """Add up to ``counts[class]`` particles per class at random free positions, largest classes first.

    Returns how many of each class could be placed (a crowded volume may take fewer).
    """
    placed = {name: 0 for name in counts}
    for particle in sorted(PARTICLES, key=lambda p: -p.radius_A):
        for _ in range(counts.get(particle.name, 0)):
            for _ in range(PLACEMENT_ATTEMPTS):
                center = _sample_center(scene, particle.radius_A, rng)
                if scene.is_free(center, particle.radius_A):
                    scene.particles.append(Blob(particle.name, center, particle.radius_A, random_rotation(rng), 1.0))
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


def place_real_particles(scene: Scene, real_run: pd.DataFrame, rng: np.random.Generator) -> dict:
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
            scene.particles.append(Blob(name, center, radius, random_rotation(rng), 1.0))
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


def add_others(scene: Scene, n_gold: int, n_distractors: int, rng: np.random.Generator) -> tuple[int, int]:
    """Add gold fiducials (radius 25–50 Å, very dense) and distractor blobs (radius 25–130 Å, one to
    three lobes, density 0.4–1) at free positions; returns how many of each fitted."""
    fitted = {"gold": 0, "distractor": 0}
    for kind in ["gold"] * n_gold + ["distractor"] * n_distractors:
        if kind == "gold":
            radius = float(rng.uniform(25.0, 50.0))
            lobes: tuple = ()
            density = GOLD_DENSITY
        else:
            radius = float(np.exp(rng.uniform(np.log(25.0), np.log(130.0))))
            reach = radius - EDGE_A
            lobe_list = []
            for _ in range(int(rng.integers(1, 4))):
                semi = rng.uniform(0.35, 0.7, 3) * reach
                offset = rng.standard_normal(3)
                offset *= rng.uniform(0.0, reach - semi.max()) / np.linalg.norm(offset)
                lobe_list.append((tuple(float(v) for v in offset), tuple(float(v) for v in semi)))
            lobes = tuple(lobe_list)
            density = float(rng.uniform(0.4, 1.0))
        for _ in range(PLACEMENT_ATTEMPTS):
            center = _sample_center(scene, radius, rng)
            if scene.is_free(center, radius):
                scene.others.append(Blob(kind, center, radius, random_rotation(rng), density, lobes))
                fitted[kind] += 1
                break
    return fitted["gold"], fitted["distractor"]


def _box(scene: Scene, lo_xyz_A: np.ndarray, hi_xyz_A: np.ndarray) -> tuple[slice, slice, slice] | None:
    spacing = np.asarray(scene.spacing_zyx_A)
    lo = np.maximum(np.floor(np.asarray(lo_xyz_A)[::-1] / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(np.asarray(hi_xyz_A)[::-1] / spacing).astype(int) + 1, scene.shape_zyx)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _box_points_xyz_A(scene: Scene, box: tuple[slice, slice, slice], origin_xyz_A: np.ndarray) -> np.ndarray:
    """Coordinates (N, 3) x, y, z Å of the voxels of ``box`` relative to ``origin_xyz_A``, C order."""
    axes = [np.arange(s.start, s.stop) * sp - o for s, sp, o in zip(box, scene.spacing_zyx_A, origin_xyz_A[::-1])]
    z, y, x = np.meshgrid(*[a.astype(np.float32) for a in axes], indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


def render_density(scene: Scene, particle_contrast: float) -> np.ndarray:
    """The scene's density volume float32 (z, y, x): lamella background plus every object.

    Particle densities are multiplied by ``particle_contrast`` (a per-run variation).
    """
    nz, ny, nx = scene.shape_zyx
    sz, sy, sx = scene.spacing_zyx_A
    volume = np.empty(scene.shape_zyx, dtype=np.float32)
    x_A = (np.arange(nx) * sx).astype(np.float32)[None, :]
    y_A = (np.arange(ny) * sy).astype(np.float32)[:, None]
    z_lo, z_hi = scene.lamella.faces_A(x_A, y_A)
    for iz in range(nz):
        z_A = iz * sz
        inside = np.clip((z_A - z_lo) / LAMELLA_EDGE_A + 0.5, 0, 1) * np.clip((z_hi - z_A) / LAMELLA_EDGE_A + 0.5, 0, 1)
        volume[iz] = scene.lamella.background * inside
    for membrane in scene.membranes:
        lo, hi = membrane.bbox_xyz_A()
        box = _box(scene, lo, hi)
        if box is None:
            continue
        for z0 in range(box[0].start, box[0].stop, 16):
            sub = (slice(z0, min(z0 + 16, box[0].stop)), box[1], box[2])
            v = _box_points_xyz_A(scene, sub, membrane.center_xyz_A)
            norm = np.linalg.norm(v, axis=1)
            d = norm - membrane.radius_A
            bilayer = np.exp(-((d - LEAFLET_OFFSET_A) ** 2) / (2 * LEAFLET_SIGMA_A**2))
            bilayer += np.exp(-((d + LEAFLET_OFFSET_A) ** 2) / (2 * LEAFLET_SIGMA_A**2))
            if membrane.half_angle < np.pi:
                angle = np.arccos(np.clip((v @ membrane.axis.astype(np.float32)) / np.maximum(norm, 1e-6), -1, 1))
                bilayer *= _soft(membrane.radius_A * (angle - membrane.half_angle))
            volume[sub] += (MEMBRANE_DENSITY * bilayer).reshape(volume[sub].shape)
    for blob in scene.solids():
        box = _box(scene, blob.center_xyz_A - blob.radius_A, blob.center_xyz_A + blob.radius_A)
        if box is None:
            continue
        density = blob.render(_box_points_xyz_A(scene, box, blob.center_xyz_A))
        if blob.kind in SHAPES:
            density *= particle_contrast
        volume[box] += density.reshape(volume[box].shape)
    return volume

