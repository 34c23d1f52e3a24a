"""Offline Kaggle submission: the dataset folder a notebook without internet installs and runs from.

Contract of :func:`build_kaggle_dataset` ``(models, out, ...)`` (what ``czii kaggle-build`` calls):

```
out/
  wheels/          czii (built from the source tree) + every dependency in its resolved closure except
                   the packages Kaggle's image provides (PROVIDED_PATTERNS: a CUDA torch, torchvision,
                   triton, nvidia-*, cuda-*), as wheels for the target Python and platforms
  models/          the ensemble's checkpoints (copied)
  thresholds.json  the models' thresholds file (absent when they have none: defaults, with a note)
  inference.yaml   the predictor spec (czii.predictor) with paths relative to out/: members,
                   input recipe, tiling, TTA, peaks, thresholds; its score hash equals the one the
                   thresholds were tuned under
  manifest.json    package version, git commit, target, provided packages, wheels, sha256 + size per file
```

A ``dataset-metadata.json`` (the Kaggle CLI's) found in a previous build is carried over.

The folder is built under a temporary name beside ``out`` and renamed when complete; an existing
``out`` is replaced only when it is a previous build (has our manifest). Its wheels come from
:mod:`czii.kaggle.wheels`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.utils import parse_wheel_filename

from czii import locks
from czii.errors import ConfigError, DataError
from czii.io import check_output, git_commit, git_dirty, sha256_file, temp_sibling
from czii.predictor import MemberSpec, load_spec, save_spec
from czii.kaggle.wheels import (PACKAGE_NAME, PROVIDED_NOTE, PROVIDED_PATTERNS, WHEEL_SOURCES, WheelSource,
                                 WheelTarget, build_package_wheel, default_cache_dir, read_pins, resolve_closure,
                                 wheel_requirements)

MANIFEST_NAME = "manifest.json"
KAGGLE_METADATA_NAME = "dataset-metadata.json"  # the Kaggle CLI's own file; kept across rebuilds, not listed
ENSEMBLE_NAME = "inference.yaml"
THRESHOLDS_NAME = "thresholds.json"


# --------------------------------------------------------------------------- models, thresholds, ensemble YAML


def _member_file_name(index: int, checkpoint: Path) -> str:
    parts = [checkpoint.parent.parent.name] if checkpoint.parent.name == "checkpoints" else []
    return "-".join([f"m{index}", *parts, checkpoint.stem]) + ".pt"


def _write_models(models: str | Path | Sequence[str | Path], out: Path, *, tta: str | Sequence[str] | None,
                  thresholds: str | Path | None, allow_spec_mismatch: bool, allow_unfinished: bool) -> dict[str, Any]:
    """Copy checkpoints and thresholds, write the predictor spec ``inference.yaml`` into ``out``; returns the
    manifest's models part.

    The spec is resolved, checked against its thresholds and loaded as
    :func:`czii.inference.pipeline.run_inference` does, so a predictor it would refuse fails here
    rather than on Kaggle.
    """
    from czii.inference import Predictor, resolve_predictor  # torch: only when building

    spec, check, unfinished = resolve_predictor(models, tta=tta, thresholds=thresholds,
                                                allow_spec_mismatch=allow_spec_mismatch,
                                                allow_unfinished=allow_unfinished)
    spec = Predictor.load(spec, "cpu").spec  # with the members' voxel size recorded
    if check.thresholds is None:
        print(f"note: no thresholds file with {models}; shipping the defaults (tune them with `czii tune`, "
              "or pass --thresholds)", file=sys.stderr)
        shipped_thresholds = None
    else:
        shutil.copy2(check.source, out / THRESHOLDS_NAME)
        shipped_thresholds = str(out / THRESHOLDS_NAME)
    (out / "models").mkdir()
    members, listed = [], []
    for i, m in enumerate(spec.members):
        rel = f"models/{_member_file_name(i, Path(m.checkpoint))}"
        shutil.copy2(m.checkpoint, out / rel)
        members.append(MemberSpec(str(out / rel), m.weight))
        listed.append({"file": rel, "source": str(Path(m.checkpoint).resolve()), "weight": m.weight})
    shipped = dataclasses.replace(spec, members=members, thresholds=shipped_thresholds)
    save_spec(shipped, out / ENSEMBLE_NAME)
    load_spec(out / ENSEMBLE_NAME)
    return {"description": str(models), "members": listed, "classes": list(spec.classes),
            "thresholds_source": check.source, "spec_hash": spec.hash, "spec_check": check.status,
            "unfinished_members": unfinished,
            "tta": list(spec.tta)}


# --------------------------------------------------------------------------- manifest and build


_UNLISTED = (MANIFEST_NAME, KAGGLE_METADATA_NAME)


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in _UNLISTED
    }


def _check_out(out: Path, project_dir: Path, models: str | Path | Sequence[str | Path]) -> None:
    notebooks = (project_dir / "kaggle_notebooks").resolve()
    if out.resolve().is_relative_to(notebooks):
        raise ConfigError(f"--out {out} lies inside {notebooks}; the dataset folder never goes into kaggle_notebooks/")
    inputs = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    for run_dir in (p for p in inputs if p.is_dir()):
        if out.resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(f"--out {out} lies inside the run directory {run_dir}; czii never writes into its input")
    if out.exists() and not (out / MANIFEST_NAME).is_file():
        raise ConfigError(f"--out {out} exists and is not a czii Kaggle dataset folder (no {MANIFEST_NAME}); "
                          "remove it or choose another folder")


@dataclass
class BuildResult:
    """The folder written, its manifest and the build's wall time."""

    out: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def wheels_bytes(self) -> int:
        return sum(f["size"] for name, f in self.manifest["files"].items() if name.startswith("wheels/"))


