"""Training data: folds → runs, tomograms loaded once into memory, and the patch dataset.

Folds are groups of run names (:func:`czii.config.resolve_folds`; without any, every run of
the first source is its own fold). ``--fold K`` holds out the runs of fold K (taken from the
first source that has each one) and trains on every other run of every source; runs in no
fold always train. Each tomogram is read at ``data.level``, normalised with
:func:`czii.data.normalize.normalize_volume`, and kept in RAM with its particle centres.

:class:`PatchDataset` item ``i`` of epoch ``e`` on rank ``r`` is a pure function of
``(seed, e, r, i)``: the patch draw and every augmentation use
``numpy.random.default_rng([seed, 0, e, r, i])``, so resumed and multi-worker runs see the
same samples as an uninterrupted one, and ranks see different ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from czii.config import Config, resolve_folds
from czii.data import Dataset, open_dataset
from czii.data.normalize import load_run_input, plan_input
from czii.errors import ConfigError, CziiError
from czii.geometry import same_spacing, xyz_A_to_zyx_vox
from czii.particles import BY_NAME, known_names
from czii.training.augment import (
    SpatialAug,
    augment_intensity,
    rotate_points_z,
    rotate_z,
    rotation_margin_zyx,
    sample_rotation_deg,
)
from czii.training.patches import PatchSampler, RunData, crop
from czii.training.targets import TargetRenderer, class_probabilities


@dataclass(frozen=True)
class FoldSplit:
    """(source name, run) pairs that train and that are held out for validation."""

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]


def open_sources(config: Config, workdir: str | Path | None = None) -> dict[str, Dataset]:
    """Each configured source opened as a :class:`czii.data.Dataset`, by source name.

    ``workdir`` (Kaggle sources) receives each source's staged picks under ``workdir/<source name>``.
    """
    if not config.data.sources:
        raise ConfigError("data.sources is empty: name at least one dataset (or pass --data PATH)")
    datasets = {}
    for s in config.data.sources:
        try:
            datasets[s.name] = open_dataset(s.path, split=s.split, aliases=s.aliases or None, tomo_type=s.tomo_type,
                                            workdir=Path(workdir) / s.name if workdir is not None else None)
        except CziiError as exc:
            raise type(exc)(f"data source {s.name!r}: {exc}") from None
    unknown = [c for c in config.data.classes if c not in BY_NAME]
    if unknown:
        raise ConfigError(f"data.classes: unknown classes {unknown}: neither CZII classes nor pickable objects with a "
                          f"radius in the data sources' copick configs; known: {', '.join(known_names())}")
    return datasets


def fold_runs(config: Config, datasets: dict[str, Dataset]) -> list[list[str]]:
    """The runs of each fold: the config's folds, else one fold per run of the first source."""
    return resolve_folds(config) or [[run] for run in datasets[config.data.sources[0].name].runs()]


def split_fold(config: Config, datasets: dict[str, Dataset], fold: int) -> FoldSplit:
    """The train/validation runs of ``fold`` (ConfigError for an unknown fold or run name)."""
    runs_of = {name: ds.runs() for name, ds in datasets.items()}
    folds = fold_runs(config, datasets)
    if not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold} does not exist: the config has {len(folds)} folds (0..{len(folds) - 1})")
    every_run = {run for runs in runs_of.values() for run in runs}
    for k, names in enumerate(folds):
        missing = [r for r in names if r not in every_run]
        if missing:
            raise ConfigError(
                f"fold {k} names runs {missing} that no source has; runs: "
                + "; ".join(f"{name}: {', '.join(runs)}" for name, runs in runs_of.items())
            )
    held_out = set(folds[fold])
    val = [(next(n for n in runs_of if run in runs_of[n]), run) for run in folds[fold]]
    train = [(name, run) for name, runs in runs_of.items() for run in runs if run not in held_out]
    if not train:
        raise ConfigError(f"fold {fold} holds out every run ({', '.join(sorted(held_out))}); nothing left to train on")
    return FoldSplit(train=train, val=val)


