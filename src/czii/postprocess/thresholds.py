"""Per-class score thresholds tuned on out-of-fold candidates, and the thresholds file.

Inputs are two picks tables: *candidates* (``experiment, particle_type, x, y, z, score``;
the picks of held-out runs found at a low threshold) and *truth* (``experiment,
particle_type, x, y, z``), coordinates in Å.

Metric (the competition's, as :mod:`czii.metric`): for each run of the truth table and each
class, a truth point is a TP when any kept candidate of that class lies within
``0.5 * radius_A`` (inclusive); FP = kept − TP (negative when one candidate covers two
truths); FN = truth − TP. Counts are summed over runs, F-beta (β = 4) is taken per class and
the score is ``Σ weight · F / total_weight`` (:func:`czii.particles.total_weight`). Candidates of runs
absent from the truth are ignored, as the competition ignores submission rows of runs outside the solution.

Exact evaluation: keeping candidates with ``score >= t`` only filters them (exact for maxpool
peaks, see :mod:`czii.postprocess.peaks`), so per truth point the best score of the candidates
in range decides when it is found: ``TP(t) = #{truth: best >= t}``, ``kept(t) = #{candidates:
score >= t}``. Classes are independent, so each class's threshold maximises its own F-beta.
Without a grid every distinct candidate score is tried and the chosen threshold is the
midpoint between the chosen score and the next lower one (same kept set, more margin).

Recall-side tolerance: the chosen threshold is the *lowest* one whose F-beta is within ``tolerance``
(absolute, :data:`TOLERANCE` by default) of the class's best, because out-of-fold curves are flat near
their optimum and new tomograms score lower, and β = 4 makes lost recall far costlier than a few more false
picks; ``tolerance=0`` is the exact argmax (ties to the lowest threshold). A class with no truth points, or
whose F-beta is 0 at every threshold, keeps its default threshold.

Score margin: no threshold lies below ``margin`` (:data:`MARGIN` by default) times the score of the weakest
truth point it keeps (on a grid: the grid's next value), because where every true particle scores near 1 the
curve's lowest end keeps the false picks of tomograms with far more background than the out-of-fold runs.
It only raises a threshold, never past a kept truth point; ``margin=0`` turns it off.

Bagging over runs: the thresholds are the mean of those tuned (as above) on ``bootstrap`` (:data:`BOOTSTRAP`
by default) resamples of the truth runs drawn with replacement (a fixed seed, so the file is reproducible;
``bootstrap=0`` tunes once), because a class with ten out-of-fold particles has an argmax that one particle
moves. With one run (or one fold) every resample is that run, and the result is the single tuning.

The measured effect of each rule is in ``benchmarks/ablation_cpu.md`` (tolerance: v3, margin: v9, bagging:
v11).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from czii.errors import ConfigError, DataError
from czii.io import check_output
from czii.metric import precision_recall_fbeta
from czii.particles import BY_NAME, PARTICLE_NAMES, get_particle, known_names, total_weight
from czii.picks import check_picks_table, neighbours, read_picks_csv
from czii.predictor import (
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLDS,
    check_recorded_hash,
    resolve_thresholds,
    save_thresholds,
)
from czii.rundir import RunDir, check_finished, writing

TOLERANCE: float = 0.05  # F-beta a class may give up for a lower (recall-side) threshold, see the module docstring
MARGIN: float = 0.5  # no threshold below this share of the score of the weakest truth point it keeps, ditto
BOOTSTRAP: int = 50  # run resamples whose tuned thresholds are averaged, ditto; 0 = tune once
_BOOTSTRAP_SEED = 0

# class -> run -> (best candidate score per truth point (-inf: none in range), candidate scores)
_Prepared = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


class Score(NamedTuple):
    """Weighted score and a per-class table: particle_type, weight, threshold, n_truth, n_kept, tp, fp, fn,
    precision, recall, f_beta."""

    score: float
    per_class: pd.DataFrame


class CrossFit(NamedTuple):
    """Cross-fitted score, its per-class table (as :class:`Score` without the threshold column) and the
    thresholds each fold's runs were scored with (tuned on the other folds)."""

    score: float
    per_class: pd.DataFrame
    thresholds_by_fold: dict[Hashable, dict[str, float]]


