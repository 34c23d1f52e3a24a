"""One split of a CZII dataset, read through copick: runs, tomograms and picks.

:func:`open_dataset` accepts a filesystem copick config JSON, a Kaggle competition directory
(``split`` ``"train"`` by default, or ``"test"``) or one of its split folders. Kaggle picks are
staged into a copick overlay under ``workdir`` (:mod:`czii.data.staging`); the input is never
written to. Tomograms come back as :class:`Volume` (float32 z, y, x), taken from the finest
``VoxelSpacing`` folder that holds the type, with the spacing of the requested pyramid level
read from the OME-Zarr ``.zattrs`` (not from the folder name). Picks come back as a DataFrame
``experiment, particle_type, x, y, z`` (Å) with canonical class names (:mod:`czii.particles`);
``aliases`` maps other object names to them (or to None to ignore an object).
:meth:`Dataset.write_picks` stores predictions in the copick overlay (for Kaggle sources the
staged one) so copick viewers show them. Every problem with the data raises
:class:`czii.errors.DataError` naming the run, the file and what exists.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import copick
import numpy as np
import pandas as pd
import pydantic
import zarr
from copick.impl.filesystem import CopickRootFSSpec, CopickRunFSSpec, CopickTomogramFSSpec
from copick.models import CopickLocation, CopickPoint
from copick.util.escape import sanitize_name

from czii.formats.omezarr import level_spacing_zyx_A
from czii.formats.picks_json import write_picks_json
from czii.data.staging import (
    EXPECTED_LAYOUT,
    TRUTH_SESSION_ID,
    TRUTH_USER_ID,
    default_workdir,
    find_kaggle_split,
    stage_kaggle_split,
)
from czii.errors import ConfigError, DataError, SubmissionError
from czii.geometry import extent_xyz_A
from czii.particles import BY_NAME, PARTICLE_NAMES, known_names, particles_from_copick, register
from czii.picks import PICK_COLUMNS, empty_table, read_picks_csv

KAGGLE_TOMO_TYPE = "denoised"
NAN_POLICIES = ("error", "repair")
OUT_OF_VOLUME_POLICIES = ("error", "drop")


@dataclass(frozen=True)
class Volume:
    """One pyramid level of one tomogram: ``data`` float32 z, y, x; ``spacing_zyx_A`` Å per voxel."""

    data: np.ndarray
    spacing_zyx_A: tuple[float, float, float]
    run: str
    tomo_type: str
    level: int


def _check_aliases(aliases: Mapping[str, str | None] | None) -> dict[str, str | None]:
    checked = dict(aliases or {})
    for name, target in checked.items():
        if target is not None and target not in BY_NAME:
            raise ConfigError(
                f"aliases: {name!r} maps to {target!r}, which is not a particle class "
                f"(classes: {', '.join(PARTICLE_NAMES)}; use None to ignore an object)"
            )
    return checked


def _check_copick_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not value or sanitize_name(value, suppress_warnings=True) != value:
        raise DataError(f"{what} {value!r} is not a valid copick id (non-empty; no '_', spaces or /\\:*?\"<>|)")


def _picks_error(where: str, exc: Exception) -> DataError:
    if isinstance(exc, json.JSONDecodeError):
        problem = "picks file is empty" if not exc.doc.strip() else f"not valid JSON ({exc})"
        return DataError(f"{where}: {problem}")
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return DataError(f"{where}: malformed picks file: {field}: {first['msg']}")
    return DataError(f"{where}: unreadable picks file ({type(exc).__name__}: {exc})")


def _open_copick_root(path: Path, aliases: Mapping[str, str | None]) -> CopickRootFSSpec:
    """The copick root of ``path``; its pickable objects that are not CZII classes (nor aliased to one) become
    classes (:func:`czii.particles.register`)."""
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict) or "pickable_objects" not in doc:
        raise DataError(f"{path}: not a copick config; {EXPECTED_LAYOUT}")
    config_type = doc.get("config_type", "filesystem")
    if config_type != "filesystem":
        raise DataError(
            f"{path}: copick config_type {config_type!r} is not supported; czii reads filesystem projects "
            "(download the runs and point a 'filesystem' config at them)"
        )
    try:
        root = copick.from_file(str(path))
    except (pydantic.ValidationError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: invalid copick config ({exc})") from None
    objects = [o for o in doc["pickable_objects"] if isinstance(o, dict) and o.get("name") not in aliases]
    register(particles_from_copick(objects, str(path)))
    return root


def non_finite_policy(data: np.ndarray, nan_policy: str, what: str) -> np.ndarray:
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == 0:
        return data
    if nan_policy == "error":
        raise DataError(
            f"{what}: {n_bad} non-finite voxels (NaN/inf); set data.nan_policy: repair in the config (or "
            "--set data.nan_policy=repair) to replace them with the mean of the finite voxels"
        )
    if n_bad == data.size:
        raise DataError(f"{what}: all {n_bad} voxels are non-finite; nothing to repair from")
    mean = float(data[finite].mean(dtype=np.float64))
    warnings.warn(f"{what}: replaced {n_bad} non-finite voxels with the finite mean {mean:.6g}", stacklevel=3)
    return np.where(finite, data, np.float32(mean))


class Dataset:
    """One split of a dataset as a copick project (see the module docstring)."""

    def __init__(
        self,
        root: CopickRootFSSpec,
        config_path: Path,
        *,
        source: Path,
        split: str | None,
        aliases: dict[str, str | None],
        tomo_type: str | None,
    ) -> None:
        self._root = root
        self.config_path = config_path
        self.source = source
        self.split = split
        self.tomo_type = tomo_type
        self._aliases = aliases
        self._runs = {run.name: run for run in root.runs}
        if not self._runs:
            raise DataError(
                f"{source}: no runs found (static root {root.root_static}/ExperimentRuns, "
                f"overlay root {root.root_overlay}/ExperimentRuns)"
            )

    def __repr__(self) -> str:
        return (
            f"Dataset({str(self.source)!r}, split={self.split!r}, runs={len(self._runs)}, "
            f"tomo_type={self.tomo_type!r})"
        )

    def runs(self) -> list[str]:
        """Run names, sorted."""
        return sorted(self._runs)

    def _run(self, run: str) -> CopickRunFSSpec:
        try:
            return self._runs[run]
        except KeyError:
            raise DataError(f"unknown run {run!r} in {self.source}; runs: {', '.join(self.runs())}") from None

    def _tomograms_by_type(self, run: str) -> dict[str, CopickTomogramFSSpec]:
        """Tomogram type → copick tomogram at the finest voxel spacing that has it."""
        copick_run = self._run(run)
        try:
            spacings = sorted(copick_run.voxel_spacings, key=lambda vs: vs.voxel_size)
        except ValueError as exc:
            raise DataError(
                f"run {run!r}: unreadable VoxelSpacing folder name under {copick_run.static_path} ({exc})"
            ) from None
        if not spacings:
            raise DataError(f"run {run!r}: no voxel spacing (no VoxelSpacing<Å> folder in {copick_run.static_path})")
        by_type: dict[str, CopickTomogramFSSpec] = {}
        for vs in spacings:
            for tomo in vs.tomograms:
                by_type.setdefault(tomo.tomo_type, tomo)
        if not by_type:
            folders = ", ".join(f"VoxelSpacing{vs.voxel_size:.3f}" for vs in spacings)
            raise DataError(f"run {run!r}: no <type>.zarr tomogram in {folders} under {copick_run.static_path}")
        return by_type

    def tomogram_types(self, run: str) -> list[str]:
        """Tomogram types present for ``run``, sorted."""
        return sorted(self._tomograms_by_type(run))

    def _tomogram_entry(self, run: str, tomo_type: str | None) -> tuple[CopickTomogramFSSpec, str, str]:
        """(copick tomogram, resolved type, location of its zarr store) of one tomogram; nothing opened."""
        by_type = self._tomograms_by_type(run)
        chosen = tomo_type or self.tomo_type
        if chosen is None:
            if len(by_type) > 1:
                raise DataError(
                    f"run {run!r}: several tomogram types ({', '.join(sorted(by_type))}) and no default for "
                    "this dataset; pass tomo_type"
                )
            chosen = next(iter(by_type))
        if chosen not in by_type:
            raise DataError(
                f"run {run!r} has no {chosen!r} tomogram; types present: {', '.join(sorted(by_type))}"
            )
        tomo = by_type[chosen]
        return tomo, chosen, tomo.static_path if tomo.read_only else tomo.overlay_path

    def _group(self, run: str, tomo_type: str | None) -> tuple[zarr.Group, dict, str, str]:
        """(zarr group, its .zattrs, resolved type, location) of one tomogram; no voxels read."""
        tomo, chosen, where = self._tomogram_entry(run, tomo_type)
        try:
            group = zarr.open_group(tomo.zarr(), mode="r")
            zattrs = group.attrs.asdict()
        except Exception as exc:  # zarr and fsspec raise many types for broken stores
            raise DataError(f"{where}: unreadable zarr group ({type(exc).__name__}: {exc})") from None
        return group, zattrs, chosen, where

    def _level_array(
        self, run: str, tomo_type: str | None, level: int
    ) -> tuple[zarr.Array, tuple[float, float, float], str, str]:
        """(zarr array, spacing z,y,x Å, resolved type, location) of one level; nothing read yet."""
        group, zattrs, chosen, where = self._group(run, tomo_type)
        spacing = level_spacing_zyx_A(zattrs, level, where)
        try:
            array = group[str(level)]
        except Exception as exc:
            raise DataError(
                f"{where}: pyramid level {level} is listed in .zattrs but unreadable "
                f"({type(exc).__name__}: {exc}); arrays present: {sorted(group.array_keys())}"
            ) from None
        if array.ndim != 3:
            raise DataError(f"{where}/{level}: expected a 3-D z,y,x array, got shape {array.shape}")
        return array, spacing, chosen, where

    def levels(self, run: str, tomo_type: str | None = None) -> list[tuple[int, tuple[float, float, float]]]:
        """(level, spacing z, y, x Å) of every pyramid level of one tomogram listed in its ``.zattrs``, finest
        first (metadata only, one read)."""
        _, zattrs, _, where = self._group(run, tomo_type)
        level_spacing_zyx_A(zattrs, 0, where)  # level 0 must exist: its error names the levels present
        paths = [d.get("path") for d in zattrs["multiscales"][0]["datasets"]]
        levels = sorted(int(p) for p in paths if isinstance(p, str) and p.isdigit())
        return [(lv, level_spacing_zyx_A(zattrs, lv, where)) for lv in levels]

    def tomogram_path(self, run: str, tomo_type: str | None = None) -> Path:
        """The folder of one tomogram's zarr store (where its files lie; nothing is read)."""
        return Path(self._tomogram_entry(run, tomo_type)[2])

    def source_facts(self, run: str) -> dict:
        """Where the run's tomogram comes from and where its voxel size was read (for manifests)."""
        return {"format": "ome-zarr (copick)", "spacing_source": "OME-Zarr scale", "translation_zyx_A": [0.0] * 3}

    def tomogram_shape(self, run: str, tomo_type: str | None = None, level: int = 0) -> tuple[int, int, int]:
        """Shape z, y, x of one level, from the metadata only."""
        array, *_ = self._level_array(run, tomo_type, level)
        return tuple(int(s) for s in array.shape)

    def tomogram(self, run: str, tomo_type: str | None = None, level: int = 0, nan_policy: str = "error") -> Volume:
        """Read one level of a tomogram as float32 z, y, x with its spacing.

        ``nan_policy="error"`` raises on NaN/inf voxels; ``"repair"`` replaces them with the mean
        of the finite voxels and warns with their count.
        """
        if nan_policy not in NAN_POLICIES:
            raise ConfigError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        array, spacing, chosen, where = self._level_array(run, tomo_type, level)
        present, expected = array.nchunks_initialized, array.nchunks  # store keys only, no voxel read
        if present < expected:
            raise DataError(
                f"{where}/{level}: {expected - present} of {expected} chunks are missing (zarr would read them as "
                f"the fill value {array.fill_value!r}); the tomogram of run {run!r} is incomplete"
            )
        try:
            data = np.asarray(array[...], dtype=np.float32)
        except Exception as exc:  # codec and chunk errors come in many types
            raise DataError(f"{where}/{level}: unreadable zarr data ({type(exc).__name__}: {exc})") from None
        what = f"run {run!r} tomogram {chosen!r} level {level} ({where})"
        data = non_finite_policy(data, nan_policy, what)
        return Volume(data=data, spacing_zyx_A=spacing, run=run, tomo_type=chosen, level=level)

    def picks_in_volume(self, picks: pd.DataFrame, policy: str = "error") -> pd.DataFrame:
        """``picks`` (of this dataset's runs) without the ones more than one particle radius outside their
        run's tomogram (level 0 metadata; runs without tomograms are not checked): ``policy`` ``error``
        refuses them with a DataError naming the run, a point and the extent; ``drop`` drops them and says
        how many on stderr."""
        if policy not in OUT_OF_VOLUME_POLICIES:
            raise ConfigError(f"data.out_of_volume must be one of {OUT_OF_VOLUME_POLICIES}, got {policy!r}")
        outside = np.zeros(len(picks), dtype=bool)
        for run, rows in picks.groupby("experiment", sort=True):
            try:
                types = self.tomogram_types(str(run))
            except DataError:
                continue  # a picks-only project (e.g. a solution): no extent to check against
            array, spacing, chosen, _ = self._level_array(str(run), self.tomo_type or types[0], 0)
            upper = extent_xyz_A(array.shape, spacing)
            radius = rows["particle_type"].map(lambda c: BY_NAME[c].radius_A).to_numpy()[:, None]
            xyz = rows[["x", "y", "z"]].to_numpy(dtype=np.float64)
            bad = ((xyz < -radius) | (xyz > upper + radius)).any(axis=1)
            if bad.any() and policy == "error":
                first = rows[bad].iloc[0]
                raise DataError(
                    f"{self.source}: run {run!r} has {int(bad.sum())} picks more than one radius outside its "
                    f"{chosen} tomogram (x, y, z within [0, {upper[0]:.1f}] × [0, {upper[1]:.1f}] × "
                    f"[0, {upper[2]:.1f}] Å), e.g. {first.particle_type} at ({first.x:.1f}, {first.y:.1f}, "
                    f"{first.z:.1f}) Å; fix the picks, or set data.out_of_volume: drop to train without them"
                )
            outside[picks.index.get_indexer(rows.index[bad])] = True
        if outside.any():
            print(f"note: dropped {int(outside.sum())} picks more than one radius outside their tomogram "
                  f"(data.out_of_volume: drop) in {self.source}", file=sys.stderr)
        return picks[~outside].reset_index(drop=True)

    def _class_of(self, object_name: str, run: str) -> str | None:
        if object_name in self._aliases:
            return self._aliases[object_name]
        if object_name in BY_NAME:
            return object_name
        raise DataError(
            f"run {run!r}: object {object_name!r} is not a particle class and not in aliases; "
            f"classes: {', '.join(known_names())}; aliases: {sorted(self._aliases) or 'none'} "
            f"(pass aliases={{{object_name!r}: '<class>'}}, or None to ignore it)"
        )

    def _fresh_picks(self, run: str, user_id: str, session_id: str) -> list:
        copick_run = self._run(run)
        try:
            copick_run.refresh_picks()
            return copick_run.get_picks(user_id=user_id, session_id=session_id)
        except IndexError:
            raise DataError(
                f"run {run!r}: a file in {copick_run.overlay_path}/Picks or {copick_run.static_path}/Picks is not "
                "named <user>_<session>_<object>.json (Kaggle picks folders must be opened as a Kaggle directory)"
            ) from None

    def picks(
        self, runs: Iterable[str] | None = None, user_id: str = TRUTH_USER_ID, session_id: str = TRUTH_SESSION_ID
    ) -> pd.DataFrame:
        """Picks of ``runs`` (all by default) by ``user_id``/``session_id``, sorted by run, class, x, y, z."""
        names = self.runs() if runs is None else [runs] if isinstance(runs, str) else list(runs)
        frames = []
        for run in names:
            for picks in self._fresh_picks(run, user_id, session_id):
                cls = self._class_of(picks.pickable_object_name, run)
                if cls is None:
                    continue
                try:
                    xyz_A = picks.numpy()[0].reshape(-1, 3)
                except (json.JSONDecodeError, pydantic.ValidationError, OSError, TypeError, UnicodeDecodeError) as exc:
                    raise _picks_error(picks.path, exc) from None
                bad = ~np.isfinite(xyz_A).all(axis=1)
                if bad.any():
                    first = int(np.flatnonzero(bad)[0])
                    raise DataError(f"{picks.path}: point {first} has a non-finite coordinate")
                frames.append(pd.DataFrame({
                    "experiment": run, "particle_type": cls, "x": xyz_A[:, 0], "y": xyz_A[:, 1], "z": xyz_A[:, 2],
                }))
        if not frames:
            return empty_table(PICK_COLUMNS)
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values(list(PICK_COLUMNS), kind="mergesort").reset_index(drop=True)

    def _object_name(self, cls: str) -> str | None:
        """The project's object name for class ``cls``: the class itself or an alias of it; None if absent."""
        in_config = {obj.name for obj in self._root.config.pickable_objects}
        if cls in in_config and self._aliases.get(cls, cls) == cls:
            return cls
        aliased = [name for name in sorted(self._aliases) if self._aliases[name] == cls and name in in_config]
        return aliased[0] if aliased else None

    def write_picks(self, df: pd.DataFrame, user_id: str = "czii", session_id: str = "0") -> None:
        """Write picks (``experiment, particle_type, x, y, z`` Å, optional ``score``) into the copick overlay.

        For every run in ``df`` one file per class known to the project is (re)written, empty
        where ``df`` has no rows, so a second call replaces the first. Everything is validated
        before anything is written; each file is written atomically.
        """
        missing = [c for c in PICK_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"write_picks: missing columns {missing}; expected {list(PICK_COLUMNS)} (+ score)")
        _check_copick_id(user_id, "user_id")
        _check_copick_id(session_id, "session_id")
        if (user_id, session_id) == (TRUTH_USER_ID, TRUTH_SESSION_ID):
            raise DataError(f"write_picks: {user_id}/{session_id} is the ground-truth user/session; choose another")
        unknown = sorted(set(df["particle_type"]) - set(BY_NAME))
        if unknown:
            raise DataError(f"write_picks: unknown particle types {unknown}; classes: {', '.join(known_names())}")
        objects = {cls: self._object_name(cls) for cls in known_names()}
        absent = sorted(set(df["particle_type"]) - {cls for cls, obj in objects.items() if obj})
        if absent:
            raise DataError(f"write_picks: {self.config_path} has no pickable object for classes {absent}")
        xyz_A = df[["x", "y", "z"]].to_numpy(dtype=np.float64)
        scores = df["score"].to_numpy(dtype=np.float64) if "score" in df.columns else np.ones(len(df))
        if not np.isfinite(xyz_A).all() or not np.isfinite(scores).all():
            raise DataError("write_picks: non-finite x, y, z or score values")
        run_names = sorted(set(df["experiment"]))
        for run in run_names:
            static = [p.path for p in self._fresh_picks(run, user_id, session_id) if p.read_only]
            if static:
                raise DataError(f"write_picks: picks {user_id}/{session_id} of run {run!r} are read-only: {static}")
        for run in run_names:
            copick_run = self._run(run)
            in_run = (df["experiment"] == run).to_numpy()
            for cls, obj in objects.items():
                if obj is None:
                    continue
                rows = np.flatnonzero(in_run & (df["particle_type"] == cls).to_numpy())
                picks = copick_run.new_picks(obj, session_id=session_id, user_id=user_id, exist_ok=True)
                picks.meta.trust_orientation = False  # identity transforms: peaks carry no orientation
                picks.meta.points = [
                    CopickPoint(location=CopickLocation(x=x, y=y, z=z), score=s)
                    for (x, y, z), s in zip(xyz_A[rows], scores[rows])
                ]
                write_picks_json(picks.path, picks.meta.model_dump())
            copick_run.refresh_picks()


