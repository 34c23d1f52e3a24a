"""End-to-end inference: trained models + a dataset → submission CSV and manifest.

Contract of :func:`run_inference` (what ``czii infer`` and the Kaggle notebook call):

- Models (:func:`resolve_models`): a training run directory (every ``fold*/checkpoints/best.pt``
  with equal weights, and ``thresholds.json`` when present), checkpoint files (equal weights), or
  an ensemble YAML (``members: [{checkpoint, weight}]``, optional ``thresholds``, ``tta``,
  ``tile_zyx``, ``overlap``, ``blend``, ``batch_size``, ``postprocess: {...}``; relative paths are
  taken from the YAML's folder). Members must agree on classes and input channels
  (:func:`czii.inference.check_compatible`), pyramid level and normalisation.
- Settings: ``infer`` (tta, tile_zyx, overlap, blend, batch_size) and ``postprocess`` (method,
  nms_radius_factor, min_size_vox, merge_factor) come from the first checkpoint's saved config,
  overridden key by key by the YAML, then by the ``tta`` argument.
- Thresholds: the ``thresholds`` argument (file or mapping) > the YAML's ``thresholds`` > the run
  directory's ``thresholds.json`` > :data:`czii.postprocess.thresholds.DEFAULT_THRESHOLDS` (a note
  is printed).
- Per run: every input channel (tomogram type) at the members' level, each normalised with
  :func:`czii.data.normalize.normalize_volume`, stacked ``[C_in, Z, Y, X]``
  (:func:`czii.data.normalize.load_run_input`, as training reads it) →
  :func:`czii.inference.predict_volume` → :func:`czii.postprocess.peaks.detect_peaks`.
- Output: ``out_csv`` (validated against each run's extent) and ``<out_csv>.manifest.json``, both
  written atomically after everything succeeded; with ``copick_user`` the scored picks also go to
  the dataset's copick overlay. Every input problem is a :class:`czii.errors.CziiError` raised
  before any output exists.
- Under ``torchrun`` (``WORLD_SIZE`` > 1) the runs are dealt round-robin over the ranks
  (:mod:`czii.inference.sharding`), every rank receives all results and returns the same
  :class:`InferenceResult`; rank 0 alone writes. The CSV equals that of one process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from tqdm import tqdm

from czii import distributed as ddp
from czii.config import InferConfig, PostprocessConfig
from czii.data import Dataset, open_dataset
from czii.data.normalize import DEFAULT_CLIP_PERCENTILES, load_run_input
from czii.errors import ConfigError, DataError
from czii.geometry import extent_xyz_A
from czii.inference.ensemble import EnsembleMember, check_compatible, predict_volume
from czii.inference.sharding import gather_outcomes, shard_runs
from czii.inference.tiling import BLEND_MODES
from czii.inference.tta import resolve_tta
from czii.io import atomic_write_text, git_commit, sha256_file
from czii.models import ensemble_member, load_checkpoint
from czii.postprocess.peaks import METHODS, PICK_COLUMNS, detect_peaks
from czii.postprocess.thresholds import DEFAULT_THRESHOLDS, load_thresholds, resolve_thresholds
from czii.submission import to_submission, validate_submission, write_submission

MANIFEST_SUFFIX = ".manifest.json"
INFER_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(InferConfig))
POSTPROCESS_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PostprocessConfig))
ENSEMBLE_KEYS: tuple[str, ...] = ("members", "thresholds", *INFER_KEYS, "postprocess")
MEMBER_KEYS: tuple[str, ...] = ("checkpoint", "weight")
YAML_SUFFIXES = (".yaml", ".yml")
DEFAULT_THRESHOLDS_ORIGIN = "default (czii.postprocess.thresholds.DEFAULT_THRESHOLDS)"


@dataclass(frozen=True)
class ModelSource:
    """What a ``--models`` spec names: checkpoints with weights, an optional thresholds file and
    the inference settings an ensemble YAML overrides (``INFER_KEYS`` and a ``postprocess`` mapping)."""

    checkpoints: tuple[Path, ...]
    weights: tuple[float, ...]
    thresholds_path: Path | None
    settings: dict[str, Any]
    description: str


@dataclass
class InferenceResult:
    """The submission table (``id, experiment, particle_type, x, y, z``) and the manifest written beside it."""

    submission: pd.DataFrame
    manifest: dict[str, Any]


def manifest_path(out_csv: str | Path) -> Path:
    """Where the manifest of ``out_csv`` goes: ``<out_csv>.manifest.json``."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + MANIFEST_SUFFIX)


