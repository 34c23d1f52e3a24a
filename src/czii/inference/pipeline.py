"""End-to-end inference: a predictor spec + a dataset → submission CSV and manifest.

Contract of :func:`run_inference` (what ``czii infer`` and the Kaggle notebook call):

- Models → :class:`czii.predictor.PredictorSpec` (:func:`resolve_predictor`): a training run
  directory (every ``fold*/checkpoints/best.pt`` at equal weights with the recipe its
  ``thresholds.json`` was tuned under, else its ``config.yaml``), an ensemble / ``inference.yaml``
  spec file, or checkpoint files (equal weights, the first one's saved config, default thresholds).
  ``tta``, ``tile_zyx`` and ``batch_size`` override the spec.
- Thresholds: the ``thresholds`` argument (a file) or the spec's file, refused when it was tuned
  under a spec with another score hash (:func:`czii.predictor.check_thresholds`) unless
  ``allow_spec_mismatch``; no file → :data:`czii.predictor.DEFAULT_THRESHOLDS` (a note
  is printed). The manifest records the spec, its hash and the check's outcome.
- Per run: :meth:`czii.inference.predictor.Predictor.predict_run` (input as the spec says, ensemble
  × TTA, peaks).
- Output: ``out_csv`` (validated against each run's extent) and ``<out_csv>.manifest.json``, both
  written atomically after everything succeeded; each finished run's picks wait in
  ``<out_csv>.work/`` (:mod:`czii.inference.resume`), so the same command after an interruption
  predicts only the remaining runs and writes the same CSV; with ``copick_user`` the scored picks also go to
  the dataset's copick overlay. Every input problem is a :class:`czii.errors.CziiError` raised
  before any output exists.
- Under ``torchrun`` (``WORLD_SIZE`` > 1) the runs are dealt round-robin over the ranks
  (:mod:`czii.inference.sharding`), every rank receives all results and returns the same
  :class:`InferenceResult`; rank 0 alone writes. The CSV equals that of one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from czii import distributed as ddp
from czii import locks
from czii.data import Dataset, TomogramFolder, open_input
from czii.errors import ConfigError, DataError
from czii.formats.tomogram import is_tomogram_source
from czii.geometry import extent_xyz_A
from czii.inference.onnx_members import onnx_path
from czii.inference.predictor import Predictor, checkpoints_spec
from czii.inference.resume import RunStore, input_identity, work_dir
from czii.inference.sharding import gather_outcomes, shard_runs
from czii.io import atomic_write_text, check_output, git_commit, sha256_file
from czii.models import read_checkpoint
from czii.particles import BY_NAME
from czii.picks import CANDIDATE_COLUMNS, SUBMISSION_COLUMNS, empty_table
from czii.predictor import (
    DEFAULT_THRESHOLD,
    PredictorSpec,
    SpecCheck,
    check_thresholds,
    resolve_spec,
    resolve_thresholds,
    with_overrides,
)
from czii.rundir import check_finished
from czii.submission import (manifest_path, scores_path, to_submission, validate_submission, write_scores,
                             write_submission)

DEFAULT_THRESHOLDS_ORIGIN = "default (czii.predictor.DEFAULT_THRESHOLDS)"


@dataclass
class InferenceResult:
    """The submission table (``id, experiment, particle_type, x, y, z``) and the manifest written beside it."""

    submission: pd.DataFrame
    manifest: dict[str, Any]


def resolve_predictor(
    models: str | Path | Sequence[str | Path],
    *,
    tta: str | Sequence[str] | None = None,
    tile_zyx: Sequence[int] | None = None,
    batch_size: int | None = None,
    thresholds: str | Path | None = None,
    allow_spec_mismatch: bool = False,
    nan_policy: str | None = None,
    allow_unfinished: bool = False,
) -> tuple[PredictorSpec, SpecCheck, list[str]]:
    """The spec ``models`` names with the overrides applied, its checked thresholds (module docstring) and
    the members whose training did not finish (refused unless ``allow_unfinished``)."""
    paths = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    spec = resolve_spec(paths)
    if spec is None:
        spec = checkpoints_spec(paths)
    spec = with_overrides(spec, tta=tta, tile_zyx=tile_zyx, batch_size=batch_size, nan_policy=nan_policy)
    if not set(spec.classes) <= set(BY_NAME):  # classes of the project it was trained on: its checkpoints say
        for m in spec.members:
            read_checkpoint(m.checkpoint)
        unknown = sorted(set(spec.classes) - set(BY_NAME))
        if unknown:
            raise ConfigError(f"classes {unknown} of the predictor are defined nowhere: no member checkpoint records "
                              "them (train on a copick project whose pickable objects define them)")
    unfinished = check_finished([m.checkpoint for m in spec.members], allow_unfinished)
    run_dir = paths[0] if len(paths) == 1 and paths[0].is_dir() else None
    how = (f" with `czii tune --run-dir {run_dir} --set infer.tta=... --set infer.tile_zyx=[...]` (re-predicts "
           "the out-of-fold runs)" if run_dir is not None else "")
    check = check_thresholds(spec, thresholds=thresholds, allow_mismatch=allow_spec_mismatch, how_to_retune=how)
    return spec, check, unfinished


def threshold_values(spec: PredictorSpec, check: SpecCheck) -> dict[str, float]:
    """The per-class thresholds a predictor applies: the checked file's, else the defaults."""
    values = check.thresholds if check.thresholds is not None else {c: DEFAULT_THRESHOLD for c in spec.classes}
    origin = check.source if check.thresholds is not None else DEFAULT_THRESHOLDS_ORIGIN
    return resolve_thresholds(values, spec.classes, f"thresholds from {origin}")