def open_dataset(
    source: str | Path,
    *,
    split: str | None = None,
    aliases: Mapping[str, str | None] | None = None,
    tomo_type: str | None = None,
    workdir: str | Path | None = None,
) -> Dataset:
    """Open a copick config JSON, a Kaggle directory (``split`` train/test) or a Kaggle split folder.

    ``tomo_type`` is the default tomogram type (Kaggle: ``"denoised"``; a copick project without
    one uses the run's only type). ``workdir`` (Kaggle only) receives the staged copick overlay in
    ``<workdir>/<split>``; by default a cache folder keyed by the input path
    (:func:`czii.data.staging.default_workdir`).
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DataError(f"{source}: does not exist; {EXPECTED_LAYOUT}")
    alias_map = _check_aliases(aliases)
    if source.is_file():
        if split is not None:
            raise DataError(f"{source}: split={split!r} applies to Kaggle directories only, not to a copick config")
        root = _open_copick_root(source, alias_map)
        return Dataset(root, source, source=source, split=None, aliases=alias_map, tomo_type=tomo_type)
    split_dir = find_kaggle_split(source, split)
    if split_dir is None:
        raise DataError(f"{source}: not a Kaggle directory; {EXPECTED_LAYOUT}")
    work = Path(workdir) / split_dir.name if workdir is not None else default_workdir(split_dir)
    config_path = stage_kaggle_split(split_dir, work, source)
    root = _open_copick_root(config_path, alias_map)
    return Dataset(
        root, config_path, source=source, split=split_dir.name, aliases=alias_map,
        tomo_type=tomo_type or KAGGLE_TOMO_TYPE,
    )


def load_solution(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Truth picks (experiment, particle_type, x, y, z Å) from a CSV, a copick config JSON or a Kaggle directory.

    ``split`` ("train"/"test") selects the split of a Kaggle directory (:func:`open_dataset`);
    it is not used for a CSV. SubmissionError for a missing or malformed source or no picks.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        table = read_picks_csv(path, "solution")
    elif path.is_dir() or (path.is_file() and path.suffix.lower() == ".json"):
        dataset = open_dataset(path, split=split)
        table = dataset.picks_in_volume(dataset.picks())
    else:
        raise SubmissionError(
            f"solution {path} must be a CSV file, a copick config JSON or a Kaggle directory"
            + ("" if path.exists() else " (it does not exist)")
        )
    if table.empty:
        raise SubmissionError(f"solution {path} holds no truth picks" + (f" (split {split!r})" if split else ""))
    return table[list(PICK_COLUMNS)]
