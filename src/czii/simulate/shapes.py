"""Analytic shapes of the simulator: particle models (three per class) and the decoy zoo.

Every shape is a tuple of :class:`Part` (solid or hollow ellipsoids) whose density is the
maximum over its parts, each part weighted. Particle models are built at unit reach, moved so
that their centre of mass is the origin (the pick is the centre of mass) and scaled so that
their farthest density lies at the reach; :func:`particle_parts` sizes them to a class radius,
jitters the subunits and leaves room for a mild non-rigid warp (:class:`Warp`), so that every
voxel with density stays within the class radius of :mod:`czii.particles`.

Models, variant 0 being the simulator's original shape of each class:

=====================  ===============================  ===========================  ==============================
class                  0                                1                            2
=====================  ===============================  ===========================  ==============================
apo-ferritin           hollow shell (cavity 0.65)       24 subunits on a sphere      thick oblate shell, dense core
beta-amylase           compact ellipsoid                dimer of ellipsoids          tetramer of balls
beta-galactosidase     four lobes (D2) around a core    ring of four lobes, no core  two crossed dimers stacked
ribosome               large + small subunit            ball + flat small subunit    subunits with three stalks
thyroglobulin          dimer of tilted ellipsoids       two balls and a bridge       curved chain of four balls
virus-like-particle    thin shell with packed RNA       72 capsomers, empty          thick shell, dense core
=====================  ===============================  ===========================  ==============================

Decoys (:data:`DECOY_KINDS`) are non-target density at every size across the class radii:
``blob`` (one to three random lobes, 25–130 Å), ``cluster`` (four to six lobes, 60–110 Å, the
size of beta-galactosidase), ``shell`` (hollow spheres of 30–110 Å, radii within 15 % of
apo-ferritin's left out, so that no decoy is an apo-ferritin), ``rod`` (60–200 Å long, thin),
``filament`` (6–12 beads along a smooth curve, 150–300 Å) and ``aggregate`` (8–20 small balls
clumped, 80–200 Å).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial.transform import Rotation

EDGE_A = 5.0  # soft-edge half width of every analytic shape
PARTICLE_MODELS = (0, 1, 2)
DECOY_KINDS = ("blob", "cluster", "shell", "rod", "filament", "aggregate")
DECOY_RADIUS_A = {
    "blob": (25.0, 130.0), "cluster": (60.0, 110.0), "shell": (30.0, 110.0),
    "rod": (60.0, 200.0), "filament": (150.0, 300.0), "aggregate": (80.0, 200.0),
}
SHELL_EXCLUDED_A = (51.0, 69.0)  # apo-ferritin's radius ± 15 %: such a shell would be an apo-ferritin


@dataclass(frozen=True)
class Part:
    """An ellipsoid at ``center`` (Å, body frame) with ``semi_axes`` (Å) along the axes of ``rotation``;
    ``hollow`` > 0 keeps only the shell outside ``hollow`` × the semi-axes; density ``weight`` inside."""

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    weight: float = 1.0
    hollow: float = 0.0
    rotation: tuple[float, ...] | None = None  # row-major 3×3

    def scaled(self, factor: float, shift=(0.0, 0.0, 0.0)) -> "Part":
        center = tuple(float(factor * (c - s)) for c, s in zip(self.center, shift))
        return Part(center, tuple(float(factor * a) for a in self.semi_axes), self.weight, self.hollow, self.rotation)

    def moved(self, offset) -> "Part":
        return Part(tuple(float(c + o) for c, o in zip(self.center, offset)), self.semi_axes, self.weight,
                    self.hollow, self.rotation)

    @property
    def reach(self) -> float:
        """Farthest distance of its density from the body origin (an upper bound)."""
        return float(np.linalg.norm(self.center) + max(self.semi_axes))


def soft(signed_distance_A: np.ndarray) -> np.ndarray:
    """Occupancy in [0, 1] from a signed distance (negative inside), linear over ±EDGE_A."""
    return np.clip(0.5 - signed_distance_A / (2.0 * EDGE_A), 0.0, 1.0)


def _signed_distance(q: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Approximate signed distance (Å) to an axis-aligned ellipsoid; exact for a sphere."""
    if semi[0] == semi[1] == semi[2]:
        return np.linalg.norm(q, axis=1) - semi[0]
    return (np.linalg.norm(q / semi, axis=1) - 1.0) * semi.max()


def _occupancy(part: Part, p: np.ndarray) -> np.ndarray:
    q = p - np.asarray(part.center, dtype=p.dtype)
    if part.rotation is not None:
        q = q @ np.asarray(part.rotation, dtype=p.dtype).reshape(3, 3)
    semi = np.asarray(part.semi_axes, dtype=p.dtype)
    occupancy = soft(_signed_distance(q, semi))
    if part.hollow:
        occupancy = occupancy - soft(_signed_distance(q, semi * np.float32(part.hollow)))
    return occupancy if part.weight == 1.0 else part.weight * occupancy