# --------------------------------------------------------------------------- resolving --models


def _fold_key(path: Path) -> tuple[float, str]:
    digits = re.fullmatch(r"fold(\d+)", path.name)
    return (int(digits.group(1)) if digits else math.inf, path.name)


def _from_run_dir(run_dir: Path) -> ModelSource:
    folds = sorted((p for p in run_dir.glob("fold*") if p.is_dir()), key=_fold_key)
    if not folds:
        present = sorted(p.name for p in run_dir.iterdir())
        raise ConfigError(
            f"{run_dir}: not a training run directory (no fold*/ folders; found {present or 'nothing'}); "
            "expected <run dir>/fold<K>/checkpoints/best.pt"
        )
    missing = [f.name for f in folds if not (f / "checkpoints" / "best.pt").is_file()]
    if missing:
        raise DataError(
            f"{run_dir}: {', '.join(missing)} ha{'s' if len(missing) == 1 else 've'} no checkpoints/best.pt "
            "(training unfinished?); pass the checkpoint files to use explicitly"
        )
    thresholds = run_dir / "thresholds.json"
    return ModelSource(
        checkpoints=tuple(f / "checkpoints" / "best.pt" for f in folds),
        weights=(1.0,) * len(folds),
        thresholds_path=thresholds if thresholds.is_file() else None,
        settings={},
        description=f"run directory {run_dir} ({len(folds)} folds)",
    )


def _from_yaml(path: Path) -> ModelSource:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"ensemble YAML {path} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"ensemble YAML {path}: unreadable ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"ensemble YAML {path}: expected a mapping with 'members', got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(ENSEMBLE_KEYS))
    if unknown:
        raise ConfigError(f"ensemble YAML {path}: unknown keys {unknown}; valid keys: {', '.join(ENSEMBLE_KEYS)}")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"ensemble YAML {path}: 'members' must be a non-empty list of {{checkpoint, weight}}")
    checkpoints, weights = [], []
    for i, member in enumerate(members):
        where = f"ensemble YAML {path}: members[{i}]"
        if not isinstance(member, dict) or not isinstance(member.get("checkpoint"), str):
            raise ConfigError(f"{where}: expected a mapping with a 'checkpoint' path, got {member!r}")
        extra = sorted(set(member) - set(MEMBER_KEYS))
        if extra:
            raise ConfigError(f"{where}: unknown keys {extra}; valid keys: {', '.join(MEMBER_KEYS)}")
        weight = member.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"{where}.weight: expected a number, got {weight!r}")
        checkpoint = path.parent / member["checkpoint"]
        if not checkpoint.is_file():
            raise DataError(f"{where}.checkpoint: {checkpoint} not found")
        checkpoints.append(checkpoint)
        weights.append(float(weight))
    settings = {key: doc[key] for key in INFER_KEYS if key in doc}
    if "postprocess" in doc:
        post = doc["postprocess"]
        if not isinstance(post, dict) or set(post) - set(POSTPROCESS_KEYS):
            raise ConfigError(
                f"ensemble YAML {path}: postprocess must be a mapping with keys from {', '.join(POSTPROCESS_KEYS)}, "
                f"got {post!r}"
            )
        settings["postprocess"] = dict(post)
    thresholds = doc.get("thresholds")
    if thresholds is not None and not isinstance(thresholds, str):
        raise ConfigError(f"ensemble YAML {path}: thresholds must be a path to a thresholds JSON, got {thresholds!r}")
    return ModelSource(
        checkpoints=tuple(checkpoints),
        weights=tuple(weights),
        thresholds_path=path.parent / thresholds if thresholds else None,
        settings=settings,
        description=f"ensemble YAML {path} ({len(checkpoints)} members)",
    )