def class_curves(
    candidates: pd.DataFrame,
    truth: pd.DataFrame,
    classes: Sequence[str] | None = None,
    *,
    grid: Sequence[float] | None = None,
) -> dict[str, pd.DataFrame]:
    """Per class: TP, FP, FN, precision, recall and F-beta at each threshold (ascending).

    Thresholds are the distinct candidate scores of the class, or ``grid``.
    """
    classes = check_classes(classes)
    prep, runs = _prepare(candidates, truth, classes)
    grid = _check_grid(grid)
    return {name: _curve(prep[name], runs, grid) for name in classes}


def tune_thresholds(
    candidates: pd.DataFrame,
    truth: pd.DataFrame,
    classes: Sequence[str] | None = None,
    *,
    grid: Sequence[float] | None = None,
    default: float | Mapping[str, float] = DEFAULT_THRESHOLD,
    tolerance: float = TOLERANCE,
    margin: float = MARGIN,
    bootstrap: int = BOOTSTRAP,
) -> dict[str, float]:
    """The lowest threshold of every class whose F-beta is within ``tolerance`` of its best, not below the
    score ``margin``, averaged over ``bootstrap`` resamples of the runs (module docstring)."""
    classes = check_classes(classes)
    prep, runs = _prepare(candidates, truth, classes)
    return _tune_bagged(prep, classes, runs, _check_grid(grid),
                        resolve_thresholds(default, classes, "default thresholds"),
                        _check_tolerance(tolerance), _check_margin(margin), _check_bootstrap(bootstrap))


def score_at(
    candidates: pd.DataFrame,
    truth: pd.DataFrame,
    thresholds: float | Mapping[str, float],
    classes: Sequence[str] | None = None,
) -> Score:
    """Competition score and per-class table when each class keeps candidates ``score >= threshold``."""
    classes = check_classes(classes)
    thr = resolve_thresholds(thresholds, classes, "thresholds")
    prep, runs = _prepare(candidates, truth, classes)
    table = _table(prep, classes, lambda name: {run: thr[name] for run in runs})
    table.insert(2, "threshold", [thr[name] for name in classes])
    return Score(_weighted(table), table)


def cross_fitted_score(
    candidates: pd.DataFrame,
    truth: pd.DataFrame,
    groups: Mapping[str, Hashable],
    classes: Sequence[str] | None = None,
    *,
    grid: Sequence[float] | None = None,
    default: float | Mapping[str, float] = DEFAULT_THRESHOLD,
    tolerance: float = TOLERANCE,
    margin: float = MARGIN,
    bootstrap: int = BOOTSTRAP,
) -> CrossFit:
    """Honest score of tuning: each fold's runs use thresholds tuned on the other folds' runs.

    ``groups`` maps every truth run to its fold. The kept candidates of all folds are pooled
    and scored together (counts summed over all runs, then F-beta per class).
    """
    classes = check_classes(classes)
    prep, runs = _prepare(candidates, truth, classes)
    missing = [r for r in runs if r not in groups]
    if missing:
        raise DataError(f"runs {missing} have truth picks but no fold in groups (folds given for {sorted(groups)})")
    folds = list(dict.fromkeys(groups[r] for r in runs))
    if len(folds) < 2:
        raise ConfigError(f"cross-fitting needs runs from at least 2 folds; all runs are in fold {folds}")
    grid = _check_grid(grid)
    default = resolve_thresholds(default, classes, "default thresholds")
    tolerance, margin, bootstrap = _check_tolerance(tolerance), _check_margin(margin), _check_bootstrap(bootstrap)
    by_fold = {
        fold: _tune_bagged(prep, classes, [r for r in runs if groups[r] != fold], grid, default, tolerance, margin,
                           bootstrap)
        for fold in folds
    }
    table = _table(prep, classes, lambda name: {run: by_fold[groups[run]][name] for run in runs})
    return CrossFit(_weighted(table), table, by_fold)


@dataclass
class OOF:
    """Out-of-fold predictions of a run directory and the predictor spec they were made with."""

    candidates: pd.DataFrame
    truth: pd.DataFrame
    groups: dict[str, str]  # run -> fold directory name
    spec_hash: str
    spec: dict  # the recipe (czii.predictor.recipe) of that spec
    skipped: list[str] = field(default_factory=list)  # fold directories without oof/ files


def _check_table(df: pd.DataFrame, what, score: bool) -> pd.DataFrame:
    return check_picks_table(df, str(what), score=score, known=known_names(), error=DataError)


