""":func:`build_ensemble` scores an ensemble of leaderboard rows honestly: for fold K it averages
only the rows' fold-K models (none of which saw fold K's held-out runs) over those runs under the
first row's shipped recipe (its tuned spec: TTA, tiling, peaks), writes the candidates as
training's out-of-fold pass does, and tunes/cross-fits thresholds on them exactly like a row.
Rows must share their folds (same held-out runs per fold) and input recipe. Output: ``<name>.yaml``,
a predictor spec (:mod:`czii.predictor`: every fold's ``best.pt`` of every row at the row's weight,
that recipe, ``thresholds``; paths relative to the YAML, scores in its header comment) and
``<name>/`` beside it with ``fold*/oof/`` and ``thresholds.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from czii.config import Config, load_config, with_data_paths
from czii.errors import ConfigError, DataError
from czii.experiment.leaderboard import DEFAULT_LEADERBOARD, read_leaderboard, resolve_rows, row_id
from czii.io import atomic_write_text, check_output, temp_sibling
from czii.postprocess.thresholds import TuneReport, tune_run_dir
from czii.inference import Predictor
from czii.predictor import MemberSpec, PredictorSpec, run_dir_spec, spec_yaml
from czii.rundir import FoldDir, RunDir, check_finished
from czii.training.data import open_sources
from czii.training.oof import load_val_runs, write_oof

@dataclasses.dataclass
class EnsembleMemberRow:
    """A leaderboard row taking part in an ensemble: its weight, run directory, config and folds."""

    row: dict
    weight: float
    run_dir: Path
    config: Config
    folds: dict[str, tuple[str, ...]]  # fold folder -> held-out runs


@dataclasses.dataclass
class EnsembleResult:
    """The ensemble YAML, the folder with its out-of-fold files and thresholds, and their scores."""

    yaml_path: Path
    oof_dir: Path
    members: list[EnsembleMemberRow]
    tune: TuneReport


def _member_row(row: dict, weight: float, data: Sequence[str | os.PathLike] | None,
                allow_unfinished: bool) -> EnsembleMemberRow:
    rd = RunDir(row["run_dir"])
    config = load_config(rd.config)
    if data:
        config = with_data_paths(config, data)
    folds = {}
    for fold in (rd.fold(int(k)) for k in row["folds"].split()):
        if not fold.best.is_file():
            raise DataError(f"row {row_id(row)}: {fold.best} not found")
        try:
            folds[fold.name] = tuple(sorted(json.loads(fold.seed.read_text())["val_runs"]))
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"row {row_id(row)}: {fold.seed} unreadable ({exc})") from None
    check_finished([FoldDir(rd.path / f).best for f in folds], allow_unfinished)
    return EnsembleMemberRow(row, weight, rd.path, config, folds)


def _check_members(members: Sequence[EnsembleMemberRow]) -> None:
    """Refuse rows whose folds or input recipe differ, naming each row and its value."""

    def refuse_if_differ(what: str, values: list) -> None:
        if any(v != values[0] for v in values):
            listing = "; ".join(f"{row_id(m.row)}: {v}" for m, v in zip(members, values))
            raise ConfigError(f"ensemble members differ in {what}: {listing}")

    refuse_if_differ("folds (fold: held-out runs; each fold must be scored only by models that did not see it)",
                     [{f: list(runs) for f, runs in m.folds.items()} for m in members])
    refuse_if_differ("classes", [m.config.data.classes for m in members])
    refuse_if_differ("input channels", [m.config.data.input_channels for m in members])
    refuse_if_differ("pyramid level", [m.config.data.level for m in members])
    refuse_if_differ("normalisation", [m.config.data.normalisation.clip_percentiles for m in members])


def _ensemble_spec(members: Sequence[EnsembleMemberRow], fold: str | None, thresholds: Path | None) -> PredictorSpec:
    """The first row's shipped recipe over the rows' ``fold`` models (every fold's when None) at their weights."""
    recipe_of = run_dir_spec(members[0].run_dir)
    chosen = [(FoldDir(m.run_dir / f).best, m.weight) for m in members
              for f in (m.folds if fold is None else [fold])]
    return dataclasses.replace(recipe_of, members=[MemberSpec(str(p), w) for p, w in chosen],
                               thresholds=None if thresholds is None else str(thresholds))


def _ensemble_oof(members: Sequence[EnsembleMemberRow], out: Path, device: torch.device, workdir) -> None:
    """``out/fold<K>/oof/`` of the ensemble of the members' fold-K models under the shipped spec."""
    config = members[0].config
    datasets = open_sources(config, workdir)
    for fold, runs in members[0].folds.items():
        fold_dir = RunDir(out).fold(int(fold.removeprefix("fold")))
        val_runs = load_val_runs(config, datasets, fold_dir.index)
        if tuple(sorted(v.run for v in val_runs)) != runs:
            raise DataError(f"{fold} held out {list(runs)} in training, but the data now give "
                            f"{sorted(v.run for v in val_runs)}; pass the training data with --data")
        predictor = Predictor.load(_ensemble_spec(members, fold, None), device)
        fold_dir.oof.mkdir(parents=True)
        write_oof(predictor, fold_dir, val_runs, config.val.oof_threshold)


def _ensemble_yaml(members: Sequence[EnsembleMemberRow], yaml_path: Path, oof_dir: Path, tune: TuneReport) -> str:
    cross = "n/a (one fold)" if tune.score_cross_fitted is None else f"{tune.score_cross_fitted:.4f}"
    header = [
        f"czii ensemble of {', '.join(f'{row_id(m.row)} (weight {m.weight:g})' for m in members)}",
        (f"out-of-fold over {len(members[0].folds)} folds: default {tune.score_default:.4f}, "
         f"tuned in-sample {tune.score_in_sample:.4f}, tuned cross-fitted {cross} (honest)"),
    ]
    spec = Predictor.load(_ensemble_spec(members, None, oof_dir / "thresholds.json"), "cpu").spec  # + voxel size
    return spec_yaml(spec, yaml_path.parent, header)


def build_ensemble(
    specs: Sequence[str],
    out_yaml: str | os.PathLike,
    *,
    weights: Sequence[float] | None = None,
    leaderboard: str | os.PathLike = DEFAULT_LEADERBOARD,
    data: Sequence[str | os.PathLike] | None = None,
    device: str = "cpu",
    workdir: str | os.PathLike | None = None,
    allow_unfinished: bool = False,
) -> EnsembleResult:
    """Ensemble YAML (``czii infer --models``) of leaderboard rows, scored out-of-fold.

    Writes ``out_yaml`` and, beside it, the folder ``<out_yaml without suffix>/`` holding the
    ensemble's ``fold*/oof/`` files and ``thresholds.json`` (which the YAML points to); both are
    refused when they exist. ``data`` replaces the rows' dataset paths (as ``--data``).
    """
    out_yaml = Path(out_yaml)
    if out_yaml.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--out {out_yaml}: expected a .yaml file, e.g. ensembles/<name>.yaml")
    oof_dir = out_yaml.with_suffix("")
    existing = [str(p) for p in (out_yaml, oof_dir) if p.exists()]
    if existing:
        raise ConfigError(f"{' and '.join(existing)} already exist; choose another --out")
    check_output(out_yaml, "--out")
    weights = [1.0] * len(specs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(specs):
        raise ConfigError(f"--weights: {len(weights)} given for {len(specs)} rows; give one per row, in order")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ConfigError(f"--weights must be positive numbers, got {weights}")
    rows = resolve_rows(read_leaderboard(leaderboard), specs)
    members = [_member_row(row, w, data, allow_unfinished) for row, w in zip(rows, weights)]
    _check_members(members)

    tmp = temp_sibling(oof_dir)
    try:
        _ensemble_oof(members, tmp, torch.device(device), workdir)
        tune = tune_run_dir(tmp)
        tmp.rename(oof_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tune = dataclasses.replace(tune, path=oof_dir / "thresholds.json")
    try:
        atomic_write_text(out_yaml, _ensemble_yaml(members, out_yaml, oof_dir, tune))
    except BaseException:
        shutil.rmtree(oof_dir, ignore_errors=True)
        raise
    return EnsembleResult(out_yaml, oof_dir, members, tune)