def build_kaggle_dataset(
    models: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    target: WheelTarget = WheelTarget(),
    wheels_from: str | Path | None = None,
    cache_dir: str | Path | None = None,
    project_dir: str | Path | None = None,
    constraints: str | Path | None = None,
    tta: str | Sequence[str] | None = None,
    thresholds: str | Path | None = None,
    allow_spec_mismatch: bool = False,
    allow_unfinished: bool = False,
    progress: bool = True,
    force: bool = False,
) -> BuildResult:
    """Write the offline Kaggle dataset folder for ``models`` to ``out`` (layout in the module docstring).

    ``models``: a training run directory, checkpoint files or a predictor spec YAML
    (:func:`czii.inference.pipeline.resolve_predictor`). ``project_dir`` (default: the checkout
    holding this module) gives the source tree and ``constraints.txt``. ``tta`` and
    ``thresholds`` override what comes with the models; thresholds tuned under another spec are
    refused unless ``allow_spec_mismatch``, unfinished training unless ``allow_unfinished``. Holds the
    lock ``<out>.lock`` while it builds (:mod:`czii.locks`; ``force`` takes over a stale one).
    """
    started = time.perf_counter()
    out = Path(out)
    project_dir = Path(project_dir) if project_dir is not None else Path(__file__).resolve().parents[3]
    _check_out(out, project_dir, models)
    check_output(out, "--out", kind="dir", overwrite=True)
    with locks.hold(locks.sibling_lock(out), "Kaggle dataset folder", out, force=force):
        pins = read_pins(constraints if constraints is not None else project_dir / "constraints.txt")
        source = WheelSource(target, Path(cache_dir) if cache_dir is not None else default_cache_dir(target),
                             Path(wheels_from) if wheels_from is not None else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(out)
        tmp.mkdir()
        try:
            models_part = _write_models(models, tmp, tta=tta, thresholds=thresholds,
                                        allow_spec_mismatch=allow_spec_mismatch, allow_unfinished=allow_unfinished)
            own = build_package_wheel(project_dir, tmp / "wheels")
            closure = resolve_closure(wheel_requirements(own), target, pins, source, progress=progress)
            for wheel in closure.wheels.values():
                shutil.copy2(wheel, tmp / "wheels" / wheel.name)
            version = str(parse_wheel_filename(own.name)[1])
            manifest = {
                "package": PACKAGE_NAME,
                "version": version,
                # dirty: the packaged sources (src/, pyproject.toml, README.md) differ from the commit or have new files
                "git": {"commit": git_commit(project_dir), "dirty": git_dirty(project_dir, WHEEL_SOURCES)},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "target": {"python_version": target.python_version, "implementation": "cp",
                           "platforms": list(target.platforms), "accepted_platforms": target.expanded_platforms},
                "provided": {"patterns": list(PROVIDED_PATTERNS), "requirements": sorted(closure.provided.values()),
                             "note": PROVIDED_NOTE},
                "install": f"pip install --no-index --find-links <dataset>/wheels {PACKAGE_NAME}",
                "wheels": sorted(p.name for p in (tmp / "wheels").glob("*.whl")),
                "unpinned": sorted(name for name in closure.wheels if name not in pins),
                "models": models_part,
                "files": _file_table(tmp),
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            if out.exists():
                if (out / KAGGLE_METADATA_NAME).is_file():
                    shutil.copy2(out / KAGGLE_METADATA_NAME, tmp / KAGGLE_METADATA_NAME)
                old = temp_sibling(out, "old")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old)
            else:
                os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return BuildResult(out=out, manifest=manifest, seconds=time.perf_counter() - started)


def verify_dataset(folder: str | Path) -> dict[str, Any]:
    """The manifest of a built folder after checking every listed file's size and sha256 (DataError if not)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}: no readable {MANIFEST_NAME} ({exc})") from None
    actual = _file_table(folder)
    if actual.keys() != manifest["files"].keys():
        missing, extra = manifest["files"].keys() - actual.keys(), actual.keys() - manifest["files"].keys()
        raise DataError(f"{folder}: files differ from the manifest: missing {sorted(missing)}, extra {sorted(extra)}")
    changed = sorted(name for name, facts in actual.items() if facts != manifest["files"][name])
    if changed:
        raise DataError(f"{folder}: files changed since the build (size or sha256): {changed}")
    return manifest
