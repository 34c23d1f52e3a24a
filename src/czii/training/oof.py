"""Held-out runs and out-of-fold candidates, predicted with the shipped predictor spec.

Per-epoch validation (:func:`validate`) only picks the best epoch; it may be cheaper than the
shipped predictor (``val.tta``, ``val.tile_zyx``, ``val.overlap``, ``val.batch_size``). The
candidates that thresholds are tuned on are predicted once per fold, after training, by
:func:`write_oof` with the shipped spec (:func:`czii.predictor.spec_from_config`: ``infer``,
``postprocess`` and ``data`` of the config) and the fold's ``best.pt``; ``oof/spec.json`` records
that spec's hash and recipe, which ``czii tune`` copies into ``thresholds.json``.

:func:`repredict_run_dir` predicts every fold's out-of-fold candidates again under a changed
shipped spec (``czii tune --set infer.tta=...``), so new thresholds describe the new predictor.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from czii.config import DEFAULT_VAL_THRESHOLD, Config, load_config, with_data_paths
from czii.data import Dataset
from czii.errors import ConfigError, DataError
from czii.inference import EnsembleMember, Predictor
from czii.io import atomic_write_text
from czii.metric import score as metric_score
from czii.models import stride
from czii.picks import PICK_COLUMNS, empty_table
from czii.predictor import PredictorSpec, recipe, spec_from_config
from czii.registry import resolve_tta
from czii.rundir import FoldDir, RunDir, writing
from czii.training.data import class_picks, load_input, open_sources, split_fold
from czii.training.losses import activation_for

TRAINING_MEMBER = "model being trained"
RETUNE_SECTIONS = ("infer", "postprocess")


@dataclasses.dataclass
class ValRun:
    run: str
    volume: np.ndarray  # [C_in, Z, Y, X] normalised
    spacing_zyx_A: tuple[float, float, float]
    truth: pd.DataFrame


def load_val_runs(config: Config, datasets: dict[str, Dataset], fold: int) -> list[ValRun]:
    """The held-out runs of ``fold``: input as the config reads it, truth picks of its classes."""
    out = []
    for source, run in split_fold(config, datasets, fold).val:
        volume, spacing = load_input(config, datasets[source], run)
        out.append(ValRun(run, volume, spacing, class_picks(config, datasets[source], run)))
    return out


def validation_spec(config: Config) -> PredictorSpec:
    """The shipped spec of ``config`` with the per-epoch validation's TTA and tiling."""
    spec = spec_from_config(config, [(TRAINING_MEMBER, 1.0)])
    tiling = dataclasses.replace(spec.tiling, tile_zyx=list(config.val.tile_zyx), overlap=config.val.overlap,
                                 batch_size=config.val.batch_size)
    return dataclasses.replace(spec, tiling=tiling, tta=list(resolve_tta(config.val.tta)))


