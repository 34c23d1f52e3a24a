""":func:`run_experiment` turns a config into one leaderboard row:

1. trains each requested fold in turn (:func:`czii.training.loop.train`) into
   ``<out_root>/<name>/fold<K>``. A fold already trained with this config (its ``seed.json``
   config hash matches and ``history.csv`` reaches ``train.epochs``) is reused, an interrupted
   one is resumed from ``last.pt``, one trained with another config is refused, and so is a
   fold folder that the requested folds leave out (its predictions would enter the scores);
2. tunes thresholds on the out-of-fold candidates (:func:`czii.postprocess.thresholds.tune_run_dir`
   → ``thresholds.json``): CV score at the default thresholds, tuned in-sample (optimistic) and
   tuned cross-fitted (each fold scored with thresholds tuned on the other folds; the headline
   ``cv_tuned``, empty with a single fold), per-class F4 at the cross-fitted thresholds;
3. predicts the first held-out run that has truth picks again with its fold's ``best.pt`` under the
   shipped predictor spec and saves a slab of it as ``report/overlay.npz``;
4. draws the figures (:func:`czii.report.build_report`);
5. writes its leaderboard row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from czii.config import Config, config_hash
from czii.data import Dataset
from czii.errors import ConfigError, DataError
from czii.experiment.leaderboard import DEFAULT_LEADERBOARD, F4_COLUMNS, NAME_PATTERN, Upsert, upsert_row
from czii.io import check_output, git_commit
from czii.particles import PARTICLE_NAMES
from czii.postprocess.thresholds import TuneReport, read_oof_spec, tune_run_dir
from czii.report import OVERLAY_FILE, OverlaySlab, Report, build_report, overlay_slab
from czii.inference import Predictor
from czii.predictor import MemberSpec, run_dir_spec
from czii.rundir import FoldDir, RunDir, read_status, writing
from czii.training.data import class_picks, fold_runs, open_sources, split_fold
from czii.training.loop import train

@dataclasses.dataclass
class ExperimentResult:
    """The run directory, what happened to each fold, the tuning, figures and the leaderboard row."""

    run_dir: Path
    folds: dict[int, str]  # fold -> "trained" | "resumed" | "reused"
    tune: TuneReport
    report: Report
    row: dict
    upsert: Upsert
    leaderboard: Path


def _fold_state(fold: FoldDir, config: Config) -> str:
    """``trained`` (nothing there yet), ``resumed`` (interrupted) or ``reused`` (done with this config)."""
    if not fold.last.is_file():
        return "trained"
    try:
        trained_hash = json.loads(fold.seed.read_text())["config_hash"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{fold.path}: has checkpoints/last.pt but an unreadable seed.json ({exc})") from None
    if trained_hash != config_hash(config):
        raise ConfigError(f"{fold.path} was trained with config {trained_hash}, this experiment's config is "
                          f"{config_hash(config)}; choose another --name or --out")
    status = read_status(fold)
    done = (status is not None and status["finished"]
            and all(p.is_file() for p in (fold.best, fold.candidates, fold.truth, fold.oof_spec)))
    return "reused" if done else "resumed"


def _device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def _heldout_seconds(run_dir: Path, folds: Sequence[int]) -> float:
    """Seconds the out-of-fold pass spent predicting the held-out runs (``predict_seconds`` of each fold's
    ``oof/spec.json``; NaN when a fold's pass predates recording it)."""
    return sum(float(read_oof_spec(RunDir(run_dir).fold(k).oof_spec).get("predict_seconds", math.nan))
               for k in folds)


def _overlay(config: Config, run_dir: Path, folds: Sequence[int], datasets: dict[str, Dataset],
             device: torch.device, tune: TuneReport) -> OverlaySlab | None:
    """The overlay slab of the first held-out run with truth picks, predicted again by its fold's best.pt
    under the shipped spec (its picks: OOF candidates kept at that fold's cross-fitted thresholds)."""
    by_fold = json.loads(tune.path.read_text()).get("thresholds_by_fold")
    shipped = run_dir_spec(run_dir)
    for k in folds:
        fold = RunDir(run_dir).fold(k)
        for source, run in split_fold(config, datasets, k).val:
            truth = class_picks(config, datasets[source], run)
            if truth.empty:
                continue
            predictor = Predictor.load(dataclasses.replace(shipped, members=[MemberSpec(str(fold.best), 1.0)]),
                                       device)
            volume, spacing_zyx_A = predictor.load_input(datasets[source], run)
            thresholds, origin = (by_fold[fold.name], "cross-fitted") if by_fold else (tune.thresholds,
                                                                                       "in-sample tuned")
            candidates = pd.read_csv(fold.candidates, dtype={"experiment": str})
            candidates = candidates[candidates["experiment"] == run]
            kept = candidates[candidates["score"] >= candidates["particle_type"].map(thresholds)]
            return overlay_slab(volume[0], predictor.probabilities(volume), spacing_zyx_A, config.data.classes,
                                truth, kept, run=run, fold=fold.name, thresholds=thresholds,
                                thresholds_origin=origin)
    return None


def run_experiment(
    config: Config,
    *,
    name: str,
    out_root: str | os.PathLike = "runs",
    folds: Sequence[int] | None = None,
    device: str = "cpu",
    leaderboard: str | os.PathLike = DEFAULT_LEADERBOARD,
    workdir: str | os.PathLike | None = None,
    force: bool = False,
) -> ExperimentResult:
    """Train, tune, report and rank ``config`` as experiment ``name`` (steps in the module docstring), holding
    the run directory's lock throughout (:func:`czii.rundir.writing`; ``force`` takes over a stale one)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"experiment name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder "
                          "and a leaderboard row)")
    dev = torch.device(device)
    datasets = open_sources(config, workdir)
    n_folds = len(fold_runs(config, datasets))
    folds = sorted(set(range(n_folds) if folds is None else folds))
    unknown = [k for k in folds if not 0 <= k < n_folds]
    if unknown or not folds:
        raise ConfigError(f"folds {unknown or folds} do not exist: the config has {n_folds} folds (0..{n_folds - 1})")
    run_dir = check_output(Path(out_root) / name, "run directory", kind="dir", overwrite=True)
    check_output(leaderboard, "leaderboard", overwrite=True)
    rd = RunDir(run_dir)
    with writing(rd, force=force):
        stray = sorted(f.name for f in rd.folds() if f.index not in folds)
        if stray:
            raise ConfigError(f"{run_dir} holds {', '.join(stray)}, which the requested folds {folds} leave out "
                              "(its out-of-fold predictions would enter the scores); include it or choose another "
                              "--out/--name")
        states = {k: _fold_state(rd.fold(k), config) for k in folds}
        for k in folds:
            if states[k] != "reused":
                train(config, fold=k, out_dir=run_dir, resume=states[k] == "resumed", device=device, workdir=workdir,
                      force=force)

        tune = tune_run_dir(run_dir)
        slab = _overlay(config, run_dir, folds, datasets, dev, tune)
        if slab is not None:
            slab.save(rd.report / OVERLAY_FILE)
        report = build_report(run_dir)

        f4 = tune.per_class.set_index("particle_type")["f_beta_cross_fitted"]
        row = {
            "experiment": name,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "config_hash": config_hash(config),
            "seed": config.train.seed,
            "folds": " ".join(map(str, folds)),
            "cv_default": tune.score_default,
            "cv_tuned": tune.score_cross_fitted,
            "cv_tuned_in_sample": tune.score_in_sample,
            **{column: f4.get(particle, math.nan) for column, particle in zip(F4_COLUMNS, PARTICLE_NAMES)},
            "thresholds": json.dumps(tune.thresholds, separators=(",", ":")),
            "train_seconds": sum(float(pd.read_csv(rd.fold(k).history)["seconds"].sum()) for k in folds),
            "val_seconds": _heldout_seconds(run_dir, folds),
            "device": _device_label(dev),
            "run_dir": str(run_dir),
        }
        upsert = upsert_row(leaderboard, row)
        return ExperimentResult(run_dir, states, tune, report, row, upsert, Path(leaderboard))