def resolve_models(spec: str | Path | Sequence[str | Path]) -> ModelSource:
    """Resolve a training run directory, one ensemble YAML, or checkpoint files (equal weights)."""
    paths = [Path(spec)] if isinstance(spec, (str, Path)) else [Path(p) for p in spec]
    if not paths:
        raise ConfigError("no models given: pass a training run directory, checkpoint files or an ensemble YAML")
    if len(paths) == 1 and paths[0].is_dir():
        return _from_run_dir(paths[0])
    if len(paths) == 1 and paths[0].suffix.lower() in YAML_SUFFIXES:
        return _from_yaml(paths[0])
    for p in paths:
        if p.is_dir() or p.suffix.lower() in YAML_SUFFIXES:
            raise ConfigError(
                f"--models {' '.join(map(str, paths))}: give one training run directory, one ensemble YAML, "
                f"or checkpoint files, not a mix ({p} is a {'directory' if p.is_dir() else 'YAML file'})"
            )
        if not p.is_file():
            raise DataError(
                f"checkpoint {p} not found (expected a .pt file, a training run directory or an ensemble YAML)"
            )
    return ModelSource(
        checkpoints=tuple(paths),
        weights=(1.0,) * len(paths),
        thresholds_path=None,
        settings={},
        description=f"{len(paths)} checkpoint file{'s' if len(paths) > 1 else ''}",
    )


# --------------------------------------------------------------------------- models and settings


@dataclass
class LoadedEnsemble:
    """Loaded members and everything else that turns one run into picks."""

    members: list[EnsembleMember]
    metas: list[dict]
    level: int
    clip_percentiles: tuple[float, float]
    infer: InferConfig
    post: PostprocessConfig
    tta_names: tuple[str, ...]
    thresholds: dict[str, float]

    @property
    def classes(self) -> list[str]:
        return list(self.members[0].classes)

    @property
    def input_channels(self) -> tuple[str, ...]:
        return self.members[0].input_channels


def load_ensemble(
    source: ModelSource, tta: str | Sequence[str] | None, thresholds: Mapping[str, float], thresholds_origin: str,
    device: torch.device,
) -> LoadedEnsemble:
    """Load every member of ``source`` on ``device`` and resolve the settings, refusing impossible ones.

    Members must agree on classes, input channels, pyramid level and normalisation; ``tta``
    overrides the saved/YAML setting; ``thresholds`` (from :func:`find_thresholds`, named by
    ``thresholds_origin`` in errors) are checked against the members' classes.
    """
    members, metas = [], []
    for path, weight in zip(source.checkpoints, source.weights):
        model, meta = load_checkpoint(path, device)
        members.append(ensemble_member(model, meta, weight=weight, name=str(path)))
        metas.append(meta)
    check_compatible(members)
    level, clip_percentiles = _input_recipe(members, metas)
    infer, post = _settings(metas[0], source.settings, tta, members[0].name)
    return LoadedEnsemble(
        members=members, metas=metas, level=level, clip_percentiles=clip_percentiles, infer=infer, post=post,
        tta_names=_check_settings(infer, post, members),
        thresholds=resolve_thresholds(thresholds, list(members[0].classes), f"thresholds from {thresholds_origin}"),
    )


def _input_recipe(members: Sequence[EnsembleMember], metas: Sequence[dict]) -> tuple[int, tuple[float, float]]:
    """(pyramid level, normalisation clip percentiles) shared by every member; ConfigError when they differ."""
    levels = [int(meta.get("level", 0)) for meta in metas]
    clips = [tuple(meta.get("normalisation", {}).get("clip_percentiles", DEFAULT_CLIP_PERCENTILES)) for meta in metas]
    for what, values in (("pyramid level", levels), ("normalisation clip percentiles", clips)):
        if len(set(values)) > 1:
            listing = "; ".join(f"{m.name!r}: {v}" for m, v in zip(members, values))
            raise ConfigError(f"ensemble members disagree on {what} (they share one input volume): {listing}")
    return levels[0], clips[0]


