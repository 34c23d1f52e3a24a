"""The simulator's config: :class:`SimConfig` (every knob, validated on construction), its presets and
the families of worlds (:data:`FAMILIES`). What each knob does: :mod:`czii.simulate.dataset`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

import numpy as np
from copick.util.escape import sanitize_name

from czii.errors import ConfigError
from czii.geometry import CZII_SHAPE_ZYX, CZII_SPACING_ZYX_A
from czii.particles import PARTICLE_NAMES
from czii.simulate.imaging import TOMO_TYPES
from czii.simulate.shapes import DECOY_KINDS, PARTICLE_MODELS

DEFAULT_REAL_PICKS_CSV = str(Path(__file__).parent / "reference" / "train_picks.csv")
TEST_TOMO_TYPE = "denoised"

# Object names in the style of the CryoET Data Portal's simulated CZII dataset (copick-valid).
PORTAL_OBJECT_NAMES: dict[str, str] = {
    "apo-ferritin": "ferritin-complex",
    "beta-amylase": "beta-amylase",
    "beta-galactosidase": "beta-galactosidase",
    "ribosome": "cytosolic-ribosome",
    "thyroglobulin": "thyroglobulin",
    "virus-like-particle": "pp7-vlp",
}

PRESETS: dict[str, dict] = {
    "tiny": {"n_train": 3, "n_test": 1, "shape_zyx": (32, 96, 96), "density_scale": 3.0, "min_per_class": 1},
    "small": {"n_train": 6, "n_test": 2, "shape_zyx": (64, 192, 192), "density_scale": 3.0, "min_per_class": 2},
    "full": {"n_train": 7, "n_test": 3, "shape_zyx": CZII_SHAPE_ZYX},
    "portal": {
        "n_train": 7, "n_test": 0, "shape_zyx": (200, 630, 630), "types": ("wbp",), "object_names": PORTAL_OBJECT_NAMES,
    },
}


# Knobs drawn per run from a (low, high) range, and the values they may take.
RANGES: dict[str, tuple[float, float]] = {
    "intensity_scale_log10": (-math.inf, math.inf),
    "intensity_offset": (-math.inf, math.inf),
    "tilt_range_deg": (1.0, 89.0),
    "tilt_axis_deg": (-90.0, 90.0),
    "defocus_um": (0.1, 20.0),
    "noise_exponent": (-3.0, 3.0),
    "filter_scale": (0.0, 5.0),
}
# Knobs that are fractions or probabilities, and their largest allowed value.
FRACTIONS: dict[str, float] = {
    "subunit_jitter": 0.2, "particle_warp": 0.2, "particle_density_jitter": 1.0, "decoy_near_fraction": 1.0,
    "carbon_edge_rate": 1.0, "ctf_corrected_rate": 1.0, "sign_flip_rate": 1.0,
}


# Worlds for out-of-family tests: each family makes a disjoint choice of particle models, decoys and
# imaging (defocus, CTF correction, reconstruction filter, noise colour, missing wedge, contrast sign);
# what they share (subunit jitter, warp, density spread, decoys beside particles, ice, carbon) is WORLD.
WORLD: dict = {
    "subunit_jitter": 0.05, "particle_warp": 0.05, "particle_density_jitter": 0.2, "decoy_near_fraction": 0.3,
    "ice_rate": 1.0, "carbon_edge_rate": 0.3, "tilt_axis_deg": (-90.0, 90.0),
}
FAMILIES: dict[str, dict] = {
    "A": {**WORLD, "particle_models": (0,), "decoys": ("blob", "shell"), "defocus_um": (2.5, 3.5),
          "ctf_corrected_rate": 1.0, "filter_scale": (0.8, 1.2), "noise_exponent": (-0.2, 0.2),
          "tilt_range_deg": (57.0, 63.0), "tilt_axis_deg": (-5.0, 5.0)},
    "B": {**WORLD, "particle_models": (1,), "decoys": ("cluster", "rod"), "defocus_um": (1.0, 2.5),
          "ctf_corrected_rate": 0.0, "filter_scale": (0.3, 0.7), "noise_exponent": (0.3, 0.8),
          "tilt_range_deg": (45.0, 56.0), "sign_flip_rate": 0.5},
    "C": {**WORLD, "particle_models": (2,), "decoys": ("aggregate", "filament"), "defocus_um": (3.5, 5.0),
          "ctf_corrected_rate": 1.0, "filter_scale": (1.3, 1.8), "noise_exponent": (-0.8, -0.3),
          "tilt_range_deg": (64.0, 70.0)},
}


def _is_run_name(name: str) -> bool:
    return all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")


def _check_distinct(name: str, values: tuple, known: tuple) -> None:
    """ConfigError unless ``values`` are one or more distinct entries of ``known``."""
    if not values or set(values) - set(known) or len(set(values)) != len(values):
        raise ConfigError(f"SimConfig: {name} must be distinct entries of {list(known)}, got {list(values)}")


def _is_copick_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and sanitize_name(name, suppress_warnings=True) == name


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated dataset; validated on construction (ConfigError)."""

    n_train: int = 3
    n_test: int = 1
    shape_zyx: tuple[int, int, int] = (32, 96, 96)
    spacing_zyx_A: tuple[float, float, float] = CZII_SPACING_ZYX_A
    snr: float = 1.0
    seed: int = 0
    layout: str = "random"
    types: tuple[str, ...] = TOMO_TYPES
    density_scale: float = 1.0
    min_per_class: int = 0
    decoys_per_particle: float = 1.0
    membrane_rate: float = 1.0
    gold_rate: float = 1.0
    particle_models: tuple[int, ...] = (0,)
    subunit_jitter: float = 0.0
    particle_warp: float = 0.0
    particle_density_jitter: float = 0.0
    decoys: tuple[str, ...] = ("blob",)
    decoy_near_fraction: float = 0.0
    ice_rate: float = 0.0
    carbon_edge_rate: float = 0.0
    tilt_range_deg: tuple[float, float] = (60.0, 60.0)
    tilt_axis_deg: tuple[float, float] = (0.0, 0.0)
    defocus_um: tuple[float, float] = (2.5, 4.5)
    ctf_corrected_rate: float = 1.0
    noise_exponent: tuple[float, float] = (0.0, 0.0)
    filter_scale: tuple[float, float] = (1.0, 1.0)
    sign_flip_rate: float = 0.0
    contrast: float = 1.0
    ice_gradient: float = 0.0
    intensity_scale_log10: tuple[float, float] = (-6.0, -3.0)
    intensity_offset: tuple[float, float] = (-2.0, 2.0)
    object_names: Mapping[str, str] = field(default_factory=dict)
    type_names: Mapping[str, str] = field(default_factory=dict)
    real_picks_csv: str = DEFAULT_REAL_PICKS_CSV
    run_prefix: str = ""

    def __post_init__(self) -> None:
        def fix(name: str, value) -> None:
            object.__setattr__(self, name, value)

        try:
            fix("shape_zyx", tuple(int(v) for v in self.shape_zyx))
            fix("spacing_zyx_A", tuple(float(v) for v in np.broadcast_to(self.spacing_zyx_A, (3,))))
        except (TypeError, ValueError):
            raise ConfigError(
                f"SimConfig: shape_zyx and spacing_zyx_A must be 3 numbers, got {self.shape_zyx!r}, "
                f"{self.spacing_zyx_A!r}"
            ) from None
        for name in RANGES:
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in np.broadcast_to(value, (2,)))  # one number: a fixed value
            except (TypeError, ValueError):
                raise ConfigError(f"SimConfig: {name} must be one number or 2 (low, high), got {value!r}") from None
            fix(name, (low, high))
        for name in ("types", "decoys"):
            if isinstance(getattr(self, name), str):
                raise ConfigError(f"SimConfig: {name} must be a list of names, got the string {getattr(self, name)!r}")
            fix(name, tuple(getattr(self, name)))
        try:
            fix("particle_models", tuple(int(v) for v in self.particle_models))
        except (TypeError, ValueError):
            raise ConfigError(f"SimConfig: particle_models must be a list of model numbers, got "
                              f"{self.particle_models!r}") from None
        fix("object_names", dict(self.object_names))
        fix("type_names", dict(self.type_names))
        fix("real_picks_csv", str(self.real_picks_csv))
        fix("run_prefix", str(self.run_prefix))
        self._validate()

    def _validate(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"SimConfig: {what}")

        for name in ("n_train", "n_test", "seed", "min_per_class"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise bad(f"{name} must be a non-negative integer, got {value!r}")
        if self.n_train + self.n_test < 1:
            raise bad("n_train + n_test must be at least 1")
        if len(self.shape_zyx) != 3 or min(self.shape_zyx) < 8:
            raise bad(f"shape_zyx must be 3 sizes of at least 8 voxels, got {self.shape_zyx}")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing_zyx_A):
            raise bad(f"spacing_zyx_A must be positive, got {self.spacing_zyx_A}")
        if not (math.isfinite(self.snr) and self.snr > 0):
            raise bad(f"snr must be a positive number, got {self.snr!r}")
        if not (math.isfinite(self.contrast) and self.contrast > 0):
            raise bad(f"contrast must be a positive number, got {self.contrast!r}")
        for name, (lowest, highest) in RANGES.items():
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and lowest <= low <= high <= highest):
                raise bad(f"{name} must be (low, high) with {lowest:g} <= low <= high <= {highest:g}, "
                          f"got {(low, high)}")
        for name in ("density_scale", "decoys_per_particle", "membrane_rate", "gold_rate", "ice_gradient", "ice_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise bad(f"{name} must be a non-negative number, got {value!r}")
        for name, highest in FRACTIONS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= highest):
                raise bad(f"{name} must be a number in [0, {highest:g}], got {value!r}")
        for name, known in (("particle_models", PARTICLE_MODELS), ("decoys", DECOY_KINDS)):
            _check_distinct(name, getattr(self, name), known)
        if self.run_prefix and not _is_run_name(self.run_prefix):
            raise bad(f"run_prefix {self.run_prefix!r} cannot start a run name (letters, digits, '-', '_', '.')")
        if self.layout not in ("random", "real"):
            raise bad(f"layout must be 'random' or 'real', got {self.layout!r}")
        _check_distinct("types", self.types, TOMO_TYPES)
        written_types = tuple(dict.fromkeys(self.types + (TEST_TOMO_TYPE,)))
        for option, known, names in (
            ("object_names", PARTICLE_NAMES, self.object_names),
            ("type_names", written_types, self.type_names),
        ):
            if set(names) - set(known):
                raise bad(f"{option} keys must be among {list(known)}, got {sorted(set(names) - set(known))}")
            for value in names.values():
                if not _is_copick_name(value):
                    raise bad(f"{option}: {value!r} is not a valid copick name (no '_', spaces or /\\:*?\"<>|)")
            written = [names.get(k, k) for k in known]
            if len(set(written)) != len(written):
                raise bad(f"{option} gives two entries the same name: {written}")

    @classmethod
    def preset(cls, name: str, family: str | None = None, **overrides) -> "SimConfig":
        """The config of preset ``name`` (:data:`PRESETS`) in world ``family`` (:data:`FAMILIES`; None: the
        default world) with ``overrides`` applied."""
        if name not in PRESETS:
            raise ConfigError(f"unknown simulator preset {name!r}; presets: {', '.join(PRESETS)}")
        if family is not None and family not in FAMILIES:
            raise ConfigError(f"unknown simulator family {family!r}; families: {', '.join(FAMILIES)}")
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown SimConfig fields {sorted(unknown)}")
        return replace(cls(**PRESETS[name]), **{**(FAMILIES[family] if family else {}), **overrides})

    def object_name(self, particle_type: str) -> str:
        """Name written in the data for canonical class ``particle_type``."""
        return self.object_names.get(particle_type, particle_type)

    def type_name(self, recipe: str) -> str:
        """Tomogram type name written in the data for imaging recipe ``recipe``."""
        return self.type_names.get(recipe, recipe)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))