# --------------------------------------------------------------------------- data


def _open(data: str | Path, split: str | None, voxel_size_A: float | None,
          channels: Sequence[str]) -> Dataset | TomogramFolder:
    source = Path(data)
    if is_tomogram_source(data) and len(channels) > 1:
        raise DataError(f"{data}: a tomogram folder gives one tomogram per run, the models read {len(channels)} "
                        f"channels ({', '.join(channels)}); put the runs in a copick project")
    # split picks a split of a Kaggle competition directory; a split folder or a copick config is its own split
    is_competition_dir = source.is_dir() and not (source / "static" / "ExperimentRuns").is_dir()
    return open_input(data, split=split if is_competition_dir else None, voxel_size_A=voxel_size_A,
                      tomo_type=channels[0])


def _select_runs(dataset: Dataset | TomogramFolder, runs: Sequence[str] | None) -> list[str]:
    """Sorted runs to predict (default: all); DataError for an unknown run."""
    available = dataset.runs()
    selected = available if runs is None else sorted(set(runs))
    unknown = [r for r in selected if r not in available]
    if unknown:
        raise DataError(f"unknown runs {unknown} in {dataset.source}; runs: {', '.join(available)}")
    if not selected:
        raise DataError(f"no runs selected in {dataset.source}; runs: {', '.join(available)}")
    return selected


def _check_inputs(dataset: Dataset | TomogramFolder, runs: Sequence[str], predictor: Predictor) -> None:
    """DataError naming the first run that lacks a tomogram type the models read, or whose level 0 (the frame
    picks refer to) or the level its input is read from cannot be opened: metadata only, before any run is
    predicted, so a broken run stops the command before hours of work instead of after them."""
    input_channels = predictor.spec.input.channels
    for run in runs:
        present = dataset.tomogram_types(run)
        missing = [t for t in input_channels if t not in present]
        if missing:
            raise DataError(f"run {run!r} has no tomogram of type {', '.join(map(repr, missing))} (the models read "
                            f"{', '.join(input_channels)}); types present: {', '.join(present)}")
        level = predictor.plan(dataset, run).level
        for tomo_type in input_channels:
            for lv in sorted({0, level}):
                dataset.tomogram_shape(run, tomo_type, lv)


def _input_facts(dataset: Dataset | TomogramFolder, run: str, info: dict, channel: str) -> dict:
    """What the manifest records of one run's input: where its voxel size came from, the level read, the
    source and model voxel sizes, the resampling factor and the frame (shape, translation) picks refer to."""
    level0 = dataset.levels(run, channel)[0][1]
    return {**info["input"], "frame_shape_zyx": list(dataset.tomogram_shape(run, channel, 0)),
            "frame_spacing_zyx_A": list(level0), **dataset.source_facts(run)}


# --------------------------------------------------------------------------- the pipeline


