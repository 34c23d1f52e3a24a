"""The predictor spec: one typed description of what turns tomograms into picks.

Validation's out-of-fold pass, ``czii tune``, ``czii infer``, ``czii ensemble``, ``czii experiment``,
``czii kaggle-build`` and the Kaggle notebook all build their predictor from a
:class:`PredictorSpec`, so the thresholds tuned on out-of-fold candidates describe the predictor
that ships.

A spec holds the members (checkpoints with weights), the classes, the input recipe (tomogram
types stacked as channels, pyramid level, normalisation), the tiling (tile, overlap, blend,
batch size), the TTA transforms, the peak method and its settings, and a thresholds file. As a
YAML file (an *ensemble YAML*, ``inference.yaml`` of the Kaggle dataset):

```yaml
members: [{checkpoint: fold0/checkpoints/best.pt, weight: 1.0}]   # paths relative to the YAML
classes: [apo-ferritin, beta-amylase, ...]
input: {channels: [denoised], level: 0, clip_percentiles: [0.5, 99.5], nan_policy: error,
        spacing_zyx_A: [10.012, 10.012, 10.012]}   # the members' voxel size (null: from their checkpoints)
tiling: {tile_zyx: [96, 256, 256], overlap: 0.25, blend: gaussian, batch_size: 2}
tta: flips_rot90                      # a preset or a list of transforms
peaks: {method: maxpool, nms_radius_factor: 0.5, min_size_vox: 0, merge_factor: 0.5, subvoxel: true}
thresholds: thresholds.json           # or null (default thresholds)
```

:func:`load_spec` reads it with the strict rules of configs (unknown/missing keys and wrong types
name the key and file). The *score hash* (:func:`spec_hash`) covers everything that changes the
probabilities or picks of given weights: classes, input recipe, tile, overlap, blend, TTA and peak
settings; not the members (out-of-fold candidates come from one fold's model, the shipped
predictor averages all folds; the ensemble builder weights its out-of-fold models as it ships
them), the batch size or the thresholds. Nor does it cover ``input.spacing_zyx_A``, the voxel size (Å)
the members were trained at and every input is resampled to: that is the members' property (their
checkpoints record it); :class:`czii.inference.Predictor` fills it in from them when the spec leaves it
null, refuses a spec whose value differs from theirs (both numbers named), and every spec written from a
loaded predictor (out-of-fold ``spec.json`` → ``thresholds.json``, the Kaggle ``inference.yaml``, ensemble
YAMLs) records it. ``thresholds.json`` (written by ``czii tune``) records the
hash and recipe it was tuned under; :func:`check_thresholds` refuses a spec whose hash differs.
The thresholds file format lives here too (:func:`save_thresholds`, :func:`load_thresholds_doc`,
:data:`DEFAULT_THRESHOLDS`), so reading a spec and its thresholds needs neither torch nor pandas.

A training run directory's shipped spec (:func:`run_dir_spec`) is every fold's ``best.pt``, the
recipe recorded in its ``thresholds.json`` (else the resolved ``config.yaml``) and that
thresholds file (a hand-written one records no spec: it is used, and the manifest says it was
not checked). Torch-free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from czii.config import Config, build_typed, load_config, read_yaml
from czii.errors import ConfigError, DataError
from czii.io import atomic_write_text
from czii.particles import BY_NAME, PARTICLE_NAMES, known_names
from czii.registry import BLEND_MODES, PEAK_METHODS, resolve_tta
from czii.rundir import RunDir

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class MemberSpec:
    checkpoint: str
    weight: float


@dataclass
class InputSpec:
    channels: list[str]
    level: int
    clip_percentiles: list[float]
    nan_policy: str
    spacing_zyx_A: Optional[list[float]]  # the members' voxel size (Å); None: read from their checkpoints


@dataclass
class TilingSpec:
    tile_zyx: list[int]
    overlap: float
    blend: str
    batch_size: int


@dataclass
class PeakSpec:
    method: str
    nms_radius_factor: float
    min_size_vox: int
    merge_factor: Optional[float]
    subvoxel: bool


@dataclass
class PredictorSpec:
    """Members, classes, input recipe, tiling, TTA names, peak settings and a thresholds file (or None)."""

    members: list[MemberSpec]
    classes: list[str]
    input: InputSpec
    tiling: TilingSpec
    tta: list[str]
    peaks: PeakSpec
    thresholds: Optional[str]

    @property
    def hash(self) -> str:
        return spec_hash(self)


_NOT_IN_RECIPE = ("members", "thresholds")


def recipe(spec: PredictorSpec) -> dict[str, Any]:
    """The spec without its members and thresholds (what ``thresholds.json`` records)."""
    doc = dataclasses.asdict(spec)
    return {k: v for k, v in doc.items() if k not in _NOT_IN_RECIPE}


def _scored(recipe_doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(recipe_doc))
    doc["tiling"].pop("batch_size", None)
    doc["input"].pop("nan_policy", None)
    doc["input"].pop("spacing_zyx_A", None)
    return doc


def spec_hash(spec: PredictorSpec | dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the score-relevant part of ``spec`` (a spec or its recipe)."""
    doc = _scored(recipe(spec) if isinstance(spec, PredictorSpec) else spec)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def check_recorded_hash(doc: Mapping[str, Any], where: str, error: type[Exception] = ConfigError) -> None:
    """``error`` naming ``where`` when a file's recorded ``spec_hash`` is not the hash of the recipe it records
    (``spec``): the recipe was edited after the file was written, so the hash no longer describes it and
    thresholds or candidates filed under it would describe another predictor."""
    if not isinstance(doc.get("spec"), dict) or "spec_hash" not in doc:
        return
    try:
        actual = spec_hash(doc["spec"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise error(f"{where}: its 'spec' is not a predictor recipe ({type(exc).__name__}: {exc})") from None
    if actual != doc["spec_hash"]:
        raise error(f"{where}: records predictor spec hash {doc['spec_hash']}, but the recipe it records hashes to "
                    f"{actual}: the file was edited after it was written; re-create it (`czii tune`, or "
                    "`czii tune --repredict` for out-of-fold candidates) instead of editing it")


def spec_differences(a: PredictorSpec | dict, b: PredictorSpec | dict) -> list[str]:
    """``key: a → b`` for every score-relevant setting that differs."""
    flat = []
    for spec in (a, b):
        doc = _scored(recipe(spec) if isinstance(spec, PredictorSpec) else spec)
        out = {}
        for key, value in doc.items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        flat.append(out)
    keys = sorted(set(flat[0]) | set(flat[1]))
    return [f"{k}: {flat[0].get(k)!r} → {flat[1].get(k)!r}" for k in keys if flat[0].get(k) != flat[1].get(k)]


def check_spec(spec: PredictorSpec, where: str) -> PredictorSpec:
    """ConfigError naming ``where`` and the key for a value no predictor can use."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: {key}: {message}")

    if not spec.members:
        raise fail("members", "needs at least one {checkpoint, weight}")
    for i, m in enumerate(spec.members):
        if not (math.isfinite(m.weight) and m.weight > 0):
            raise fail(f"members[{i}].weight", f"must be a positive number, got {m.weight}")
    if not spec.classes or len(set(spec.classes)) != len(spec.classes) or not all(
            isinstance(c, str) and c for c in spec.classes):
        raise fail("classes", f"expected distinct class names (e.g. {', '.join(PARTICLE_NAMES)}), got {spec.classes}")
    if not spec.input.channels:
        raise fail("input.channels", "needs at least one tomogram type")
    if spec.input.nan_policy not in ("error", "repair"):
        raise fail("input.nan_policy", f"expected 'error' or 'repair', got {spec.input.nan_policy!r}")
    if spec.input.level < 0:
        raise fail("input.level", f"must be >= 0, got {spec.input.level}")
    spacing = spec.input.spacing_zyx_A
    if spacing is not None and (len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing)):
        raise fail("input.spacing_zyx_A", f"expected three positive voxel sizes in Å (z, y, x) or null, got {spacing}")
    clip = spec.input.clip_percentiles
    if len(clip) != 2 or not 0 <= clip[0] < clip[1] <= 100:
        raise fail("input.clip_percentiles", f"expected [low, high] with 0 <= low < high <= 100, got {clip}")
    tile = spec.tiling.tile_zyx
    if len(tile) != 3 or any(t <= 0 for t in tile):
        raise fail("tiling.tile_zyx", f"expected three positive sides (z, y, x), got {tile}")
    if not 0 <= spec.tiling.overlap < 1:
        raise fail("tiling.overlap", f"must be in [0, 1), got {spec.tiling.overlap}")
    if spec.tiling.blend not in BLEND_MODES:
        raise fail("tiling.blend", f"unknown blend {spec.tiling.blend!r}; valid: {', '.join(BLEND_MODES)}")
    if spec.tiling.batch_size < 1:
        raise fail("tiling.batch_size", f"must be >= 1, got {spec.tiling.batch_size}")
    try:
        resolve_tta(spec.tta)
    except ConfigError as exc:
        raise fail("tta", str(exc)) from None
    if spec.peaks.method not in PEAK_METHODS:
        raise fail("peaks.method", f"unknown peak method {spec.peaks.method!r}; valid: {', '.join(PEAK_METHODS)}")
    if not spec.peaks.nms_radius_factor > 0:
        raise fail("peaks.nms_radius_factor", f"must be > 0, got {spec.peaks.nms_radius_factor}")
    if spec.peaks.min_size_vox < 0:
        raise fail("peaks.min_size_vox", f"must be >= 0, got {spec.peaks.min_size_vox}")
    if spec.peaks.merge_factor is not None and not spec.peaks.merge_factor > 0:
        raise fail("peaks.merge_factor", f"must be > 0 or null, got {spec.peaks.merge_factor}")
    return spec


def _from_doc(doc: dict[str, Any], where: str) -> PredictorSpec:
    doc = dict(doc)
    if isinstance(doc.get("tta"), str):
        try:
            doc["tta"] = list(resolve_tta(doc["tta"]))
        except ConfigError as exc:
            raise ConfigError(f"{where}: tta: {exc}") from None
    return check_spec(build_typed(PredictorSpec, doc, where), where)


def spec_from_recipe(recipe_doc: dict[str, Any], members: Sequence[tuple[str | os.PathLike, float]],
                     thresholds: str | os.PathLike | None, where: str) -> PredictorSpec:
    """A spec of ``members`` (path, weight) with the recipe ``recipe_doc`` (from :func:`recipe`)."""
    doc = {**recipe_doc, "members": [{"checkpoint": str(p), "weight": float(w)} for p, w in members],
           "thresholds": None if thresholds is None else str(thresholds)}
    return _from_doc(doc, where)


def spec_from_config(config: Config, members: Sequence[tuple[str | os.PathLike, float]],
                     thresholds: str | os.PathLike | None = None) -> PredictorSpec:
    """The shipped predictor of ``config`` (``data``, ``infer``, ``postprocess``) for ``members``."""
    doc = {
        "classes": list(config.data.classes),
        "input": {"channels": list(config.data.input_channels), "level": config.data.level,
                  "clip_percentiles": list(config.data.normalisation.clip_percentiles),
                  "nan_policy": config.data.nan_policy,
                  "spacing_zyx_A": None if config.data.spacing_A is None else [float(config.data.spacing_A)] * 3},
        "tiling": {"tile_zyx": list(config.infer.tile_zyx), "overlap": config.infer.overlap,
                   "blend": config.infer.blend, "batch_size": config.infer.batch_size},
        "tta": list(resolve_tta(config.infer.tta)),
        "peaks": dataclasses.asdict(config.postprocess),
    }
    return spec_from_recipe(doc, members, thresholds, "config")


def with_overrides(spec: PredictorSpec, *, tta: str | Sequence[str] | None = None,
                   tile_zyx: Sequence[int] | None = None, batch_size: int | None = None,
                   nan_policy: str | None = None) -> PredictorSpec:
    """``spec`` with the TTA, tile, batch size or non-finite voxel policy replaced (None keeps the spec's),
    checked."""
    tiling = dataclasses.replace(
        spec.tiling,
        **({"tile_zyx": [int(t) for t in tile_zyx]} if tile_zyx is not None else {}),
        **({"batch_size": int(batch_size)} if batch_size is not None else {}),
    )
    inp = dataclasses.replace(spec.input, nan_policy=nan_policy) if nan_policy is not None else spec.input
    new = dataclasses.replace(spec, input=inp, tiling=tiling,
                              tta=list(resolve_tta(tta)) if tta is not None else spec.tta)
    return check_spec(new, "overrides")


def load_spec(path: str | os.PathLike) -> PredictorSpec:
    """Read a spec YAML; member and thresholds paths are taken relative to its folder."""
    path = Path(path)
    doc = read_yaml(path, "predictor spec")
    spec = _from_doc(doc, str(path))
    here = path.parent
    members = [dataclasses.replace(m, checkpoint=str(here / m.checkpoint)) for m in spec.members]
    missing = [m.checkpoint for m in members if not Path(m.checkpoint).is_file()]
    if missing:
        raise DataError(f"{path}: member checkpoints not found: {', '.join(missing)}")
    thresholds = None if spec.thresholds is None else str(here / spec.thresholds)
    return dataclasses.replace(spec, members=members, thresholds=thresholds)


def spec_yaml(spec: PredictorSpec, folder: str | os.PathLike, header: Sequence[str] = ()) -> str:
    """The YAML text of ``spec`` with paths relative to ``folder`` (where the file will live)."""
    here = os.path.abspath(folder)
    doc = dataclasses.asdict(spec)
    doc["members"] = [{"checkpoint": os.path.relpath(os.path.abspath(m.checkpoint), here), "weight": m.weight}
                      for m in spec.members]
    if spec.thresholds is not None:
        doc["thresholds"] = os.path.relpath(os.path.abspath(spec.thresholds), here)
    lines = [f"# {line}" for line in header] + [f"# czii predictor spec, score hash {spec.hash}"]
    return "\n".join(lines) + "\n" + yaml.safe_dump(doc, sort_keys=False)


def save_spec(spec: PredictorSpec, path: str | os.PathLike, header: Sequence[str] = ()) -> Path:
    """Write ``spec`` as YAML (atomically) with paths relative to the file's folder."""
    path = Path(path)
    return atomic_write_text(path, spec_yaml(spec, path.parent, header))


# --------------------------------------------------------------------------- run directories


def run_dir_members(run_dir: RunDir) -> list[tuple[Path, float]]:
    """Every fold's ``best.pt`` at weight 1; DataError naming the folds without one."""
    folds = run_dir.folds()
    if not folds:
        present = sorted(p.name for p in run_dir.path.iterdir()) if run_dir.path.is_dir() else []
        raise ConfigError(f"{run_dir.path}: not a training run directory (no fold*/ folders; found "
                          f"{present or 'nothing'}); expected <run dir>/fold<K>/checkpoints/best.pt")
    missing = [f.name for f in folds if not f.best.is_file()]
    if missing:
        raise DataError(f"{run_dir.path}: {', '.join(missing)} ha{'s' if len(missing) == 1 else 've'} no "
                        "checkpoints/best.pt (training unfinished?); pass the checkpoint files to use explicitly")
    return [(f.best, 1.0) for f in folds]


def run_dir_spec(path: str | os.PathLike) -> PredictorSpec:
    """The shipped spec of a training run directory (see the module docstring)."""
    run_dir = RunDir(path)
    members = run_dir_members(run_dir)
    thresholds = run_dir.thresholds if run_dir.thresholds.is_file() else None
    if thresholds is not None and "spec" in (doc := load_thresholds_doc(thresholds)):
        return spec_from_recipe(doc["spec"], members, thresholds, f"{thresholds}: spec")
    if not run_dir.config.is_file():
        raise ConfigError(f"{run_dir.path}: no config.yaml (written by `czii train`)")
    return spec_from_config(load_config(run_dir.config), members, thresholds)


def resolve_spec(models: str | os.PathLike | Sequence[str | os.PathLike]) -> PredictorSpec | None:
    """The spec a ``--models`` argument names: a run directory or a spec YAML. None for checkpoint files
    (their spec comes from the checkpoints' saved configs, :func:`czii.inference.predictor.checkpoints_spec`)."""
    paths = [Path(models)] if isinstance(models, (str, os.PathLike)) else [Path(p) for p in models]
    if not paths:
        raise ConfigError("no models given: pass a training run directory, checkpoint files or an ensemble YAML")
    if len(paths) == 1 and paths[0].is_dir():
        return run_dir_spec(paths[0])
    if len(paths) == 1 and paths[0].suffix.lower() in YAML_SUFFIXES:
        if not paths[0].is_file():
            raise ConfigError(f"ensemble YAML {paths[0]} does not exist")
        return load_spec(paths[0])
    for p in paths:
        if p.is_dir() or p.suffix.lower() in YAML_SUFFIXES:
            raise ConfigError(
                f"--models {' '.join(map(str, paths))}: give one training run directory, one ensemble YAML, "
                f"or checkpoint files, not a mix ({p} is a {'directory' if p.is_dir() else 'YAML file'})"
            )
        if not p.is_file():
            raise DataError(f"checkpoint {p} not found (expected a .pt file, a training run directory or an "
                            "ensemble YAML)")
    return None


# --------------------------------------------------------------------------- thresholds files

# low and recall-oriented (winning solutions used 0.1–0.25)
DEFAULT_THRESHOLD = 0.2  # of every class, CZII or not
DEFAULT_THRESHOLDS: dict[str, float] = {name: DEFAULT_THRESHOLD for name in PARTICLE_NAMES}


def save_thresholds(path: str | os.PathLike, thresholds: Mapping[str, float], *, report: Mapping) -> Path:
    """Write ``{"thresholds": {...}, **report, "created": ...}`` as JSON atomically; returns the path."""
    path = Path(path)
    if "thresholds" in report:
        raise ValueError("report must not contain the key 'thresholds'")
    thr = check_threshold_map(thresholds, f"thresholds to save to {path}")
    doc = {"thresholds": thr, **report}
    doc.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def load_thresholds(path: str | os.PathLike) -> dict[str, float]:
    """The ``thresholds`` mapping of a thresholds file, validated (known classes, values in [0, 1])."""
    return load_thresholds_doc(path)["thresholds"]


def load_thresholds_doc(path: str | os.PathLike) -> dict:
    """The whole thresholds file (``thresholds`` validated; ``spec_hash`` and ``spec`` when tuned by czii)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"thresholds file {path} does not exist (write one with `czii tune`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"thresholds file {path} is not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), dict):
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError(
            f"thresholds file {path}: expected a JSON object with a 'thresholds' object "
            f"(class name → threshold), found {keys}"
        )
    doc["thresholds"] = check_threshold_map(doc["thresholds"], f"thresholds file {path}")
    if "spec_hash" in doc and not isinstance(doc["spec_hash"], str):
        raise ConfigError(f"thresholds file {path}: spec_hash must be a string, got {doc['spec_hash']!r}")
    check_recorded_hash(doc, f"thresholds file {path}")
    return doc


def resolve_thresholds(thresholds: float | Mapping[str, float], classes: list[str], what: str) -> dict[str, float]:
    """A scalar or a mapping covering ``classes`` → validated ``{class: threshold}``."""
    if not isinstance(thresholds, Mapping):
        thresholds = {name: thresholds for name in classes}
    missing = [c for c in classes if c not in thresholds]
    if missing:
        raise ConfigError(f"{what} have no value for {missing}; given for: {sorted(thresholds)}")
    return check_threshold_map({c: thresholds[c] for c in classes}, what)


def check_threshold_map(thresholds: Mapping, where: str) -> dict[str, float]:
    """``{class: threshold}`` with known class names and values in [0, 1] (ConfigError naming ``where``)."""
    unknown = [k for k in thresholds if k not in BY_NAME]
    if unknown:
        raise ConfigError(f"{where}: unknown class names {unknown}; known: {', '.join(known_names())}")
    if not thresholds:
        raise ConfigError(f"{where}: no thresholds given")
    out = {}
    for name, value in thresholds.items():
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(f"{where}: threshold of {name!r} must be a number in [0, 1], got {value!r}")
        out[name] = float(value)
    return out




@dataclass(frozen=True)
class SpecCheck:
    """Which thresholds a predictor uses and whether they were tuned under its spec."""

    thresholds: dict[str, float] | None  # None: the defaults
    source: str
    tuned_hash: str | None  # the hash recorded in the thresholds file (None: not recorded / defaults)
    spec_hash: str
    status: str  # "match" | "mismatch-allowed" | "unrecorded" | "defaults"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_thresholds(spec: PredictorSpec, *, thresholds: str | os.PathLike | None = None,
                     allow_mismatch: bool = False, how_to_retune: str = "") -> SpecCheck:
    """The thresholds of ``spec`` (or the file ``thresholds``), refused when tuned under another spec.

    A file that records no spec hash (written by hand) is used, with status ``unrecorded``.
    """
    path = thresholds if thresholds is not None else spec.thresholds
    if path is None:
        return SpecCheck(None, "defaults", None, spec.hash, "defaults")
    doc = load_thresholds_doc(path)
    tuned = doc.get("spec_hash")
    values = {k: float(v) for k, v in doc["thresholds"].items()}
    if tuned is None:
        return SpecCheck(values, str(path), None, spec.hash, "unrecorded")
    if tuned == spec.hash:
        return SpecCheck(values, str(path), tuned, spec.hash, "match")
    if not allow_mismatch:
        diff = spec_differences(doc["spec"], spec) if isinstance(doc.get("spec"), dict) else []
        raise ConfigError(
            f"thresholds {path} were tuned under predictor spec {tuned}, but this predictor is spec {spec.hash}"
            + (f" ({'; '.join(diff)})" if diff else "")
            + f". Re-tune under this spec{how_to_retune or ' (czii tune --set ... re-predicts the out-of-fold runs)'}"
            ", or pass --allow-spec-mismatch to use them anyway (the manifest records it)"
        )
    return SpecCheck(values, str(path), tuned, spec.hash, "mismatch-allowed")