def read_oof_spec(path: Path) -> dict:
    """``oof/spec.json``: ``{"spec_hash", "spec"}`` (DataError naming the file otherwise)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: these out-of-fold candidates do not say which predictor spec made "
                        "them (written by an older czii); re-run `czii tune --run-dir <run dir> --repredict` "
                        "to predict them again under the shipped spec") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("spec_hash"), str) or not isinstance(doc.get("spec"), dict):
        raise DataError(f"{path}: expected a JSON object with 'spec_hash' and 'spec'")
    check_recorded_hash(doc, str(path), DataError)
    return doc


def read_oof(run_dir: str | os.PathLike) -> OOF:
    """Every fold's ``oof/{candidates,truth}.csv`` and ``oof/spec.json`` (all folds under one spec)."""
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise DataError(f"run directory {rd.path} does not exist")
    cands, truths, groups, skipped, specs = [], [], {}, [], {}
    for fold in rd.folds():
        present = [p for p in (fold.candidates, fold.truth) if p.is_file()]
        if not present:
            skipped.append(fold.name)
            continue
        if len(present) == 1:
            other = ({fold.candidates, fold.truth} - set(present)).pop()
            raise DataError(f"{fold.oof} has {present[0].name} but not {other.name}")
        cand = _check_table(read_picks_csv(fold.candidates, "candidates", error=DataError), fold.candidates, True)
        true = _check_table(read_picks_csv(fold.truth, "truth", error=DataError), fold.truth, False)
        stray = sorted(set(cand.experiment) - set(true.experiment))
        if stray:
            raise DataError(
                f"{fold.candidates} has runs {stray} that are not in truth.csv "
                f"(truth runs: {sorted(set(true.experiment))})"
            )
        for run in sorted(set(true.experiment)):
            if run in groups:
                raise DataError(f"run {run!r} is held out in both {groups[run]} and {fold.name}")
            groups[run] = fold.name
        specs[fold.name] = read_oof_spec(fold.oof_spec)
        cands.append(cand)
        truths.append(true)
    if not cands:
        raise DataError(
            f"no out-of-fold predictions in {rd.path}: expected fold<K>/oof/candidates.csv and "
            f"fold<K>/oof/truth.csv (written by `czii train`); fold directories found: "
            f"{[f.name for f in rd.folds()] or 'none'}"
        )
    hashes = {name: doc["spec_hash"] for name, doc in specs.items()}
    if len(set(hashes.values())) > 1:
        raise DataError(f"{rd.path}: the folds' out-of-fold candidates were predicted under different predictor "
                        f"specs ({', '.join(f'{k}: {v}' for k, v in hashes.items())}); thresholds tuned on them "
                        "would describe no single predictor. Re-predict them with `czii tune --repredict`")
    first = next(iter(specs.values()))
    return OOF(pd.concat(cands, ignore_index=True), pd.concat(truths, ignore_index=True), groups,
               first["spec_hash"], first["spec"], skipped)


@dataclass
class TuneReport:
    """What ``tune_run_dir`` found and wrote."""

    path: Path
    thresholds: dict[str, float]
    score_default: float
    score_in_sample: float
    score_cross_fitted: float | None  # None with a single fold
    per_class: pd.DataFrame
    folds: dict[str, list[str]]
    skipped: list[str]
    n_candidates: int
    n_truth: int
    spec_hash: str