def _write_outputs(out_csv: Path, scored: pd.DataFrame, manifest: dict, **checks) -> None:
    """The CSV (validated again by write_submission), its score sidecar and its manifest, each atomically;
    none stays alone."""
    write_submission(scored[list(SUBMISSION_COLUMNS)], out_csv, **checks)
    try:
        write_scores(scored, out_csv)
        atomic_write_text(manifest_path(out_csv), json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        out_csv.unlink(missing_ok=True)
        scores_path(out_csv).unlink(missing_ok=True)
        raise


def run_inference(
    models: str | Path | Sequence[str | Path],
    data: str | Path,
    *,
    split: str | None = "test",
    runs: Sequence[str] | None = None,
    out_csv: str | Path,
    tta: str | Sequence[str] | None = None,
    thresholds: str | Path | None = None,
    device: str | None = None,
    copick_user: str | None = None,
    copick_session: str = "0",
    progress: bool = True,
    tile_zyx: Sequence[int] | None = None,
    batch_size: int | None = None,
    allow_spec_mismatch: bool = False,
    overwrite: bool = False,
    nan_policy: str | None = None,
    allow_unfinished: bool = False,
    voxel_size_A: float | None = None,
    force: bool = False,
    runtime: str = "torch",
    prefetch: bool | None = None,
) -> InferenceResult:
    """Predict ``runs`` (default: all) of ``data`` with ``models`` and write ``out_csv`` + manifest.

    ``split`` selects the split of a Kaggle competition directory (a copick config or a split
    folder is used as it is). ``tta``, ``tile_zyx`` and ``batch_size`` override the spec (smaller
    tiles bound the memory of CPU runs; tiles and TTA change scores, so thresholds tuned under the
    unchanged spec are refused unless ``allow_spec_mismatch``); ``thresholds`` (a thresholds JSON)
    replaces the spec's; ``device`` defaults to CUDA when available. ``data`` may also be a folder or glob of
    MRC/REC files or a bare OME-Zarr store (:class:`czii.data.TomogramFolder`; ``voxel_size_A`` overrides
    their headers); every run is brought to the members' voxel size and its picks come back in its own frame
    (Å). An existing ``out_csv`` (or its manifest) is refused unless ``overwrite``; an unwritable one before
    anything is read. Rank 0 holds ``<out_csv>.lock`` throughout (:mod:`czii.locks`; ``force`` takes over a
    stale one), so two inferences never share an output or its work folder. ``runtime`` ``onnx`` runs every
    member's ONNX export through onnxruntime (:mod:`czii.inference.onnx_members`), ``compiled`` runs the
    members through ``torch.compile``. ``prefetch`` (default: on CUDA) reads the next run and finds the
    previous run's peaks in background threads while the model predicts (:meth:`Predictor.predict_runs`); the
    picks are the same either way. See the module docstring.
    """
    started = time.perf_counter()
    out_csv = check_output(out_csv, "output", overwrite=overwrite)
    check_output(manifest_path(out_csv), "manifest", overwrite=overwrite)
    check_output(scores_path(out_csv), "score sidecar", overwrite=overwrite)
    with contextlib.ExitStack() as cleanup:
        if ddp.launched_rank() == 0:
            cleanup.enter_context(locks.hold(locks.sibling_lock(out_csv), "output", out_csv, force=force))
        # everything that needs no model is checked first: building models takes a while
        spec, check, unfinished = resolve_predictor(
            models, tta=tta, tile_zyx=tile_zyx, batch_size=batch_size, thresholds=thresholds,
            allow_spec_mismatch=allow_spec_mismatch, nan_policy=nan_policy, allow_unfinished=allow_unfinished)
        thr = threshold_values(spec, check)
        dataset = _open(data, split, voxel_size_A, spec.input.channels)
        selected = _select_runs(dataset, runs)
        if copick_user is not None:
            # validates the ids (and refuses the truth user); a table without runs writes nothing
            dataset.write_picks(empty_table(CANDIDATE_COLUMNS), user_id=copick_user, session_id=copick_session)
        ctx = ddp.init_distributed(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cleanup.callback(ddp.shutdown, ctx)
        predictor = Predictor.load(spec, ctx.device, runtime)
        _check_inputs(dataset, selected, predictor)
        if ctx.is_main and check.status == "defaults":
            print(f"note: no thresholds file given or found with the models; using the default thresholds {thr} "
                  "(tune them with `czii tune`)", file=sys.stderr)
        if ctx.is_main and check.status == "unrecorded":
            print(f"note: {check.source} does not record the predictor spec it was tuned under; it cannot be "
                  f"checked against this predictor (spec {spec.hash})", file=sys.stderr)
        if ctx.is_main and unfinished:
            print(f"warning: unfinished training used (--allow-unfinished; recorded in the manifest): "
                  f"{'; '.join(unfinished)}", file=sys.stderr)
        if ctx.is_main and check.status == "mismatch-allowed":
            print(f"warning: {check.source} was tuned under spec {check.tuned_hash}, this predictor is spec "
                  f"{spec.hash} (--allow-spec-mismatch; recorded in the manifest)", file=sys.stderr)

        key = {"spec": dataclasses.asdict(spec), "thresholds": thr, "data": str(Path(data).resolve()),
               "split": dataset.split, "voxel_size_A": voxel_size_A,
               "checkpoints": input_identity([m.checkpoint for m in spec.members]), "runtime": runtime}
        if runtime == "onnx":
            key["onnx"] = input_identity([onnx_path(m.checkpoint) for m in spec.members])
        store = RunStore(work_dir(out_csv), key if ctx.is_main else None)
        ddp.barrier(ctx)
        waiting = [run for run in store.done() if run in selected]
        if ctx.is_main and waiting:
            print(f"resuming: {len(waiting)} of {len(selected)} runs already predicted in {store.folder}",
                  file=sys.stderr)

        def predict_shard() -> dict[str, tuple[pd.DataFrame, dict]]:
            mine = shard_runs(selected, ctx.rank, ctx.world_size)
            identity = {run: input_identity([dataset.tomogram_path(run, t) for t in spec.input.channels])
                        for run in mine}
            done = {run: stored for run in mine if (stored := store.load(run, identity[run])) is not None}
            desc = "runs" if not ctx.enabled else f"runs (rank {ctx.rank})"
            with tqdm(total=len(mine), initial=len(done), desc=desc, unit="run",
                      disable=None if progress else True) as bar:
                todo = [run for run in mine if run not in done]
                for run, picks, info in predictor.predict_runs(dataset, todo, thr, progress, overlap=prefetch):
                    store.save(run, picks, info, identity[run])
                    done[run] = (picks, info)
                    bar.update()
            return {run: done[run] for run in mine}

        by_run = {run: out for shard in gather_outcomes(predict_shard, ctx) for run, out in shard.items()}
        for run in selected if ctx.is_main else ():
            plan = by_run[run][1]["input"]
            trained_at = predictor.spacing_zyx_A
            if plan["resampled"] or plan["level"] != spec.input.level:
                where = f"level {spec.input.level}" + ("" if trained_at is None else f", {trained_at[-1]:.4g} Å voxels")
                print(f"note: run {run!r}: read level {plan['level']} at {plan['source_spacing_zyx_A'][-1]:.4g} Å and "
                      f"predicted at {plan['spacing_zyx_A'][-1]:.4g} Å (factor {plan['factor']:.4g}; the models were "
                      f"trained at {where}); recorded in the manifest", file=sys.stderr)
        picks = pd.concat([by_run[run][0] for run in selected], ignore_index=True)
        scored = to_submission(picks, keep_score=True)
        submission = scored[list(SUBMISSION_COLUMNS)]
        checks = {
            "extents_xyz_A": {run: extent_xyz_A(info["shape_zyx"], info["spacing_zyx_A"])
                              for run, (_, info) in by_run.items()},
            "runs": selected,
        }
        validate_submission(submission, **checks)
        manifest = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "out_csv": str(out_csv),
            "models": [str(m) for m in ([models] if isinstance(models, (str, Path)) else models)],
            "spec_hash": spec.hash,
            "spec": dataclasses.asdict(predictor.spec),  # with the members' voxel size
            "checkpoints": [
                {"path": m.checkpoint, "sha256": sha256_file(m.checkpoint), "weight": m.weight,
                 "epoch": meta.get("epoch"), "val_score": meta.get("val_score")}
                for m, meta in zip(spec.members, predictor.metas)
            ],
            "runtime": runtime,
            "onnx": [str(onnx_path(m.checkpoint)) for m in spec.members] if runtime == "onnx" else None,
            "unfinished_members": unfinished,
            "resumed_runs": [run for run in selected if by_run[run][1].get("resumed")],
            "model_spacing_zyx_A": [meta.get("spacing_zyx_A") for meta in predictor.metas],
            "classes": list(spec.classes),
            "input_channels": list(spec.input.channels),
            "level": spec.input.level,
            "thresholds": {"values": thr, "source": check.source if check.thresholds is not None
                           else DEFAULT_THRESHOLDS_ORIGIN, "tuned_spec_hash": check.tuned_hash,
                           "spec_check": check.status},
            "tta": list(spec.tta),
            "data": {"source": str(data), "split": dataset.split, "runs": selected},
            "inputs": {run: _input_facts(dataset, run, by_run[run][1], spec.input.channels[0]) for run in selected},
            "git_commit": git_commit(),
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "torch_version": torch.__version__,
            "timings": {run: by_run[run][1] for run in selected},
            "picks_per_class": {name: int((picks["particle_type"] == name).sum()) for name in spec.classes},
            "n_picks": len(submission),
            "total_seconds": time.perf_counter() - started,
        }
        if ctx.is_main:
            _write_outputs(out_csv, scored, manifest, **checks)
            if copick_user is not None:
                try:
                    dataset.write_picks(picks, user_id=copick_user, session_id=copick_session)
                except BaseException:
                    for path in (out_csv, manifest_path(out_csv), scores_path(out_csv)):
                        path.unlink(missing_ok=True)
                    raise
            store.remove()
        return InferenceResult(submission=submission, manifest=manifest)