def render_parts(parts: tuple[Part, ...], points_xyz_A: np.ndarray) -> np.ndarray:
    """Density (N,) of ``parts`` at body-frame points (N, 3): the maximum over the parts."""
    return np.maximum.reduce([_occupancy(part, points_xyz_A) for part in parts])


@dataclass(frozen=True)
class Warp:
    """A smooth non-rigid displacement: body points move by Σ_j a_j sin(2π p·w_j + φ_j) / 3 (|u| ≤ amplitude)."""

    waves: tuple[tuple[float, ...], ...]  # per term: w (3, 1/Å), a (3, Å), φ

    def apply(self, p: np.ndarray) -> np.ndarray:
        out = p.copy()
        for term in self.waves:
            w, a, phase = np.asarray(term[:3], p.dtype), np.asarray(term[3:6], p.dtype), term[6]
            out -= np.sin(2 * np.pi * (p @ w) + np.float32(phase))[:, None] * a[None] / 3.0
        return out


def random_warp(reach_A: float, amplitude_A: float, rng: np.random.Generator) -> Warp:
    """Three random waves of 0.5–1 period across the reach; displacements at most ``amplitude_A``."""
    waves = []
    for _ in range(3):
        direction = rng.standard_normal(3)
        w = direction / np.linalg.norm(direction) * rng.uniform(0.5, 1.0) / (2 * reach_A)
        a = rng.standard_normal(3)
        a *= amplitude_A / np.linalg.norm(a)
        waves.append((*map(float, w), *map(float, a), float(rng.uniform(0, 2 * np.pi))))
    return Warp(tuple(waves))


def _rot(axis: str, deg: float) -> tuple[float, ...]:
    return tuple(float(v) for v in Rotation.from_euler(axis, deg, degrees=True).as_matrix().ravel())


def _ball(center, radius: float, weight: float = 1.0) -> Part:
    return Part(tuple(map(float, center)), (radius, radius, radius), weight)


