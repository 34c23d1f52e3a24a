"""Picks in and out of czii: ``czii export`` (a submission → STAR / .tbl / CSV) and ``czii import``
(STAR / .tbl / CSV → copick picks files that training reads).

Export reads the submission CSV, its score sidecar (``<csv>.scores.csv``) and its manifest
(``<csv>.manifest.json``, which records every run's tomogram frame: shape and voxel size at full
resolution, OME-Zarr translation); import takes the frames from the project it writes into. The
conversions themselves are :mod:`czii.formats.exports`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from czii.data import open_dataset
from czii.data.staging import TRUTH_SESSION_ID, TRUTH_USER_ID, find_kaggle_split
from czii.errors import DataError
from czii.formats.exports import Frame, read_picks, tbl_sidecar, write_picks
from czii.formats.picks_json import picks_document, write_picks_json
from czii.io import check_output
from czii.particles import known_names
from czii.submission import manifest_path, read_scored_submission


def _read_manifest(submission_csv: str | Path) -> tuple[Path, dict]:
    """(path, document) of the manifest ``czii infer`` wrote beside ``submission_csv``."""
    path = manifest_path(submission_csv)
    if not path.is_file():
        raise DataError(f"{path}: no manifest beside {submission_csv}; export needs the one `czii infer` writes "
                        "(it records each run's tomogram shape and voxel size)")
    try:
        return path, json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None


def _manifest_frames(path: Path, manifest: dict) -> dict[str, Frame]:
    """Each run's tomogram frame from a manifest (:func:`_read_manifest`)."""
    inputs = manifest.get("inputs")
    if not inputs:
        raise DataError(f"{path}: the manifest records no tomogram frames (written before czii recorded them); "
                        "re-run `czii infer`")
    return {run: Frame(tuple(f["frame_shape_zyx"]), float(f["frame_spacing_zyx_A"][-1]),
                       tuple(f.get("translation_zyx_A", (0.0, 0.0, 0.0)))) for run, f in inputs.items()}


def _check_particle_types(table: pd.DataFrame, submission_csv: str | Path, path: Path, manifest: dict) -> None:
    """DataError naming every particle type of ``table`` that the predictor which wrote ``submission_csv`` does
    not predict (its manifest's ``classes``; the registered classes for a manifest without them): an edited or
    foreign CSV would otherwise be exported under a class name no downstream tool knows."""
    known = manifest.get("classes") or list(known_names())
    unknown = sorted(set(table["particle_type"]) - set(known))
    if unknown:
        raise DataError(f"{submission_csv}: particle types {unknown} are not classes of the predictor that wrote it "
                        f"({path}); known: {', '.join(known)}")


def export_submission(submission_csv: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False,
                      particles: list[str] | None = None) -> tuple[list[Path], int]:
    """Write the scored picks of ``submission_csv`` (only ``particles`` when given) as ``fmt``; returns the files
    written and the number of picks."""
    table = read_scored_submission(submission_csv)
    path, manifest = _read_manifest(submission_csv)
    frames = _manifest_frames(path, manifest)
    _check_particle_types(table, submission_csv, path, manifest)
    if particles:
        unknown = sorted(set(particles) - set(table["particle_type"]))
        if unknown:
            raise DataError(f"{submission_csv}: no picks of {unknown}; particle types present: "
                            f"{sorted(set(table['particle_type']))}")
        table = table[table["particle_type"].isin(particles)]
    out = check_output(out, "export", overwrite=overwrite)
    if fmt == "tbl":
        check_output(tbl_sidecar(out), "export names file", overwrite=overwrite)
    return write_picks(table.drop(columns="id"), out, fmt, frames), len(table)


def _target(into: str | Path, split: str) -> tuple[object, Path, bool]:
    """(dataset, overlay root, kaggle layout?) of the project picks are imported into."""
    into = Path(into)
    if into.is_file():
        dataset = open_dataset(into)
        doc = json.loads(into.read_text())
        return dataset, Path(doc["overlay_root"].replace("local://", "")), False
    split_dir = find_kaggle_split(into, split)
    if split_dir is None:
        raise DataError(f"{into}: import writes into a copick config JSON or a Kaggle directory")
    return open_dataset(into, split=split), split_dir / "overlay", True


def import_picks(picks_file: str | Path, fmt: str, into: str | Path, *, split: str = "train",
                 user_id: str = TRUTH_USER_ID, session_id: str = TRUTH_SESSION_ID, particle: str | None = None,
                 voxel_size_A: float | None = None, overwrite: bool = False) -> pd.DataFrame:
    """Read ``picks_file`` and write one copick picks file per run and particle into ``into`` (the user/session
    training reads by default, ``trust_orientation: false``); returns the picks imported. Files that exist are
    refused unless ``overwrite``; runs the project lacks are refused before anything is written."""
    dataset, overlay, kaggle = _target(into, split)
    frames = {}
    for run in dataset.runs():
        try:
            tomo_type = dataset.tomo_type or dataset.tomogram_types(run)[0]
            levels = dataset.levels(run, tomo_type)
        except DataError:
            continue  # a run without tomograms: pixel and centred coordinates cannot be placed in it
        frames[run] = Frame(dataset.tomogram_shape(run, tomo_type), float(levels[0][1][-1]))
    table = read_picks(picks_file, fmt, frames, particle=particle, voxel_size_A=voxel_size_A)
    unknown = sorted(set(table["experiment"]) - set(dataset.runs()))
    if unknown:
        raise DataError(f"{picks_file}: runs {unknown} are not in {into}; runs: {', '.join(dataset.runs())}")
    targets = {}
    for (run, particle_type), rows in table.groupby(["experiment", "particle_type"], sort=True):
        name = f"{particle_type}.json" if kaggle else f"{user_id}_{session_id}_{particle_type}.json"
        path = overlay / "ExperimentRuns" / str(run) / "Picks" / name
        check_output(path, "picks file", overwrite=overwrite)
        targets[path] = picks_document(str(particle_type), str(run), rows[["x", "y", "z"]].to_numpy(np.float64),
                                       user_id, session_id, scores=rows["score"].to_numpy(np.float64),
                                       trust_orientation=False)
    for path, document in targets.items():
        write_picks_json(path, document)
    return table
