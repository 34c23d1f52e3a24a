"""Experiments, the leaderboard and ensembles: every number comparable and honest.

:func:`run_experiment` turns a config into one leaderboard row:

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

Leaderboard (default ``submissions/leaderboard.csv``, columns :data:`LEADERBOARD_COLUMNS`,
header stable, created on first write when absent): one row per ``(experiment, config_hash)``.
Re-running an experiment with the same config (seed included in the hash) replaces its row in
place and reports which score columns changed (none when it reproduced); another config appends
a row. A file with another header is refused, never rewritten. Each write holds an exclusive
lock on the folder, reads the file, changes the row, writes a temporary file and renames it.
Rows are named ``NAME`` or ``NAME@HASH`` (a prefix of the config hash is enough). Columns:
``cv_default`` (score at :data:`czii.predictor.DEFAULT_THRESHOLDS`), ``cv_tuned``,
``cv_tuned_in_sample``, ``f4_<class>``; ``thresholds`` (compact JSON of ``thresholds.json``:
tuned on every fold's OOF candidates, what ``czii infer`` uses); ``train_seconds`` (sum of the
folds' ``history.csv`` seconds, periodic validation included, so resumed folds count whole);
``val_seconds`` (the out-of-fold pass's network time over every held-out run, recorded by
``czii train``); ``git_commit`` (empty outside git); ``run_dir`` (as given, relative to
the working directory unless absolute).

:func:`build_ensemble` scores an ensemble of leaderboard rows honestly: for fold K it averages
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
import fcntl
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from czii.config import Config, config_hash, load_config, with_data_paths
from czii.data import Dataset
from czii.errors import ConfigError, DataError
from czii.io import atomic_write_text, check_output, git_commit, temp_sibling
from czii.particles import PARTICLE_NAMES
from czii.postprocess.thresholds import TuneReport, read_oof_spec, tune_run_dir
from czii.report import OVERLAY_FILE, OverlaySlab, Report, build_report, overlay_slab
from czii.inference import Predictor
from czii.predictor import MemberSpec, PredictorSpec, run_dir_spec, spec_yaml
from czii.rundir import FoldDir, RunDir, check_finished, read_status, writing
from czii.training.data import class_picks, fold_runs, open_sources, split_fold
from czii.training.loop import train
from czii.training.oof import load_val_runs, write_oof

DEFAULT_LEADERBOARD = Path("submissions/leaderboard.csv")
F4_COLUMNS: tuple[str, ...] = tuple(f"f4_{name}" for name in PARTICLE_NAMES)
SCORE_COLUMNS: tuple[str, ...] = ("cv_default", "cv_tuned", "cv_tuned_in_sample", *F4_COLUMNS)
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "experiment", "timestamp", "git_commit", "config_hash", "seed", "folds", *SCORE_COLUMNS,
    "thresholds", "train_seconds", "val_seconds", "device", "run_dir",
)
NUMERIC_COLUMNS: tuple[str, ...] = (*SCORE_COLUMNS, "train_seconds", "val_seconds")
SORT_COLUMNS: tuple[str, ...] = (*NUMERIC_COLUMNS, "seed", "timestamp")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------- leaderboard


def row_id(row: dict) -> str:
    """``experiment@config_hash``: how a row is named on the command line."""
    return f"{row['experiment']}@{row['config_hash']}"


def read_leaderboard(path: str | os.PathLike = DEFAULT_LEADERBOARD) -> pd.DataFrame:
    """The leaderboard table (empty when the file is absent or empty); DataError for another header."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"leaderboard {path}: unreadable CSV ({exc})") from None
    if tuple(df.columns) != LEADERBOARD_COLUMNS:
        raise DataError(f"leaderboard {path}: header {list(df.columns)} differs from the leaderboard header "
                        f"{list(LEADERBOARD_COLUMNS)}; move the file aside (it is never rewritten)")
    for column, parse in [(c, lambda v: float(v) if v else math.nan) for c in NUMERIC_COLUMNS] + [("seed", int)]:
        try:
            df[column] = [parse(v) for v in df[column]]
        except ValueError as exc:
            raise DataError(f"leaderboard {path}: column {column!r} holds a non-number ({exc})") from None
    return df


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``folder`` (serialises read-modify-write of the files in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@dataclasses.dataclass
class Upsert:
    """What :func:`upsert_row` did: ``appended`` or ``replaced`` (then the score columns that changed)."""

    action: str
    changed: list[str]


def upsert_row(path: str | os.PathLike, row: dict) -> Upsert:
    """Replace the row with the same (experiment, config_hash), or append ``row``; atomic and locked."""
    path = Path(path)
    missing = [c for c in LEADERBOARD_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"leaderboard row lacks columns {missing}")
    new = {c: row[c] for c in LEADERBOARD_COLUMNS}
    for column in NUMERIC_COLUMNS:
        new[column] = math.nan if new[column] is None else float(new[column])
    with _folder_lock(path.parent):
        records = read_leaderboard(path).to_dict("records")
        same_key = [i for i, r in enumerate(records) if row_id(r) == row_id(new)]
        if same_key:
            old = records[same_key[0]]
            result = Upsert("replaced", [c for c in (*SCORE_COLUMNS, "thresholds") if not _same(old[c], new[c])])
            records[same_key[0]] = new
        else:
            result = Upsert("appended", [])
            records.append(new)
        atomic_write_text(path, pd.DataFrame(records, columns=list(LEADERBOARD_COLUMNS)).to_csv(index=False))
    return result


def sort_leaderboard(df: pd.DataFrame, by: str = "cv_tuned", *, top: int | None = None,
                     ascending: bool = False) -> pd.DataFrame:
    """Rows sorted by ``by`` (best first: descending unless ``ascending``; empty values last), first ``top``."""
    if by not in SORT_COLUMNS:
        raise ConfigError(f"cannot sort the leaderboard by {by!r}; choose one of {', '.join(SORT_COLUMNS)}")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    out = df.sort_values(by, ascending=ascending, na_position="last", kind="stable")
    return out.head(top) if top is not None else out


def format_leaderboard(df: pd.DataFrame, *, per_class: bool = False) -> str:
    """Aligned text table with a rank column; scores to 4 decimals, empty ones as ``n/a``."""
    columns = ["experiment", "config_hash", "seed", "folds", "cv_tuned", "cv_default", "cv_tuned_in_sample",
               *(F4_COLUMNS if per_class else ()), "train_seconds", "val_seconds", "device", "timestamp"]
    view = df[columns].copy()
    view.insert(0, "rank", range(1, len(view) + 1))

    formatters = {c: "{:.4f}".format for c in SCORE_COLUMNS}
    formatters |= {c: "{:.1f}".format for c in ("train_seconds", "val_seconds")}
    return view.to_string(index=False, na_rep="n/a", formatters={c: f for c, f in formatters.items() if c in columns})


def resolve_rows(df: pd.DataFrame, specs: Sequence[str]) -> list[dict]:
    """Rows named ``NAME`` or ``NAME@HASH`` (hash prefix); ConfigError for unknown or ambiguous names."""
    records = df.to_dict("records")
    available = ", ".join(row_id(r) for r in records) or "none (the leaderboard is empty)"
    rows = []
    for spec in specs:
        name, _, prefix = spec.partition("@")
        found = [r for r in records if r["experiment"] == name and r["config_hash"].startswith(prefix)]
        if not found:
            raise ConfigError(f"no leaderboard row {spec!r}; rows: {available}")
        if len(found) > 1:
            raise ConfigError(f"{spec!r} names {len(found)} rows ({', '.join(row_id(r) for r in found)}); "
                              "give NAME@HASH")
        if any(row_id(r) == row_id(found[0]) for r in rows):
            raise ConfigError(f"row {row_id(found[0])} is named twice")
        rows.append(found[0])
    return rows


# --------------------------------------------------------------------------- experiment


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


# --------------------------------------------------------------------------- ensembles


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
