"""The particle classes: the six CZII classes and the ones a project defines; the single source of truth.

Every other module imports from here. :data:`BY_NAME` is the registry of every class known in
this process: the six CZII classes, plus the pickable objects of copick projects that were
opened (:func:`particles_from_copick` → :func:`register`; radius from the object's ``radius``,
metric weight from an optional ``metric_weight`` key, default 1) and the classes a checkpoint
records. A name is defined once: registering it again with another radius or weight is a
ConfigError naming both. :data:`PARTICLE_NAMES` stays the six CZII classes (the default
``data.classes`` and the Kaggle metric's classes); :func:`known_names` lists every registered one.
``label`` is the copick label id (1..6, 0 is background), ``radius_A`` the particle radius in Ångström
used by the metric (a truth point is found by a prediction within ``0.5 * radius_A``), ``weight``
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
DEFAULT_WEIGHT = 1.0
GREY_RGBA = (128, 128, 128, 128)


def total_weight(classes) -> float:
    """The metric's denominator: the six CZII weights (a class left out still counts, as on Kaggle) plus the
    weights of the other ``classes``."""
    return TOTAL_WEIGHT + sum(BY_NAME[c].weight for c in set(classes) - set(PARTICLE_NAMES))


def known_names() -> tuple[str, ...]:
    """Every registered class: the CZII six first, then the others in registration order."""
    return tuple(BY_NAME)


def register(particles) -> None:
    """Add ``particles`` to :data:`BY_NAME`; a name already known with another radius or weight is refused."""
    from czii.errors import ConfigError

    for p in particles:
        old = BY_NAME.get(p.name)
        if old is not None and (old.radius_A, old.weight) != (p.radius_A, p.weight):
            raise ConfigError(f"particle {p.name!r} is defined twice: radius {old.radius_A:g} Å, weight "
                              f"{old.weight:g} and radius {p.radius_A:g} Å, weight {p.weight:g}")
        BY_NAME.setdefault(p.name, p)


def particles_from_copick(pickable_objects, where: str) -> list[Particle]:
    """The non-CZII particles among a copick config's ``pickable_objects`` (dicts): radius from ``radius`` (Å;
    objects without one are skipped), weight from ``metric_weight`` (default 1). CZII names keep their CZII
    constants."""
    from czii.errors import ConfigError

    found = []
    for obj in pickable_objects:
        name = obj.get("name")
        if not obj.get("is_particle", False) or name in PARTICLE_NAMES:
            continue
        radius, weight = obj.get("radius"), obj.get("metric_weight", DEFAULT_WEIGHT)
        if radius is None:
            continue  # not usable as a class (no size); naming it in data.classes says so
        if not isinstance(radius, (int, float)) or not radius > 0:
            raise ConfigError(f"{where}: pickable object {name!r}: radius must be a positive number of Å, "
                              f"got {radius!r}")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"{where}: pickable object {name!r}: metric_weight must be a number >= 0, got {weight!r}")
        color = tuple(obj.get("color") or GREY_RGBA)
        found.append(Particle(str(name), int(obj.get("label", 0)), float(radius), float(weight),
                              str(obj.get("pdb_id") or ""), color))
    return found


def particle_records(names) -> list[dict]:
    """``[{name, radius_A, weight}]`` of ``names`` (what a checkpoint records)."""
    return [{"name": n, "radius_A": BY_NAME[n].radius_A, "weight": BY_NAME[n].weight} for n in names]


def register_records(records) -> None:
    """Register the classes a checkpoint recorded (:func:`particle_records`)."""
    register(Particle(r["name"], 0, float(r["radius_A"]), float(r["weight"]), "", GREY_RGBA)
             for r in records if r["name"] not in PARTICLE_NAMES)


def get_particle(name: str) -> Particle:
    """Return the class called ``name``; a clear KeyError names the known classes otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown particle type {name!r}; known types: {', '.join(known_names())}"
        ) from None
