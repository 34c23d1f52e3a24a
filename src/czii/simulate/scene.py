"""Scene model of the simulator: what lies where in one run, and its density volume.

A scene is a lamella (a slab of background density with two parallel, slightly tilted faces)
holding the six particle classes, decoys (non-target density of many shapes and sizes, some
beside the particles), membranes (vesicles and curved patches with a ~4 nm bilayer profile),
gold fiducials, ice contamination on the lamella faces and optionally a carbon edge covering one
side of the field. Densities are "protein = 1" units above the solvent; imaging
(:mod:`czii.simulate.imaging`) turns them into tomograms. Positions are x, y, z in Å (voxel
index ``i`` is centred at ``i * spacing``).

Particle models (three per class) and decoys are the analytic shapes of
:mod:`czii.simulate.shapes`, sized so that every voxel with density lies within the class radius
from :mod:`czii.particles`. What goes where is :mod:`czii.simulate.placement`.

Each object gets a uniformly random 3-D orientation (its sampling grid is rotated). Solid
objects never overlap: centres are at least the sum of their radii apart (so are particles
and membranes: a particle keeps ``radius + MEMBRANE_HALF_THICKNESS_A`` from the bilayer; and
the carbon: a solid keeps its radius from the carbon's edge).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from czii.particles import BY_NAME, PARTICLE_NAMES
from czii.simulate.shapes import Part, Warp, particle_parts, render_parts, soft

MEMBRANE_DENSITY = 0.9
LEAFLET_OFFSET_A = 13.0  # head-group layers at ±13 Å, σ 5 Å: a bilayer ~4 nm thick
LEAFLET_SIGMA_A = 5.0
MEMBRANE_HALF_THICKNESS_A = 25.0
LAMELLA_EDGE_A = 40.0


def particle_density(name: str, points_xyz_A: np.ndarray, variant: int = 0) -> np.ndarray:
    """Density of model ``variant`` of class ``name`` at body-frame points (N, 3) Å; zero beyond its radius."""
    return render_parts(particle_parts(name, BY_NAME[name].radius_A, variant), points_xyz_A)


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
    """A solid object: a particle (``kind`` is its class), a decoy (``"decoy"``), ``"gold"`` or ``"ice"``."""

    kind: str
    center_xyz_A: np.ndarray
    radius_A: float
    rotation: np.ndarray
    density: float
    parts: tuple[Part, ...]
    warp: Warp | None = None
    model: str = ""  # particles: the class model variant; decoys: the decoy kind

    def render(self, points_xyz_A: np.ndarray) -> np.ndarray:
        body = points_xyz_A @ self.rotation.astype(points_xyz_A.dtype)
        if self.warp is not None:
            body = self.warp.apply(body)
        return self.density * render_parts(self.parts, body)


@dataclass(frozen=True)
class CarbonEdge:
    """Carbon film beyond a line across the y-x field: where (x, y)·normal exceeds ``offset_A``, at ``density``."""

    normal_xy: tuple[float, float]
    offset_A: float
    density: float

    def depth_A(self, x_A: np.ndarray, y_A: np.ndarray) -> np.ndarray:
        """Signed distance into the carbon (positive inside) of field points."""
        return x_A * self.normal_xy[0] + y_A * self.normal_xy[1] - self.offset_A


@dataclass
class Scene:
    """Everything in one run; ``particles`` carry the truth picks."""

    shape_zyx: tuple[int, int, int]
    spacing_zyx_A: tuple[float, float, float]
    lamella: Lamella
    particles: list[Blob] = field(default_factory=list)
    others: list[Blob] = field(default_factory=list)
    membranes: list[Membrane] = field(default_factory=list)
    carbon: CarbonEdge | None = None

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
        if self.carbon is not None and self.carbon.depth_A(center_xyz_A[0], center_xyz_A[1]) > -radius_A:
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
    fill = np.float32(scene.lamella.background)
    if scene.carbon is not None:
        fill = fill + scene.carbon.density * np.clip(scene.carbon.depth_A(x_A, y_A) / LAMELLA_EDGE_A + 0.5, 0, 1)
    for iz in range(nz):
        z_A = iz * sz
        inside = np.clip((z_A - z_lo) / LAMELLA_EDGE_A + 0.5, 0, 1) * np.clip((z_hi - z_A) / LAMELLA_EDGE_A + 0.5, 0, 1)
        volume[iz] = fill * inside
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
                bilayer *= soft(membrane.radius_A * (angle - membrane.half_angle))
            volume[sub] += (MEMBRANE_DENSITY * bilayer).reshape(volume[sub].shape)
    for blob in scene.solids():
        box = _box(scene, blob.center_xyz_A - blob.radius_A, blob.center_xyz_A + blob.radius_A)
        if box is None:
            continue
        density = blob.render(_box_points_xyz_A(scene, box, blob.center_xyz_A))
        if blob.kind in BY_NAME:
            density *= particle_contrast
        volume[box] += density.reshape(volume[box].shape)
    return volume