def load_input(config: Config, dataset: Dataset, run: str,
               channels: Sequence[str] | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Normalised ``[C_in, Z, Y, X]`` float32 input of ``run`` at the config's level (or resampled to
    ``data.spacing_A``), input channels and normalisation (:func:`czii.data.normalize.load_run_input`, as
    inference reads it) and its spacing. ``channels``: other tomogram types in place of ``data.input_channels``."""
    target = None if config.data.spacing_A is None else (config.data.spacing_A,) * 3
    return load_run_input(dataset, run, channels or config.data.input_channels, level=config.data.level,
                          clip_percentiles=config.data.normalisation.clip_percentiles,
                          nan_policy=config.data.nan_policy, target_spacing_zyx_A=target)


def check_training_inputs(config: Config, datasets: dict[str, Dataset], split: FoldSplit) -> None:
    """Read from the tomograms' metadata, before any voxel is loaded: every training run has each of
    ``data.extra_train_types`` (the error names the run, the type and the types present), and without
    ``data.spacing_A`` every run of ``split`` and each extra type come at one voxel size at ``data.level``
    (ConfigError naming two of them; a model must see every input at one voxel size)."""
    level = config.data.level
    target = None if config.data.spacing_A is None else (config.data.spacing_A,) * 3
    inputs = [(repr(run), source, run, config.data.input_channels[0]) for source, run in split.train + split.val]
    inputs += [(f"{run!r} {t!r} (data.extra_train_types)", source, run, t)
               for source, run in split.train for t in config.data.extra_train_types]
    spacings = []
    for label, source, run, tomo_type in inputs:
        try:
            spacings.append((label, plan_input(datasets[source], run, tomo_type, level, target).spacing_zyx_A))
        except CziiError as exc:
            if tomo_type == config.data.input_channels[0]:
                raise
            raise type(exc)(f"data.extra_train_types: source {source!r}: {exc} (--set data.extra_train_types=[] "
                            "trains on the input channels alone)") from None
    if target is not None:
        return
    for label, spacing in spacings[1:]:
        if not same_spacing(spacing, spacings[0][1]):
            raise ConfigError(
                f"runs {spacings[0][0]} ({spacings[0][1][-1]:.4g} Å) and {label} ({spacing[-1]:.4g} Å) have "
                f"different voxel sizes at pyramid level {level}; set data.spacing_A to train at one voxel size "
                "(every run is resampled to it)")


def class_picks(config: Config, dataset: Dataset, run: str) -> pd.DataFrame:
    """Truth picks of ``run`` restricted to the config's classes, checked against the tomogram's extent
    (``data.out_of_volume``: refuse or drop picks more than one radius outside it)."""
    picks = dataset.picks([run])
    picks = picks[picks["particle_type"].isin(config.data.classes)].reset_index(drop=True)
    return dataset.picks_in_volume(picks, config.data.out_of_volume)


def load_runs(
    config: Config, datasets: dict[str, Dataset], pairs: list[tuple[str, str]], progress: bool = True
) -> list[RunData]:
    """Read, normalise and keep in memory every (source, run) of ``pairs`` with its particle centres: one
    :class:`RunData` per tomogram type, the input channels and then each of ``data.extra_train_types``."""
    index_of = {c: i for i, c in enumerate(config.data.classes)}
    runs = []
    for source, run in tqdm(pairs, desc="loading runs", disable=None if progress else True, leave=False):
        volume, spacing = load_input(config, datasets[source], run)
        picks = class_picks(config, datasets[source], run)
        centers = xyz_A_to_zyx_vox(picks[["x", "y", "z"]].to_numpy(dtype=np.float64), spacing).reshape(-1, 3)
        classes = picks["particle_type"].map(index_of).to_numpy(dtype=np.int64)
        runs.append(RunData(source, run, volume, spacing, centers, classes))
        for tomo_type in config.data.extra_train_types:
            extra, _ = load_input(config, datasets[source], run, [tomo_type])
            runs.append(RunData(source, run, extra, spacing, centers, classes))
    return runs


class PatchDataset(torch.utils.data.Dataset):
    """``steps_per_epoch × batch_size`` (input, target) patches per epoch (see the module docstring)."""

    def __init__(self, config: Config, runs: list[RunData], rank: int = 0) -> None:
        self.config = config
        self.runs = runs
        self.rank = rank
        self.epoch = 0
        weights = {s.name: s.weight for s in config.data.sources}
        self.sampler = PatchSampler(runs, weights, config.patch)
        self.renderers = [
            TargetRenderer.from_config(config.targets, config.data.classes, r.spacing_zyx_A) for r in runs
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.config.train.steps_per_epoch * self.config.train.batch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        rng = np.random.default_rng([cfg.train.seed, 0, self.epoch, self.rank, index])
        draw = self.sampler.draw(rng)
        run, renderer = self.runs[draw.run_index], self.renderers[draw.run_index]
        size = np.asarray(cfg.patch.size_zyx)
        angle = sample_rotation_deg(rng, cfg.augment)
        # a rotated patch is cut from a larger crop so that its corners hold data, not padding
        margin = rotation_margin_zyx(angle, size)
        start = np.asarray(draw.start_zyx) - margin
        x = torch.from_numpy(crop(run.volume, start, size + 2 * margin))
        local = run.centers_zyx_vox - start
        if angle:
            x = rotate_z(x, angle)[:, :, margin[1]:margin[1] + size[1], margin[2]:margin[2] + size[2]]
            local = rotate_points_z(local, angle, size + 2 * margin)
        local = local - margin
        reach = renderer.reach_zyx_vox().max(axis=0) + 1
        near = np.all((local > -reach) & (local < size - 1 + reach), axis=1)
        y = torch.from_numpy(renderer(local[near], run.class_index[near], cfg.patch.size_zyx))
        spatial = SpatialAug.sample(rng, cfg.augment)
        x, y = spatial.apply(x), spatial.apply(y)
        x = augment_intensity(x, rng, cfg.augment)
        if cfg.loss.name == "ce":
            y = torch.from_numpy(class_probabilities(y.numpy()))
        return x.contiguous().float(), y.contiguous()