def _settings(
    meta: dict, overrides: Mapping[str, Any], tta: str | Sequence[str] | None, checkpoint: str
) -> tuple[InferConfig, PostprocessConfig]:
    saved = meta.get("config") or {}
    infer = {**saved.get("infer", {}), **{k: overrides[k] for k in INFER_KEYS if k in overrides}}
    if tta is not None:
        infer["tta"] = tta if isinstance(tta, str) else list(tta)
    post = {**saved.get("postprocess", {}), **overrides.get("postprocess", {})}
    missing = [f"infer.{k}" for k in INFER_KEYS if k not in infer] + [
        f"postprocess.{k}" for k in POSTPROCESS_KEYS if k not in post
    ]
    if missing:
        raise ConfigError(
            f"inference settings {missing} are set neither by the saved config of {checkpoint} nor by an "
            "ensemble YAML; list them in an ensemble YAML"
        )
    return (
        InferConfig(**{k: infer[k] for k in INFER_KEYS}),
        PostprocessConfig(**{k: post[k] for k in POSTPROCESS_KEYS}),
    )


def _check_settings(infer: InferConfig, post: PostprocessConfig, members: Sequence[EnsembleMember]) -> tuple[str, ...]:
    """Refuse impossible settings before any data is read; returns the TTA transform names."""
    tta_names = resolve_tta(infer.tta)
    tile = infer.tile_zyx
    if not (isinstance(tile, (list, tuple)) and len(tile) == 3 and all(type(t) is int and t > 0 for t in tile)):
        raise ConfigError(f"infer.tile_zyx: expected three positive integers (z, y, x), got {tile!r}")
    for m in members:
        if any(t % m.stride for t in tile):
            raise ConfigError(f"infer.tile_zyx {list(tile)}: every side must be a multiple of member {m.name!r}'s "
                              f"stride {m.stride}")
    if not 0 <= infer.overlap < 1:
        raise ConfigError(f"infer.overlap: must be in [0, 1), got {infer.overlap!r}")
    if type(infer.batch_size) is not int or infer.batch_size < 1:
        raise ConfigError(f"infer.batch_size: must be an integer >= 1, got {infer.batch_size!r}")
    if infer.blend not in BLEND_MODES:
        raise ConfigError(f"infer.blend: unknown blend {infer.blend!r}; valid: {', '.join(BLEND_MODES)}")
    if post.method not in METHODS:
        raise ConfigError(f"postprocess.method: unknown peak method {post.method!r}; valid: {', '.join(METHODS)}")
    return tta_names


def find_thresholds(
    given: str | Path | Mapping[str, float] | None, source: ModelSource
) -> tuple[dict[str, float], str]:
    """(thresholds, where they came from) by the precedence in the module docstring: ``given`` (a file or a
    mapping), ``source``'s thresholds file, else the defaults (origin :data:`DEFAULT_THRESHOLDS_ORIGIN`).
    Checked against the classes only once the models are loaded (:func:`load_ensemble`)."""
    if isinstance(given, Mapping):
        return dict(given), "thresholds argument"
    if given is not None:
        return load_thresholds(given), str(given)
    if source.thresholds_path is not None:
        return load_thresholds(source.thresholds_path), str(source.thresholds_path)
    return dict(DEFAULT_THRESHOLDS), DEFAULT_THRESHOLDS_ORIGIN


# --------------------------------------------------------------------------- data


def _open(data: str | Path, split: str | None) -> Dataset:
    source = Path(data)
    # split picks a split of a Kaggle competition directory; a split folder or a copick config is its own split
    is_competition_dir = source.is_dir() and not (source / "static" / "ExperimentRuns").is_dir()
    return open_dataset(source, split=split if is_competition_dir else None)


