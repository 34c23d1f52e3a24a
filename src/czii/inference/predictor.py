"""The runtime of a :class:`czii.predictor.PredictorSpec`: members loaded, volumes → probabilities → picks.

:class:`Predictor` is what every stage that turns a tomogram into picks uses: training's
per-epoch validation and out-of-fold pass, ``czii infer``, the ensemble builder, the experiment
report and the Kaggle notebook. It reads a run's input exactly as the spec says
(:func:`czii.data.normalize.load_run_input`), predicts with the spec's tiling and TTA
(:func:`czii.inference.ensemble.predict_volume`) and detects peaks with the spec's method
(:func:`czii.postprocess.peaks.detect_peaks`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from czii.config import Config, build_typed
from czii.data import Dataset, TomogramFolder
from czii.data.normalize import InputPlan, load_run_input, plan_input
from czii.errors import ConfigError
from czii.geometry import same_spacing
from czii.inference.ensemble import EnsembleMember, check_compatible, check_tile, predict_volume
from czii.inference.onnx_members import load_onnx_member
from czii.models import load_checkpoint, read_checkpoint
from czii.postprocess.peaks import detect_peaks
from czii.predictor import PredictorSpec, spec_from_config
from czii.registry import RUNTIMES


def ensemble_member(model: torch.nn.Module, meta: dict[str, Any], *, weight: float = 1.0,
                    name: str) -> EnsembleMember:
    """An :class:`EnsembleMember` of a model and metadata from :func:`czii.models.load_checkpoint`."""
    return EnsembleMember(model=model, classes=tuple(meta["classes"]), input_channels=tuple(meta["input_channels"]),
                          activation=meta["activation"], weight=weight, stride=int(meta["stride"]), name=name)


def _members_spacing(names: Sequence[str], metas: Sequence[dict], recorded: Sequence[float] | None
                     ) -> list[float] | None:
    """The voxel size the members were trained at (from their metadata, else the spec's ``recorded`` value);
    ConfigError when members disagree with each other or with the spec."""
    known = [(name, [float(v) for v in meta["spacing_zyx_A"]]) for name, meta in zip(names, metas)
             if meta.get("spacing_zyx_A") is not None]
    for name, spacing in known[1:]:
        if not same_spacing(spacing, known[0][1]):
            raise ConfigError(f"ensemble members were trained at different voxel sizes: {known[0][0]} at "
                              f"{known[0][1]} Å, {name} at {spacing} Å")
    if recorded is not None and known and not same_spacing(recorded, known[0][1]):
        raise ConfigError(f"the predictor spec says input.spacing_zyx_A {list(recorded)} Å, but member "
                          f"{known[0][0]} was trained at {known[0][1]} Å")
    if known:
        return known[0][1]
    return None if recorded is None else [float(v) for v in recorded]


def checkpoints_spec(paths: Sequence[str | Path]) -> PredictorSpec:
    """The spec of checkpoint files at equal weights, with the first one's saved config and no thresholds."""
    ckpt = read_checkpoint(paths[0])
    config = build_typed(Config, ckpt.get("config") or {}, f"saved config of {paths[0]}")
    return spec_from_config(config, [(p, 1.0) for p in paths])


@dataclasses.dataclass
class Predictor:
    """A spec with its members ready on ``device``."""

    spec: PredictorSpec
    members: list[EnsembleMember]
    metas: list[dict[str, Any]]
    device: torch.device
    runtime: str = "torch"

    @classmethod
    def load(cls, spec: PredictorSpec, device: str | torch.device = "cpu", runtime: str = "torch") -> Predictor:
        """Load every member checkpoint (``runtime`` ``compiled``: through ``torch.compile``; ``onnx``: its ONNX export
        run by onnxruntime, :mod:`czii.inference.onnx_members`);
        ConfigError when one disagrees with the spec (classes, input)."""
        if runtime not in RUNTIMES:
            raise ConfigError(f"unknown runtime {runtime!r}; runtimes: {', '.join(RUNTIMES)}")
        device = torch.device(device)
        members, metas = [], []
        for m in spec.members:
            if runtime == "onnx":
                model, meta = load_onnx_member(m.checkpoint, device)
            else:
                model, meta = load_checkpoint(m.checkpoint, device)
                if runtime == "compiled":  # compiled on the first tile batch of each shape
                    model = torch.compile(model)
            members.append(ensemble_member(model, meta, weight=m.weight, name=m.checkpoint))
            metas.append(meta)
            found = {
                "classes": list(meta["classes"]), "input.channels": list(meta["input_channels"]),
                "input.level": int(meta.get("level", 0)),
                "input.clip_percentiles": list(meta.get("normalisation", {}).get("clip_percentiles", [])),
            }
            wanted = {"classes": spec.classes, "input.channels": spec.input.channels, "input.level": spec.input.level,
                      "input.clip_percentiles": spec.input.clip_percentiles}
            for key, value in wanted.items():
                if found[key] != value:
                    raise ConfigError(f"member {m.checkpoint} was trained with {key} {found[key]}, the predictor "
                                      f"spec says {value}; every member must be trained on the spec's input")
        return dataclasses.replace(cls.from_members(spec, members, device, metas), runtime=runtime)

    @classmethod
    def from_members(cls, spec: PredictorSpec, members: Sequence[EnsembleMember], device: str | torch.device,
                     metas: Sequence[dict] | None = None) -> Predictor:
        """A predictor of in-memory members (e.g. the model being trained); checks the tile against their strides."""
        check_compatible(members)
        check_tile(members, spec.tiling.tile_zyx)
        metas = list(metas or [{} for _ in members])
        spacing = _members_spacing([m.name for m in members], metas, spec.input.spacing_zyx_A)
        spec = dataclasses.replace(spec, input=dataclasses.replace(spec.input, spacing_zyx_A=spacing))
        return cls(spec, list(members), metas, torch.device(device))

    @property
    def spacing_zyx_A(self) -> tuple[float, float, float] | None:
        """The voxel size (Å) the members were trained at (``spec.input.spacing_zyx_A``; None for checkpoints
        that predate recording it and a spec that does not say)."""
        s = self.spec.input.spacing_zyx_A
        return None if s is None else tuple(s)

    def plan(self, dataset: Dataset | TomogramFolder, run: str) -> InputPlan:
        """Which level of ``run`` is read and the voxel size it is predicted at (metadata only)."""
        inp = self.spec.input
        return plan_input(dataset, run, inp.channels[0], inp.level, self.spacing_zyx_A)

    def load_input(self, dataset: Dataset | TomogramFolder, run: str,
                   plan: InputPlan | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Normalised ``[C_in, Z, Y, X]`` input of ``run`` at the members' voxel size and that spacing (Å);
        ``plan``: :meth:`plan` of the run when already made."""
        inp = self.spec.input
        return load_run_input(dataset, run, inp.channels, level=inp.level, clip_percentiles=inp.clip_percentiles,
                              nan_policy=inp.nan_policy, target_spacing_zyx_A=self.spacing_zyx_A, plan=plan)

    def probabilities(self, volume_czyx: np.ndarray, progress: bool = False) -> np.ndarray:
        """Ensemble × TTA probabilities ``[C, Z, Y, X]`` with the spec's tiling."""
        t = self.spec.tiling
        # channels_last_3d speeds up torch's CPU convolutions; onnxruntime takes plain NCDHW
        return predict_volume(self.members, volume_czyx, tile_zyx=tuple(t.tile_zyx), overlap=t.overlap, blend=t.blend,
                              batch_size=t.batch_size, tta=tuple(self.spec.tta), device=self.device,
                              channels_last=self.runtime != "onnx", progress=progress)

    def picks(self, probs_czyx: np.ndarray, spacing_zyx_A, run: str,
              thresholds: float | Mapping[str, float]) -> pd.DataFrame:
        """Scored picks (``experiment, particle_type, x, y, z, score``) with the spec's peak settings."""
        p = self.spec.peaks
        return detect_peaks(probs_czyx, self.spec.classes, spacing_zyx_A, thresholds=thresholds, run=run,
                            method=p.method, nms_radius_factor=p.nms_radius_factor, min_size_vox=p.min_size_vox,
                            merge_factor=p.merge_factor, subvoxel=p.subvoxel)

    def predict_run(self, dataset: Dataset | TomogramFolder, run: str, thresholds: float | Mapping[str, float],
                    progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Scored picks of one run and its facts (shape, spacing, seconds per stage, number of picks)."""
        plan, volume_czyx, spacing_zyx_A, load_s = self._load(dataset, run)
        t0 = time.perf_counter()
        probs = self.probabilities(volume_czyx, progress)
        predict_s = time.perf_counter() - t0
        picks, peaks_s = self._peaks(run, probs, spacing_zyx_A, thresholds)
        return picks, _run_info(volume_czyx.shape, spacing_zyx_A, plan, (load_s, predict_s, peaks_s), picks)

    def predict_runs(self, dataset: Dataset | TomogramFolder, runs: Sequence[str],
                     thresholds: float | Mapping[str, float], progress: bool = False,
                     overlap: bool | None = None) -> Iterator[tuple[str, pd.DataFrame, dict[str, Any]]]:
        """:meth:`predict_run` of each of ``runs``, yielded in order. With ``overlap`` (default: on CUDA) the next
        run's input is read and normalised, and the previous run's peaks are found, in two background threads
        while the model predicts, so the device does not wait for the disk or for the CPU; at most one input
        ahead and one run's probabilities behind are held. On CPU the threads would share the cores the model
        uses and hold twice the memory, so it is off there. Errors are raised here, in the caller's thread, and
        the work still queued is dropped."""
        if not (self.device.type == "cuda" if overlap is None else overlap):
            for run in runs:
                yield (run, *self.predict_run(dataset, run, thresholds, progress))
            return
        runs = list(runs)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="czii-prefetch")
        try:
            loading = pool.submit(self._load, dataset, runs[0]) if runs else None
            behind = None  # (run, facts, future of its peaks)
            for i, run in enumerate(runs):
                try:
                    plan, volume_czyx, spacing_zyx_A, load_s = loading.result()
                except BaseException:
                    if behind is not None:  # the run before is finished: hand it over (and stored) first
                        yield _finished(*behind)
                    raise
                loading = pool.submit(self._load, dataset, runs[i + 1]) if i + 1 < len(runs) else None
                t0 = time.perf_counter()
                probs = self.probabilities(volume_czyx, progress)
                predict_s = time.perf_counter() - t0
                if behind is not None:
                    yield _finished(*behind)
                behind = (run, (volume_czyx.shape, spacing_zyx_A, plan, load_s, predict_s),
                          pool.submit(self._peaks, run, probs, spacing_zyx_A, thresholds))
                del probs, volume_czyx
            if behind is not None:
                yield _finished(*behind)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, dataset: Dataset | TomogramFolder, run: str):
        t0 = time.perf_counter()
        plan = self.plan(dataset, run)
        volume_czyx, spacing_zyx_A = self.load_input(dataset, run, plan)
        return plan, volume_czyx, spacing_zyx_A, time.perf_counter() - t0

    def _peaks(self, run: str, probs_czyx: np.ndarray, spacing_zyx_A, thresholds) -> tuple[pd.DataFrame, float]:
        t0 = time.perf_counter()
        picks = self.picks(probs_czyx, spacing_zyx_A, run, thresholds)
        return picks, time.perf_counter() - t0


def _run_info(shape_czyx: tuple[int, ...], spacing_zyx_A, plan: InputPlan, seconds: tuple[float, float, float],
              picks: pd.DataFrame) -> dict[str, Any]:
    return {
        "shape_zyx": [int(s) for s in shape_czyx[1:]],
        "spacing_zyx_A": [float(s) for s in spacing_zyx_A],
        "input": plan.to_dict(),
        "seconds": dict(zip(("load", "predict", "peaks"), seconds)),
        "n_picks": len(picks),
    }


def _finished(run: str, facts: tuple, peaks) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    shape_czyx, spacing_zyx_A, plan, load_s, predict_s = facts
    picks, peaks_s = peaks.result()
    return run, picks, _run_info(shape_czyx, spacing_zyx_A, plan, (load_s, predict_s, peaks_s), picks)
