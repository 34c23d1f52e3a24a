"""The six CZII particle classes: the single source of truth for their constants.

Every other module imports from here. ``label`` is the copick label id (1..6, 0 is
background), ``radius_A`` the particle radius in Ångström used by the metric
(a truth point is found by a prediction within ``0.5 * radius_A``), ``weight``
the metric weight (they sum to 7; beta-amylase counts 0) and ``pdb_id`` the
structure the organisers used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Particle:
    name: str
    label: int
    radius_A: float
    weight: float
    pdb_id: str
    color_rgba: tuple[int, int, int, int]

    @property
    def match_radius_A(self) -> float:
        """Distance within which a prediction finds a truth point (metric: 0.5 × radius)."""
        return 0.5 * self.radius_A


PARTICLES: tuple[Particle, ...] = (
    Particle("apo-ferritin", 1, 60.0, 1.0, "4V1W", (0, 117, 220, 128)),
    Particle("beta-amylase", 2, 65.0, 0.0, "1FA2", (153, 63, 0, 128)),
    Particle("beta-galactosidase", 3, 90.0, 2.0, "6X1Q", (76, 0, 92, 128)),
    Particle("ribosome", 4, 150.0, 1.0, "6EK0", (0, 92, 49, 128)),
    Particle("thyroglobulin", 5, 130.0, 2.0, "6SCJ", (43, 206, 72, 128)),
    Particle("virus-like-particle", 6, 135.0, 1.0, "6N4V", (255, 204, 153, 128)),
)

PARTICLE_NAMES: tuple[str, ...] = tuple(p.name for p in PARTICLES)
BY_NAME: dict[str, Particle] = {p.name: p for p in PARTICLES}
BY_LABEL: dict[int, Particle] = {p.label: p for p in PARTICLES}
TOTAL_WEIGHT: float = sum(p.weight for p in PARTICLES)


def get_particle(name: str) -> Particle:
    """Return the class called ``name``; a clear KeyError names the known classes otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown particle type {name!r}; known types: {', '.join(PARTICLE_NAMES)}"
        ) from None
