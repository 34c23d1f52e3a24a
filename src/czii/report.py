"""Figures of an experiment, rebuilt from saved outputs only (no model is run here).

``build_report(run_dir)`` writes PNGs to ``<run_dir>/report/`` from what the run directory
already holds:

- ``threshold_curves.png``: per class, F4, precision and recall against the threshold, from
  :func:`czii.postprocess.thresholds.class_curves` on the pooled out-of-fold candidates
  (``fold*/oof/``), with the tuned threshold of ``thresholds.json`` (solid) and each fold's
  cross-fitted threshold (dotted) marked. A value at threshold ``t`` counts the candidates
  with ``score >= t``, so the curves are drawn as steps that hold each value up to its score.
- ``training_curves.png``: training loss and validation score per epoch, one line per fold
  (``fold*/history.csv``).
- ``overlay.png``: a slab of one held-out tomogram (mean over
  ``2 * SLAB_HALF_THICKNESS_VOX + 1`` z-slices, centred where most truth picks lie) with truth
  picks found (white circle) or missed (yellow square) and predicted picks matched (green +) or
  unmatched (red x), next to each class's heatmap (max over the slab) with that class's picks.
  Its inputs are the compact ``report/overlay.npz`` (:class:`OverlaySlab`) that ``czii
  experiment`` saves after predicting the held-out run.

A figure whose inputs are absent (e.g. no ``overlay.npz`` in a run directory made by ``czii
train`` + ``czii tune``) is skipped and named in :attr:`Report.skipped`. Every file is written
to a temporary name and renamed into place. Figures are drawn on ``matplotlib.figure.Figure``
(Agg canvas), never through pyplot, so no global backend state is touched.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from czii.errors import DataError
from czii.geometry import xyz_A_to_zyx_vox
from czii.io import atomic_write_bytes
from czii.particles import get_particle
from czii.picks import XYZ, check_picks_table, neighbours
from czii.postprocess.thresholds import class_curves, read_oof
from czii.predictor import load_thresholds_doc
from czii.rundir import RunDir

OVERLAY_FILE = "overlay.npz"
THRESHOLD_FIGURE = "threshold_curves.png"
TRAINING_FIGURE = "training_curves.png"
OVERLAY_FIGURE = "overlay.png"
SLAB_HALF_THICKNESS_VOX = 6


@dataclass
class Report:
    """Figures written and figures skipped (figure file name → why)."""

    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- files


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- threshold curves


def plot_threshold_curves(
    curves: Mapping[str, pd.DataFrame],
    thresholds: Mapping[str, float],
    path: str | os.PathLike,
    *,
    fold_thresholds: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "",
) -> Path:
    """One panel per class of ``curves`` (:func:`class_curves` tables): F4, precision, recall
    against threshold, the chosen ``thresholds`` (solid line) and per-fold ones (dotted)."""
    names = list(curves)
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        curve = curves[name]
        chosen = thresholds[name]
        particle = get_particle(name)
        n_truth = int(curve["tp"].iat[0] + curve["fn"].iat[0]) if len(curve) else 0
        f_at = curve.loc[curve["threshold"] >= chosen, "f_beta"]
        f_text = f"{f_at.iat[0]:.3f}" if len(f_at) else "0"
        ax.set_title(f"{name} (w {particle.weight:g}, {n_truth} truth)\nF4 {f_text} at {chosen:.3f}", fontsize=9)
        if len(curve):
            # below the lowest score every candidate is kept; above the highest none is (all values 0)
            t = np.concatenate([[0.0], curve["threshold"].to_numpy(), [1.0]])
            for column, colour, width in (("f_beta", "black", 2.0), ("precision", "tab:blue", 1.2),
                                          ("recall", "tab:orange", 1.2)):
                v = curve[column].to_numpy()
                ax.plot(t, np.concatenate([v[:1], v, [0.0]]), drawstyle="steps-pre", color=colour, lw=width,
                        label="F4" if column == "f_beta" else column)
        else:
            ax.text(0.5, 0.5, "no candidates", ha="center", va="center", transform=ax.transAxes)
        for k, fold_thr in enumerate((fold_thresholds or {}).values()):
            ax.axvline(fold_thr[name], color="tab:gray", ls=":", lw=1,
                       label="per-fold (cross-fitted)" if k == 0 else None)
        ax.axvline(chosen, color="tab:red", lw=1.5, label="chosen")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("threshold")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- training curves


def plot_training_curves(histories: Mapping[str, pd.DataFrame], path: str | os.PathLike, *, title: str = "") -> Path:
    """Training loss and validation score per epoch, one line per fold (``history.csv`` tables)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    for fold, history in histories.items():
        line, = ax_loss.plot(history["epoch"], history["train_loss"], marker=".", label=fold)
        val = history.dropna(subset=["val_score"])
        ax_val.plot(val["epoch"], val["val_score"], marker="o", color=line.get_color(), label=fold)
        if len(val):
            best = val.loc[val["val_score"].idxmax()]
            ax_val.plot(best["epoch"], best["val_score"], marker="*", ms=14, color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_val.set(xlabel="epoch", ylabel="score at val.thresholds", title="validation score (★ best checkpoint)",
               ylim=(-0.02, 1.02))
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- overlay


@dataclass
class OverlaySlab:
    """What the overlay figure needs: 2-D slabs of one held-out run and its picks (Å)."""

    run: str
    fold: str
    z_range_vox: tuple[int, int]  # [start, stop) of the slab
    spacing_zyx_A: tuple[float, float, float]
    classes: tuple[str, ...]
    tomogram_yx: np.ndarray  # float32, mean of the first input channel over the slab
    heatmaps_cyx: np.ndarray  # float16, max of each class probability over the slab
    truth: pd.DataFrame  # particle_type, x, y, z of the whole run
    picks: pd.DataFrame  # particle_type, x, y, z, score kept at ``thresholds``
    thresholds: dict[str, float]
    thresholds_origin: str

    def save(self, path: str | os.PathLike) -> Path:
        """Compressed ``.npz`` (no pickled objects), written atomically."""
        arrays = {
            "run": np.array(self.run), "fold": np.array(self.fold),
            "z_range_vox": np.asarray(self.z_range_vox, dtype=np.int64),
            "spacing_zyx_A": np.asarray(self.spacing_zyx_A, dtype=np.float64),
            "classes": np.array(self.classes, dtype=str),
            "tomogram_yx": self.tomogram_yx.astype(np.float32),
            "heatmaps_cyx": self.heatmaps_cyx.astype(np.float16),
            "truth_class": self.truth["particle_type"].to_numpy(dtype=str),
            "truth_xyz_A": self.truth[list(XYZ)].to_numpy(np.float64).reshape(-1, 3),
            "picks_class": self.picks["particle_type"].to_numpy(dtype=str),
            "picks_xyz_A": self.picks[list(XYZ)].to_numpy(np.float64).reshape(-1, 3),
            "picks_score": self.picks["score"].to_numpy(np.float64),
            "thresholds": np.array(json.dumps(self.thresholds)),
            "thresholds_origin": np.array(self.thresholds_origin),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> OverlaySlab:
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
            truth = pd.DataFrame(a["truth_xyz_A"], columns=list(XYZ))
            truth.insert(0, "particle_type", a["truth_class"].astype(str))
            picks = pd.DataFrame(a["picks_xyz_A"], columns=list(XYZ))
            picks.insert(0, "particle_type", a["picks_class"].astype(str))
            picks["score"] = a["picks_score"]
            return cls(
                run=str(a["run"]), fold=str(a["fold"]),
                z_range_vox=(int(a["z_range_vox"][0]), int(a["z_range_vox"][1])),
                spacing_zyx_A=tuple(float(s) for s in a["spacing_zyx_A"]),
                classes=tuple(str(c) for c in a["classes"]),
                tomogram_yx=a["tomogram_yx"], heatmaps_cyx=a["heatmaps_cyx"], truth=truth, picks=picks,
                thresholds=json.loads(str(a["thresholds"])), thresholds_origin=str(a["thresholds_origin"]),
            )
        except (OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable overlay file ({type(exc).__name__}: {exc}); "
                            "re-run `czii experiment` to write it") from None


def overlay_slab(
    volume_zyx: np.ndarray,
    probs_czyx: np.ndarray,
    spacing_zyx_A: Sequence[float],
    classes: Sequence[str],
    truth: pd.DataFrame,
    picks: pd.DataFrame,
    *,
    run: str,
    fold: str,
    thresholds: Mapping[str, float],
    thresholds_origin: str,
    half_thickness_vox: int = SLAB_HALF_THICKNESS_VOX,
) -> OverlaySlab:
    """The slab of ``volume_zyx`` around the z-centre with the most truth picks within ``half_thickness_vox``
    (the middle one of tied centres)."""
    n_z = volume_zyx.shape[0]
    z_vox = xyz_A_to_zyx_vox(truth[list(XYZ)].to_numpy(np.float64).reshape(-1, 3), spacing_zyx_A)[:, 0]
    counts = np.array([(np.abs(z_vox - c) <= half_thickness_vox).sum() for c in range(n_z)])
    best = np.flatnonzero(counts == counts.max())
    centre = int(best[len(best) // 2])  # the middle of the tied centres (all of them when there is no truth)
    start, stop = max(0, centre - half_thickness_vox), min(n_z, centre + half_thickness_vox + 1)
    return OverlaySlab(
        run=run, fold=fold, z_range_vox=(start, stop), spacing_zyx_A=tuple(float(s) for s in spacing_zyx_A),
        classes=tuple(classes),
        tomogram_yx=volume_zyx[start:stop].mean(axis=0).astype(np.float32),
        heatmaps_cyx=probs_czyx[:, start:stop].max(axis=1).astype(np.float16),
        truth=truth[["particle_type", *XYZ]].reset_index(drop=True),
        picks=picks[["particle_type", *XYZ, "score"]].reset_index(drop=True),
        thresholds=dict(thresholds), thresholds_origin=thresholds_origin,
    )


def match_flags(truth: pd.DataFrame, picks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(truth found, pick matched) as the metric decides them (:func:`czii.picks.neighbours`): same
    experiment and class, within 0.5 × radius (inclusive)."""
    near = neighbours(check_picks_table(truth, "truth", error=DataError),
                      check_picks_table(picks, "picks", error=DataError))
    found = np.array([len(n) > 0 for n in near], dtype=bool)
    matched = np.zeros(len(picks), dtype=bool)
    for n in near:
        matched[n] = True
    return found, matched


def _draw_picks(ax, slab: OverlaySlab, truth: pd.DataFrame, found: np.ndarray, picks: pd.DataFrame,
                matched: np.ndarray, legend: bool) -> None:
    """Markers of the picks whose z lies inside the slab, at their (x, y) voxel position."""
    lo, hi = slab.z_range_vox

    def inside(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        zyx = xyz_A_to_zyx_vox(df[list(XYZ)].to_numpy(np.float64).reshape(-1, 3), slab.spacing_zyx_A)
        keep = (zyx[:, 0] >= lo - 0.5) & (zyx[:, 0] < hi - 0.5)
        return keep, zyx

    t_in, t_zyx = inside(truth)
    p_in, p_zyx = inside(picks)
    hollow = {"s": 70, "facecolors": "none", "lw": 1.5}
    styles = (
        (t_zyx[t_in & found], {"marker": "o", "edgecolors": "white", **hollow}, "truth found"),
        (t_zyx[t_in & ~found], {"marker": "s", "edgecolors": "yellow", **hollow}, "truth missed"),
        (p_zyx[p_in & matched], {"marker": "+", "s": 60, "c": "lime", "lw": 1.5}, "prediction matched"),
        (p_zyx[p_in & ~matched], {"marker": "x", "s": 40, "c": "red", "lw": 1.5}, "prediction unmatched"),
    )
    for zyx, style, label in styles:
        ax.scatter(zyx[:, 2], zyx[:, 1], label=f"{label} ({len(zyx)})", **style)
    if legend:
        ax.legend(fontsize=7, loc="upper right", framealpha=0.7)


def plot_overlay(slab: OverlaySlab, path: str | os.PathLike) -> Path:
    """Tomogram slab with every class's picks, then one heatmap panel per class with its picks."""
    found, matched = match_flags(slab.truth.assign(experiment=slab.run), slab.picks.assign(experiment=slab.run))
    n_panels = 1 + len(slab.classes)
    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.2 * ncols, 4.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    lo, hi = slab.z_range_vox
    vmin, vmax = np.percentile(slab.tomogram_yx, [1, 99])
    axes[0].imshow(slab.tomogram_yx, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    _draw_picks(axes[0], slab, slab.truth, found, slab.picks, matched, legend=True)
    axes[0].set_title(f"{slab.run} ({slab.fold} held out), z {lo}–{hi - 1}: all classes", fontsize=9)
    for ax, (c, name) in zip(axes[1:], enumerate(slab.classes)):
        image = ax.imshow(slab.heatmaps_cyx[c].astype(np.float32), cmap="magma", vmin=0, vmax=1,
                          interpolation="nearest")
        t_sel = (slab.truth["particle_type"] == name).to_numpy()
        p_sel = (slab.picks["particle_type"] == name).to_numpy()
        _draw_picks(ax, slab, slab.truth[t_sel], found[t_sel], slab.picks[p_sel], matched[p_sel], legend=False)
        ax.set_title(f"{name}: max probability, threshold {slab.thresholds.get(name, float('nan')):.3f}", fontsize=9)
    fig.colorbar(image, ax=axes[1:n_panels].tolist(), shrink=0.6, label="probability")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(f"held-out overlay; picks at {slab.thresholds_origin} thresholds")
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- the report


def build_report(run_dir: str | os.PathLike) -> Report:
    """Rebuild every figure of ``run_dir`` from its saved outputs into ``run_dir/report/``."""
    rd = RunDir(run_dir)
    run_dir = rd.path
    if not rd.thresholds.is_file():
        raise DataError(f"{rd.thresholds} not found: run `czii experiment` (or `czii tune --run-dir {run_dir}`) "
                        "before building the report")
    doc = load_thresholds_doc(rd.thresholds)
    thresholds, fold_thresholds = doc["thresholds"], doc.get("thresholds_by_fold") or {}
    out = rd.report
    report = Report()

    oof = read_oof(run_dir)
    curves = class_curves(oof.candidates, oof.truth, list(thresholds))
    report.written.append(plot_threshold_curves(curves, thresholds, out / THRESHOLD_FIGURE,
                                                fold_thresholds=fold_thresholds, title=f"{run_dir.name}: out-of-fold"))

    histories = {p.parent.name: pd.read_csv(p) for p in sorted(run_dir.glob("fold*/history.csv"))}
    if histories:
        report.written.append(plot_training_curves(histories, out / TRAINING_FIGURE, title=run_dir.name))
    else:
        report.skipped[TRAINING_FIGURE] = f"no fold*/history.csv in {run_dir}"

    overlay = out / OVERLAY_FILE
    if overlay.is_file():
        report.written.append(plot_overlay(OverlaySlab.load(overlay), out / OVERLAY_FIGURE))
    else:
        report.skipped[OVERLAY_FIGURE] = f"{overlay} not found (`czii experiment` writes it)"
    return report