def tune_run_dir(
    run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None, grid: Sequence[float] | None = None,
    allow_unfinished: bool = False, tolerance: float = TOLERANCE, margin: float = MARGIN, bootstrap: int = BOOTSTRAP,
    force: bool = False,
) -> TuneReport:
    """Tune thresholds on every fold's OOF files and write ``<run_dir>/thresholds.json`` (or ``out``),
    recording the hash and recipe of the predictor spec the candidates were made with. A fold whose
    training did not finish is refused unless ``allow_unfinished``. Holds the run directory's lock
    (:func:`czii.rundir.writing`; ``force`` takes over a stale one)."""
    grid = _check_grid(grid)
    tolerance, margin, bootstrap = _check_tolerance(tolerance), _check_margin(margin), _check_bootstrap(bootstrap)
    out = check_output(Path(out) if out is not None else RunDir(run_dir).thresholds, "thresholds file", overwrite=True)
    if not RunDir(run_dir).path.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    with writing(RunDir(run_dir), force=force):
        unfinished = check_finished([f.best for f in RunDir(run_dir).folds()], allow_unfinished)
        oof = read_oof(run_dir)
        default = score_at(oof.candidates, oof.truth, DEFAULT_THRESHOLD)
        thresholds = tune_thresholds(oof.candidates, oof.truth, grid=grid, tolerance=tolerance, margin=margin,
                                     bootstrap=bootstrap)
        tuned = score_at(oof.candidates, oof.truth, thresholds)
        folds: dict[str, list[str]] = {}
        for run, fold in oof.groups.items():
            folds.setdefault(fold, []).append(run)
        cross = (cross_fitted_score(oof.candidates, oof.truth, oof.groups, grid=grid, tolerance=tolerance,
                                    margin=margin, bootstrap=bootstrap)
                 if len(folds) > 1 else None)
        per_class = pd.DataFrame(
            {
                "particle_type": default.per_class["particle_type"],
                "weight": default.per_class["weight"],
                "n_truth": default.per_class["n_truth"],
                "threshold_default": default.per_class["threshold"],
                "f_beta_default": default.per_class["f_beta"],
                "threshold_tuned": tuned.per_class["threshold"],
                "f_beta_in_sample": tuned.per_class["f_beta"],
                "f_beta_cross_fitted": cross.per_class["f_beta"] if cross else np.nan,
            }
        )
        report = {
            "spec_hash": oof.spec_hash,
            "spec": oof.spec,
            "method": "exact" if grid is None else "grid",
            **({} if grid is None else {"grid": [float(g) for g in grid]}),
            "tolerance": tolerance,
            "margin": margin,
            "bootstrap": bootstrap,
            "score_default": default.score,
            "score_tuned_in_sample": tuned.score,
            "score_cross_fitted": cross.score if cross else None,
            "runs": sorted(oof.groups),
            "unfinished_members": unfinished,
            "folds": folds,
            "default_thresholds": dict(DEFAULT_THRESHOLDS),
            "thresholds_by_fold": cross.thresholds_by_fold if cross else None,
            "per_class": json.loads(per_class.to_json(orient="records")),
        }
        save_thresholds(out, thresholds, report=report)
        return TuneReport(
            out, thresholds, default.score, tuned.score, cross.score if cross else None, per_class,
            folds, oof.skipped, len(oof.candidates), len(oof.truth), oof.spec_hash,
        )


# ---------------------------------------------------------------- internals


def _prepare(candidates: pd.DataFrame, truth: pd.DataFrame, classes: list[str]) -> tuple[_Prepared, list[str]]:
    cand = _check_table(candidates, "candidates", True)
    true = _check_table(truth, "truth", False)
    runs = sorted(set(true.experiment))
    cand = cand[cand["experiment"].isin(runs)].reset_index(drop=True)
    scores = cand["score"].to_numpy(np.float64)
    best = np.array([scores[n].max() if len(n) else -np.inf for n in neighbours(true, cand)])
    true_groups = true.groupby(["particle_type", "experiment"]).indices
    cand_groups = cand.groupby(["particle_type", "experiment"]).indices
    none = np.empty(0, dtype=np.int64)
    prep: _Prepared = {
        name: {run: (best[true_groups.get((name, run), none)], scores[cand_groups.get((name, run), none)])
               for run in runs}
        for name in classes
    }
    return prep, runs


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return len(values) - np.searchsorted(np.sort(values), thresholds, side="left")



def _curve(per_run: dict, runs: Sequence[str], grid: np.ndarray | None) -> pd.DataFrame:
    best = np.concatenate([per_run[r][0] for r in runs] or [np.zeros(0)])
    scores = np.concatenate([per_run[r][1] for r in runs] or [np.zeros(0)])
    thr = np.unique(scores) if grid is None else grid
    tp = _count_at_least(best, thr)
    kept = _count_at_least(scores, thr)
    precision, recall, f_beta = precision_recall_fbeta(tp, kept, len(best))
    return pd.DataFrame(
        {"threshold": thr, "tp": tp, "fp": kept - tp, "fn": len(best) - tp,
         "precision": precision, "recall": recall, "f_beta": f_beta}
    )