def validate(model: torch.nn.Module, val_runs: list[ValRun], config: Config, device: torch.device) -> float:
    """Metric score of ``model`` on the held-out runs at ``val.thresholds`` (per-epoch validation)."""
    member = EnsembleMember(
        model=copy.deepcopy(model), classes=tuple(config.data.classes),
        input_channels=tuple(config.data.input_channels), activation=activation_for(config.loss.name),
        stride=stride(config.model), name=TRAINING_MEMBER,
    )
    predictor = Predictor.from_members(validation_spec(config), [member], device)
    thresholds = {c: DEFAULT_VAL_THRESHOLD for c in config.data.classes} | config.val.thresholds
    picked = [predictor.picks(predictor.probabilities(vr.volume), vr.spacing_zyx_A, vr.run, thresholds)
              for vr in val_runs]
    truth = pd.concat([vr.truth for vr in val_runs], ignore_index=True)
    return float(metric_score(truth, pd.concat(picked, ignore_index=True)).score)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def write_oof(predictor: Predictor, fold: FoldDir, val_runs: Sequence[ValRun], candidate_threshold: float) -> Path:
    """``oof/candidates.csv`` (peaks >= ``candidate_threshold``), ``oof/truth.csv`` and ``oof/spec.json``
    (with ``predict_seconds``: the network passes over every held-out run) of ``fold``'s held-out runs
    predicted by ``predictor``; returns the candidates path."""
    candidates, seconds = [], 0.0
    for vr in val_runs:
        t0 = time.perf_counter()
        probs = predictor.probabilities(vr.volume)
        seconds += time.perf_counter() - t0
        candidates.append(predictor.picks(probs, vr.spacing_zyx_A, vr.run, candidate_threshold))
    truth = [vr.truth for vr in val_runs]
    spec = predictor.spec
    _write_csv(fold.truth, pd.concat(truth, ignore_index=True) if truth else empty_table(PICK_COLUMNS))
    _write_csv(fold.candidates, pd.concat(candidates, ignore_index=True))
    atomic_write_text(fold.oof_spec, json.dumps({
        "spec_hash": spec.hash, "spec": recipe(spec),
        "members": [dataclasses.asdict(m) for m in spec.members], "predict_seconds": seconds,
    }, indent=2) + "\n")
    return fold.candidates


def shipped_oof(config: Config, fold: FoldDir, val_runs: Sequence[ValRun], device: torch.device) -> Path:
    """:func:`write_oof` with the shipped spec of ``config`` and ``fold``'s ``best.pt``."""
    predictor = Predictor.load(spec_from_config(config, [(fold.best, 1.0)]), device)
    return write_oof(predictor, fold, val_runs, config.val.oof_threshold)


def retune_config(run_dir: RunDir, overrides: Sequence[str], data: Sequence[str | os.PathLike] | None) -> Config:
    """The run's resolved config with ``infer.*`` / ``postprocess.*`` overrides (other keys would need
    retraining) and ``data`` paths (as ``--data``)."""
    bad = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in RETUNE_SECTIONS]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: only the shipped predictor's settings ({', '.join(RETUNE_SECTIONS)}.*) "
                          "can change after training; other keys need `czii train`")
    if not run_dir.config.is_file():
        raise DataError(f"{run_dir.path}: no config.yaml (written by `czii train`)")
    config = load_config(run_dir.config, overrides)
    return with_data_paths(config, data) if data else config


def repredict_run_dir(run_dir: str | os.PathLike, *, overrides: Sequence[str] = (),
                      data: Sequence[str | os.PathLike] | None = None, device: str = "cpu",
                      workdir: str | os.PathLike | None = None, force: bool = False) -> PredictorSpec:
    """Predict every fold's out-of-fold candidates again with its ``best.pt`` under the run's shipped
    spec changed by ``overrides``; returns that spec (members: one fold's checkpoint). Holds the run
    directory's lock (:func:`czii.rundir.writing`; ``force`` takes over a stale one)."""
    rd = RunDir(run_dir)
    config = retune_config(rd, overrides, data)
    folds = [f for f in rd.folds() if f.best.is_file()]
    if not folds:
        raise DataError(f"{rd.path}: no fold<K>/checkpoints/best.pt to predict with")
    with writing(rd, force=force):
        datasets = open_sources(config, workdir)
        dev = torch.device(device)
        spec = None
        for fold in folds:
            held_out = json.loads(fold.seed.read_text()).get("val_runs") if fold.seed.is_file() else None
            val_runs = load_val_runs(config, datasets, fold.index)
            if held_out is not None and sorted(held_out) != sorted(v.run for v in val_runs):
                raise DataError(f"{fold.name} held out {sorted(held_out)} in training, but the data now give "
                                f"{sorted(v.run for v in val_runs)}; pass the training data with --data")
            shipped_oof(config, fold, val_runs, dev)
            spec = spec_from_config(config, [(fold.best, 1.0)])
        return spec


