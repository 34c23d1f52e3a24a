"""Kaggle competition folders as copick projects, without writing into them.

A Kaggle download (``czii-cryo-et-object-identification/``) has ``<split>/static/ExperimentRuns/
<run>/VoxelSpacing10.000/<type>.zarr`` and, for ``train`` only, ``<split>/overlay/ExperimentRuns/
<run>/Picks/<particle>.json``. copick needs picks files named ``<user>_<session>_<object>.json``,
so :func:`stage_kaggle_split` copies each validated picks file to
``<workdir>/overlay/ExperimentRuns/<run>/Picks/curation_0_<particle>.json`` and writes
``<workdir>/copick_config.json`` whose ``static_root`` is the user's ``<split>/static`` (read in
place) and whose ``overlay_root`` is the staged overlay (where predicted picks are written too).
Every file is written under a temporary name and renamed, so concurrent openers (DDP ranks) and
interrupted runs never see a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import copick
from copick.util.escape import sanitize_name

from czii.errors import DataError
from czii.io import atomic_write_bytes, atomic_write_text
from czii.particles import PARTICLE_NAMES, PARTICLES
from czii.formats.picks_json import read_picks_json

TRUTH_USER_ID = "curation"
TRUTH_SESSION_ID = "0"
KAGGLE_SPLITS = ("train", "test")
CONFIG_NAME = "copick_config.json"
EXPECTED_LAYOUT = (
    "expected a copick config JSON (an object with 'pickable_objects' and 'overlay_root'), "
    "a Kaggle competition directory (with train/static/ExperimentRuns or test/static/ExperimentRuns) "
    "or one of its split folders (with static/ExperimentRuns); for inference also a folder or glob of "
    ".mrc/.rec tomograms or a bare OME-Zarr store"
)


def _is_split_dir(path: Path) -> bool:
    return (path / "static" / "ExperimentRuns").is_dir()


def find_kaggle_split(source: Path, split: str | None) -> Path | None:
    """The split folder of a Kaggle directory or split folder ``source``; None if ``source`` is neither.

    A Kaggle directory defaults to ``split="train"``; a split folder is taken as it is, and a
    ``split`` that contradicts its name is an error.
    """
    if _is_split_dir(source):
        if split is not None and split != source.name:
            raise DataError(f"{source} is the split folder {source.name!r}, but split={split!r} was asked for")
        return source
    present = [s for s in KAGGLE_SPLITS if _is_split_dir(source / s)]
    if not present:
        return None
    chosen = "train" if split is None else split
    if chosen not in present:
        raise DataError(
            f"{source}: no split {chosen!r} (no {chosen}/static/ExperimentRuns); splits present: {', '.join(present)}"
        )
    return source / chosen


def default_workdir(split_dir: Path) -> Path:
    """Cache folder for a split: ``$CZII_CACHE`` (or ``~/.cache/czii``) / ``kaggle-<split>-<hash of its path>``."""
    key = hashlib.sha256(str(split_dir.resolve()).encode()).hexdigest()[:16]
    base = Path(os.environ.get("CZII_CACHE") or Path.home() / ".cache" / "czii")
    return base / f"kaggle-{split_dir.name}-{key}"


def _pickable_objects(extra_names: set[str]) -> list[dict]:
    objects = [
        {
            "name": p.name, "is_particle": True, "label": p.label, "color": list(p.color_rgba),
            "pdb_id": p.pdb_id, "radius": p.radius_A,
        }
        for p in PARTICLES
    ]
    for label, name in enumerate(sorted(extra_names - set(PARTICLE_NAMES)), start=len(PARTICLES) + 1):
        objects.append({"name": name, "is_particle": True, "label": label, "color": [128, 128, 128, 128]})
    return objects


def stage_kaggle_split(split_dir: Path, workdir: Path, input_root: Path) -> Path:
    """Stage the picks of ``split_dir`` into ``workdir`` and write the copick config there; returns its path.

    ``input_root`` is the folder the user gave (the Kaggle directory or the split folder); a
    ``workdir`` inside it is refused.

    Each ``Picks/<particle>.json`` is validated (:func:`read_picks_json`) and must name its own object.
    Staged truth files whose source is gone are removed; other files in the overlay (written
    predictions) are kept.
    """
    split_dir = split_dir.resolve()
    workdir = workdir.expanduser().resolve()
    if workdir.is_relative_to(input_root.resolve()):
        raise DataError(f"workdir {workdir} lies inside the input {input_root}; czii never writes into its input")
    staged_runs = workdir / "overlay" / "ExperimentRuns"
    staged: dict[Path, Path] = {}
    names: set[str] = set()
    for src in sorted((split_dir / "overlay" / "ExperimentRuns").glob("*/Picks/*.json")):
        if src.name.startswith(".") or src.parent.parent.name.startswith("."):
            continue
        name, _ = read_picks_json(src)
        if name != src.stem:
            raise DataError(f"{src}: 'pickable_object_name' is {name!r} but the file name says {src.stem!r}")
        if sanitize_name(name, suppress_warnings=True) != name:
            raise DataError(f"{src}: object name {name!r} is not a valid copick name (no '_', spaces or /\\:*?\"<>|)")
        staged[staged_runs / src.parent.parent.name / "Picks" / f"{TRUTH_USER_ID}_{TRUTH_SESSION_ID}_{name}.json"] = src
        names.add(name)
    staged_runs.mkdir(parents=True, exist_ok=True)
    for dst, src in staged.items():
        atomic_write_bytes(dst, src.read_bytes())
    for old in staged_runs.glob(f"*/Picks/{TRUTH_USER_ID}_{TRUTH_SESSION_ID}_*.json"):
        if old not in staged:
            old.unlink(missing_ok=True)
    config = {
        "config_type": "filesystem",
        "name": f"czii Kaggle {split_dir.name}",
        "description": f"Generated by czii: tomograms read in place from {split_dir}/static, picks staged here.",
        "version": copick.__version__,
        "pickable_objects": _pickable_objects(names),
        "static_root": f"local://{split_dir / 'static'}",
        "overlay_root": f"local://{workdir / 'overlay'}",
    }
    config_path = workdir / CONFIG_NAME
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
    return config_path