def _tune(
    prep: _Prepared, classes: list[str], runs: Sequence[str], grid: np.ndarray | None, default: dict[str, float],
    tolerance: float,
    margin: float,
) -> dict[str, float]:
    out = {}
    for name in classes:
        curve = _curve(prep[name], runs, grid)
        f = curve["f_beta"].to_numpy()
        if len(f) == 0 or f.max() <= 0:
            out[name] = default[name]
            continue
        i = int(np.argmax(f >= f.max() - tolerance))
        t = float(curve["threshold"].iat[i])
        if grid is None and i > 0:
            lower = float(curve["threshold"].iat[i - 1])
            mid = (lower + t) / 2
            t = mid if mid > lower else t
        best = np.concatenate([prep[name][r][0] for r in runs])
        floor = margin * float(best[best >= t].min())
        if floor > t and grid is None:
            t = floor
        elif floor > t and floor <= grid[-1]:  # on a grid: its lowest value at or above the floor
            t = float(grid[np.searchsorted(grid, floor)])
        out[name] = t
    return out


def _tune_bagged(
    prep: _Prepared, classes: list[str], runs: Sequence[str], grid: np.ndarray | None, default: dict[str, float],
    tolerance: float, margin: float, bootstrap: int,
) -> dict[str, float]:
    """:func:`_tune` on the runs (``bootstrap`` 0 or one run), else the mean of it over ``bootstrap``
    resamples of the runs with replacement (a run drawn twice counts twice); on a grid, the grid value
    nearest that mean."""
    if bootstrap == 0 or len(runs) < 2:
        return _tune(prep, classes, runs, grid, default, tolerance, margin)
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    draws = [_tune(prep, classes, [runs[i] for i in rng.integers(0, len(runs), len(runs))], grid, default,
                   tolerance, margin) for _ in range(bootstrap)]
    means = {name: float(np.mean([d[name] for d in draws])) for name in classes}
    if grid is None:
        return means
    return {name: float(grid[np.argmin(np.abs(grid - m))]) for name, m in means.items()}


def _table(prep: _Prepared, classes: list[str], thr_of: Callable[[str], Mapping[str, float]]) -> pd.DataFrame:
    """Per-class counts when class ``name`` keeps, in each run, candidates ``>= thr_of(name)[run]``."""
    rows = []
    for name in classes:
        thr = thr_of(name)
        tp = sum(int((best >= thr[run]).sum()) for run, (best, _) in prep[name].items())
        kept = sum(int((scores >= thr[run]).sum()) for run, (_, scores) in prep[name].items())
        n_truth = sum(len(best) for best, _ in prep[name].values())
        rows.append((name, get_particle(name).weight, n_truth, kept, tp, kept - tp, n_truth - tp))
    table = pd.DataFrame(rows, columns=["particle_type", "weight", "n_truth", "n_kept", "tp", "fp", "fn"])
    table["precision"], table["recall"], table["f_beta"] = precision_recall_fbeta(table["tp"], table["n_kept"],
                                                                                  table["n_truth"])
    return table


def _weighted(table: pd.DataFrame) -> float:
    return float((table["weight"] * table["f_beta"]).sum() / total_weight(table["particle_type"]))


def check_classes(classes: Sequence[str] | None) -> list[str]:
    """``classes`` as a list (None: all six), each a known class name, none repeated."""
    classes = list(PARTICLE_NAMES if classes is None else classes)
    unknown = [c for c in classes if c not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown class names {unknown}; known: {', '.join(known_names())}")
    if not classes or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be a non-empty list without repeats, got {classes}")
    return classes


def _check_tolerance(tolerance: float) -> float:
    t = float(tolerance)
    if not 0 <= t < 1:
        raise ConfigError(f"threshold tolerance must be in [0, 1) (F-beta given up for recall), got {tolerance!r}")
    return t


def _check_margin(margin: float) -> float:
    m = float(margin)
    if not 0 <= m <= 1:
        raise ConfigError(f"threshold score margin must be in [0, 1] (share of the score of the weakest truth "
                          f"point a threshold keeps), got {margin!r}")
    return m


def _check_bootstrap(bootstrap: int) -> int:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise ConfigError(f"threshold bootstrap must be a whole number of run resamples ≥ 0 (0 = tune once), "
                          f"got {bootstrap!r}")
    return int(bootstrap)


def _check_grid(grid: Sequence[float] | None) -> np.ndarray | None:
    if grid is None:
        return None
    g = np.unique(np.asarray(grid, dtype=np.float64))
    if len(g) == 0 or not np.all(np.isfinite(g)) or g[0] < 0 or g[-1] > 1:
        raise ConfigError(f"threshold grid must be a non-empty list of values in [0, 1], got {grid!r}")
    return g