def _sphere_points(n: int, radius: float) -> np.ndarray:
    """``n`` nearly even points on a sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = np.pi * (1 + 5**0.5) * i
    return radius * np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1)


def _models(name: str, variant: int) -> tuple[Part, ...]:
    """Model ``variant`` of class ``name`` at roughly unit reach (centred and scaled afterwards)."""
    if name == "apo-ferritin":
        return (
            (Part((0, 0, 0), (1, 1, 1), hollow=0.65),),
            tuple(_ball(c, 0.26) for c in _sphere_points(24, 0.74)),
            (Part((0, 0, 0), (1, 1, 0.9), hollow=0.45), _ball((0, 0, 0), 0.3, 0.6)),
        )[variant]
    if name == "beta-amylase":
        return (
            (Part((0, 0, 0), (1, 0.8, 0.65)),),
            (Part((-0.45, 0, 0), (0.55, 0.45, 0.45), rotation=_rot("z", 15)),
             Part((0.45, 0, 0), (0.55, 0.45, 0.45), rotation=_rot("z", -15))),
            tuple(_ball(c, 0.42) for c in 0.55 / 3**0.5 * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])),
        )[variant]
    if name == "beta-galactosidase":
        return (
            tuple(_ball((sx * 0.5, sy * 0.3, sx * sy * 0.1), 0.4) for sx in (-1, 1) for sy in (-1, 1))
            + (_ball((0, 0, 0), 0.3),),
            (Part((0.6, 0, 0), (0.3, 0.42, 0.4)), Part((-0.6, 0, 0), (0.3, 0.42, 0.4)),
             Part((0, 0.6, 0), (0.42, 0.3, 0.4)), Part((0, -0.6, 0), (0.42, 0.3, 0.4))),
            tuple(_ball((s * 0.45, 0, 0.3), 0.38) for s in (-1, 1)) + tuple(_ball((0, s * 0.45, -0.3), 0.38)
                                                                          for s in (-1, 1)),
        )[variant]
    if name == "ribosome":
        return (
            (Part((0, 0, -0.16), (0.7, 0.62, 0.55)), Part((0.08, 0, 0.56), (0.6, 0.4, 0.28))),
            (_ball((0, 0, -0.2), 0.62), Part((0, 0, 0.52), (0.62, 0.42, 0.2), rotation=_rot("y", 12)),
             _ball((0, 0.45, 0.2), 0.2)),
            (_ball((0, 0, 0), 0.6), _ball((0.55, 0, 0.2), 0.2), _ball((-0.5, 0.2, 0.25), 0.2),
             _ball((0, 0, 0.62), 0.18), Part((0.1, 0, -0.6), (0.55, 0.35, 0.25))),
        )[variant]
    if name == "thyroglobulin":
        return (
            (Part((-0.45, 0, 0), (0.52, 0.33, 0.3), rotation=_rot("z", 20)),
             Part((0.45, 0, 0), (0.52, 0.33, 0.3), rotation=_rot("z", -20))),
            (_ball((-0.55, 0, 0), 0.42), _ball((0.55, 0, 0), 0.42), Part((0, 0, 0), (0.55, 0.25, 0.25))),
            tuple(_ball((x, 0.25 * (1 - (x / 0.66) ** 2), 0), 0.3) for x in (-0.66, -0.22, 0.22, 0.66)),
        )[variant]
    if name == "virus-like-particle":
        return (
            (Part((0, 0, 0), (1, 1, 1), hollow=0.84), _ball((0, 0, 0), 0.6, 0.35)),
            tuple(_ball(c, 0.17) for c in _sphere_points(72, 0.83)),
            (Part((0, 0, 0), (1, 1, 1), hollow=0.7), _ball((0, 0, 0), 0.5, 0.6)),
        )[variant]
    raise KeyError(name)


@lru_cache(maxsize=None)
def unit_model(name: str, variant: int) -> tuple[Part, ...]:
    """Model ``variant`` of ``name`` with its centre of mass at the origin and its density within reach 1."""
    parts = _models(name, variant)
    if variant == 0:
        return parts  # the original shapes: centred by construction, reach 1
    grid = np.linspace(-1.2, 1.2, 49, dtype=np.float32)
    z, y, x = np.meshgrid(grid, grid, grid, indexing="ij")
    points = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    density = render_parts(tuple(p.scaled(100.0) for p in parts), 100.0 * points)
    com = (points * density[:, None]).sum(0) / density.sum()
    centred = tuple(p.scaled(1.0, com) for p in parts)
    return tuple(p.scaled(1.0 / max(p.reach for p in centred)) for p in centred)


def particle_parts(
    name: str, radius_A: float, variant: int, jitter: float = 0.0, warp_A: float = 0.0,
    rng: np.random.Generator | None = None,
) -> tuple[Part, ...]:
    """Model ``variant`` of ``name`` sized so that it (jittered, warped by up to ``warp_A``) stays within ``radius_A``.

    Each subunit moves by a Gaussian of σ ``jitter`` × reach, cut at 2σ (drawn from ``rng``, needed only
    then); with one part, nothing moves.
    """
    parts = unit_model(name, variant)
    reach = (radius_A - EDGE_A - warp_A) / (1.0 + (2.0 * jitter if len(parts) > 1 else 0.0))
    sized = tuple(p.scaled(reach) for p in parts)
    if not jitter or len(parts) == 1:
        return sized
    if rng is None:
        raise ValueError("particle_parts: jitter needs a random generator")
    moved = []
    for part in sized:
        step = rng.standard_normal(3) * jitter * reach
        norm = np.linalg.norm(step)
        moved.append(part.moved(step if norm <= 2 * jitter * reach else step * 2 * jitter * reach / norm))
    return tuple(moved)


def decoy_radius(kind: str, rng: np.random.Generator) -> float:
    """A bounding radius (Å) for a decoy of ``kind``, log-uniform over its range."""
    low, high = DECOY_RADIUS_A[kind]
    while True:
        radius = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        if kind != "shell" or not SHELL_EXCLUDED_A[0] <= radius <= SHELL_EXCLUDED_A[1]:
            return radius


def _random_offset(rng: np.random.Generator, length: float) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v) * length


def decoy_parts(kind: str, radius_A: float, rng: np.random.Generator) -> tuple[Part, ...]:
    """The parts of a decoy of ``kind`` whose density lies within ``radius_A`` of its centre."""
    r = radius_A - EDGE_A
    if kind == "blob":
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            semi = rng.uniform(0.35, 0.7, 3) * r
            offset = rng.standard_normal(3)
            offset *= rng.uniform(0.0, r - semi.max()) / np.linalg.norm(offset)
            parts.append(Part(tuple(map(float, offset)), tuple(map(float, semi))))
        return tuple(parts)
    if kind == "cluster":
        size = rng.uniform(0.3, 0.45) * r
        return tuple(_ball(_random_offset(rng, r - size), size) for _ in range(int(rng.integers(4, 7))))
    if kind == "shell":
        return (Part((0, 0, 0), (r, r, r), hollow=float(rng.uniform(0.5, 0.8))),)
    if kind == "rod":
        thickness = rng.uniform(0.15, 0.3) * r
        return (Part((0, 0, 0), (r, thickness, thickness)),)
    if kind == "filament":
        bead = float(rng.uniform(25.0, 40.0))
        n = int(rng.integers(6, 13))
        bend = rng.uniform(-1.0, 1.0, 2) * 0.4
        t = np.linspace(-1.0, 1.0, n)
        path = np.stack([t, bend[0] * (t**2 - 0.5), bend[1] * t**3], axis=1)
        path *= (r - bead) / np.linalg.norm(path, axis=1).max()
        return tuple(_ball(c, bead) for c in path)
    if kind == "aggregate":
        parts = []
        for _ in range(int(rng.integers(8, 21))):
            size = rng.uniform(0.15, 0.3) * r
            parts.append(_ball(_random_offset(rng, rng.uniform(0.0, r - size)), size, float(rng.uniform(0.6, 1.0))))
        return tuple(parts)
    raise KeyError(kind)