def _select_runs(dataset: Dataset, runs: Sequence[str] | None) -> list[str]:
    """Sorted runs to predict (default: all); DataError for an unknown run."""
    available = dataset.runs()
    selected = available if runs is None else sorted(set(runs))
    unknown = [r for r in selected if r not in available]
    if unknown:
        raise DataError(f"unknown runs {unknown} in {dataset.source}; runs: {', '.join(available)}")
    if not selected:
        raise DataError(f"no runs selected in {dataset.source}; runs: {', '.join(available)}")
    return selected


def _check_tomogram_types(dataset: Dataset, runs: Sequence[str], input_channels: Sequence[str]) -> None:
    """DataError naming the first run that lacks a tomogram type the models read (metadata only)."""
    for run in runs:
        present = dataset.tomogram_types(run)
        missing = [t for t in input_channels if t not in present]
        if missing:
            raise DataError(f"run {run!r} has no tomogram of type {', '.join(map(repr, missing))} (the models read "
                            f"{', '.join(input_channels)}); types present: {', '.join(present)}")


# --------------------------------------------------------------------------- the pipeline


def _predict_run(
    run: str, dataset: Dataset, ens: LoadedEnsemble, device: torch.device, progress: bool
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scored picks of one run and its facts (shape, spacing, seconds per stage)."""
    t0 = time.perf_counter()
    volume_czyx, spacing_zyx_A = load_run_input(
        dataset, run, ens.input_channels, level=ens.level, clip_percentiles=ens.clip_percentiles
    )
    t1 = time.perf_counter()
    infer = ens.infer
    probs_czyx = predict_volume(
        ens.members, volume_czyx, tile_zyx=tuple(infer.tile_zyx), overlap=infer.overlap, blend=infer.blend,
        batch_size=infer.batch_size, tta=ens.tta_names, device=device, progress=progress,
    )
    t2 = time.perf_counter()
    post = ens.post
    picks = detect_peaks(
        probs_czyx, ens.classes, spacing_zyx_A, thresholds=ens.thresholds, run=run, method=post.method,
        nms_radius_factor=post.nms_radius_factor, min_size_vox=post.min_size_vox, merge_factor=post.merge_factor,
    )
    t3 = time.perf_counter()
    info = {
        "shape_zyx": [int(s) for s in volume_czyx.shape[1:]],
        "spacing_zyx_A": [float(s) for s in spacing_zyx_A],
        "seconds": {"load": t1 - t0, "predict": t2 - t1, "peaks": t3 - t2},
        "n_picks": len(picks),
    }
    return picks, info


def _write_outputs(out_csv: Path, submission: pd.DataFrame, manifest: dict, **checks) -> None:
    """The CSV (validated again by write_submission) and its manifest, each atomically; neither stays alone."""
    write_submission(submission, out_csv, **checks)
    try:
        atomic_write_text(manifest_path(out_csv), json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        out_csv.unlink(missing_ok=True)
        raise


def run_inference(
    models: str | Path | Sequence[str | Path],
    data: str | Path,
    *,
    split: str | None = "test",
    runs: Sequence[str] | None = None,
    out_csv: str | Path,
    tta: str | Sequence[str] | None = None,
    thresholds: str | Path | Mapping[str, float] | None = None,
    device: str | None = None,
    copick_user: str | None = None,
    copick_session: str = "0",
    progress: bool = True,
    tile_zyx: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> InferenceResult:
    """Predict ``runs`` (default: all) of ``data`` with ``models`` and write ``out_csv`` + manifest.

    ``split`` selects the split of a Kaggle competition directory (a copick config or a split
    folder is used as it is). ``tta``, ``tile_zyx`` and ``batch_size`` override the saved config and
    the ensemble YAML (smaller tiles bound the memory of CPU runs); ``tta`` replaces the preset/transforms,
    ``thresholds`` (a thresholds JSON or a class → threshold mapping) those found with the
    models, ``device`` defaults to CUDA when available. See the module docstring.
    """
    started = time.perf_counter()
    out_csv = Path(out_csv)
    if out_csv.is_dir():
        raise ConfigError(f"output {out_csv} is a directory; give a CSV file path, e.g. submissions/<name>.csv")
    blocker = next((p for p in out_csv.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"output {out_csv}: {blocker} is a file, not a folder")
    # everything that needs no model is checked first: building models takes a while
    source = resolve_models(models)
    cli_settings = {"tile_zyx": list(tile_zyx) if tile_zyx else None, "batch_size": batch_size}
    source = dataclasses.replace(
        source, settings={**source.settings, **{k: v for k, v in cli_settings.items() if v is not None}}
    )
    if tta is not None:
        resolve_tta(tta)
    thr_values, thr_origin = find_thresholds(thresholds, source)
    dataset = _open(data, split)
    selected = _select_runs(dataset, runs)
    if copick_user is not None:
        # validates the ids (and refuses the truth user); a table without runs writes nothing
        dataset.write_picks(pd.DataFrame(columns=list(PICK_COLUMNS)), user_id=copick_user, session_id=copick_session)
    ctx = ddp.init_distributed(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        ens = load_ensemble(source, tta, thr_values, thr_origin, ctx.device)
        _check_tomogram_types(dataset, selected, ens.input_channels)
        if thr_origin == DEFAULT_THRESHOLDS_ORIGIN and ctx.is_main:
            print(f"note: no thresholds file given or found with the models ({source.description}); using the "
                  f"default thresholds {ens.thresholds} (tune them with `czii tune`)", file=sys.stderr)

        def predict_shard() -> dict[str, tuple[pd.DataFrame, dict]]:
            mine = shard_runs(selected, ctx.rank, ctx.world_size)
            desc = "runs" if not ctx.enabled else f"runs (rank {ctx.rank})"
            bar = tqdm(mine, desc=desc, unit="run", disable=None if progress else True)
            return {run: _predict_run(run, dataset, ens, ctx.device, progress) for run in bar}

        by_run = {run: out for shard in gather_outcomes(predict_shard, ctx) for run, out in shard.items()}
        picks = pd.concat([by_run[run][0] for run in selected], ignore_index=True)
        submission = to_submission(picks)
        checks = {
            "extents_xyz_A": {run: extent_xyz_A(info["shape_zyx"], info["spacing_zyx_A"])
                              for run, (_, info) in by_run.items()},
            "runs": selected,
        }
        validate_submission(submission, **checks)
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "out_csv": str(out_csv),
            "models": source.description,
            "checkpoints": [
                {"path": str(path), "sha256": sha256_file(path), "weight": weight, "epoch": meta.get("epoch"),
                 "val_score": meta.get("val_score")}
                for path, weight, meta in zip(source.checkpoints, source.weights, ens.metas)
            ],
            "classes": ens.classes,
            "input_channels": list(ens.input_channels),
            "level": ens.level,
            "normalisation": {"clip_percentiles": [float(p) for p in ens.clip_percentiles]},
            "thresholds": {"values": ens.thresholds, "source": thr_origin},
            "inference": {"infer": dataclasses.asdict(ens.infer), "postprocess": dataclasses.asdict(ens.post)},
            "tta": list(ens.tta_names),
            "data": {"source": str(data), "split": dataset.split, "runs": selected},
            "git_commit": git_commit(),
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "torch_version": torch.__version__,
            "timings": {run: by_run[run][1] for run in selected},
            "picks_per_class": {name: int((picks["particle_type"] == name).sum()) for name in ens.classes},
            "n_picks": len(submission),
            "total_seconds": time.perf_counter() - started,
        }
        if ctx.is_main:
            _write_outputs(out_csv, submission, manifest, **checks)
            if copick_user is not None:
                try:
                    dataset.write_picks(picks, user_id=copick_user, session_id=copick_session)
                except BaseException:
                    out_csv.unlink(missing_ok=True)
                    manifest_path(out_csv).unlink(missing_ok=True)
                    raise
        return InferenceResult(submission=submission, manifest=manifest)
    finally:
        ddp.shutdown(ctx)
