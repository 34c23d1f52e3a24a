"""Accuracy at a fixed wall-clock budget, on simulated tomograms the model never saw.

    .venv/bin/python benchmarks/accuracy.py --config configs/cpu_tiny.yaml --minutes 5 [--folds 2] [--no-full]

1. Simulates a training set (5 runs of 64×192×192, seed 101) and held-out test sets with disjoint
   seeds and other settings: ``same`` (8 runs, the training settings), ``low_snr`` (8, half the SNR),
   ``shifted`` (8, particle contrast × 0.8, an ice thickness ramp of ± 1 std, intensity scale
   ~1e-5 with an offset of 20–60 × the scale), ``crowded`` (4, twice the particle density) and
   ``full`` (one 184×630×630 tomogram, the real size at level 0, real density). Each is simulated
   once into ``--work`` and reused while its settings and the simulator version hold.
2. Trains ``--folds`` folds of the config (the training runs split in order) under a total budget of
   ``--minutes`` (``train.max_minutes`` = minutes / folds per fold; data loading and the
   out-of-fold pass come on top and are timed apart), tunes the thresholds on the out-of-fold
   candidates (``czii tune``) and predicts every test set with the fold ensemble (``czii infer``).
3. Predicts every test set once at a low threshold and scores it at the tuned thresholds (the
   per-class table) and at the default ones (a row), so the table says whether tuning helped.
4. Prints and writes the weighted F4 and the per-class table of every test set, the train,
   tune and inference seconds and the machine → ``benchmarks/results/accuracy_<config>_<N>min.md``
   (+ ``.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from czii.config import load_config, with_data_paths
from czii.data import load_solution
from czii.simulate import SIMULATOR_VERSION, SimConfig, simulate_dataset
from czii.inference import run_inference
from czii.metric import score
from czii.postprocess.thresholds import tune_run_dir
from czii.predictor import DEFAULT_THRESHOLDS, save_thresholds
from czii.submission import read_scored_submission
from czii.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
CANDIDATE_THRESHOLD = 0.01  # test sets are predicted once at this; each threshold policy then filters
TRAIN = {"n_train": 5, "n_test": 0, "seed": 101}
TEST_SETS = {
    "same": {"n_train": 0, "n_test": 8, "seed": 9001},
    "low_snr": {"n_train": 0, "n_test": 8, "seed": 9002, "snr": 0.5},
    "shifted": {
        "n_train": 0, "n_test": 8, "seed": 9005, "contrast": 0.8, "ice_gradient": 1.0,
        "intensity_scale_log10": (-5.5, -4.5), "intensity_offset": (20.0, 60.0),
    },
    "crowded": {"n_train": 0, "n_test": 4, "seed": 9003, "density_scale": 6.0},
    "full": {"n_train": 0, "n_test": 1, "seed": 9004, "shape_zyx": (184, 630, 630), "density_scale": 1.0},
}


def _simulate(folder: Path, overrides: dict) -> Path:
    """``folder`` holding the "small" preset with ``overrides`` (simulated once, then reused while its config holds)."""
    config = SimConfig.preset("small", **overrides)
    recorded = folder / "simulation.json"
    previous = json.loads(recorded.read_text()) if recorded.is_file() else {}
    if previous.get("config") != config.to_dict() or previous.get("simulator_version") != SIMULATOR_VERSION:
        simulate_dataset(folder, config, overwrite=True, progress=False)
    return folder


def _kept(candidates, thresholds: dict[str, float]):
    """The candidates at or above their class's threshold (maxpool peaks: exactly what inference keeps)."""
    keep = candidates["score"].to_numpy() >= candidates["particle_type"].map(thresholds).to_numpy()
    return candidates[keep].drop(columns="score")


def fold_layout(runs: list[str], n_folds: int, holdout: int = 0) -> list[list[str]]:
    """The held-out runs of each fold (each fold's model trains on the others): ``holdout`` > 0 holds
    out runs ``k*holdout .. k*holdout+holdout-1`` in fold k (the rest are never held out); 0 holds out
    every run once, round-robin; one fold without ``holdout`` holds out the last run."""
    if n_folds < 1 or holdout < 0:
        raise SystemExit(f"--folds must be ≥ 1 and --holdout ≥ 0 (got {n_folds}, {holdout})")
    if holdout:
        if n_folds * holdout >= len(runs):
            raise SystemExit(f"--folds {n_folds} × --holdout {holdout} holds out {n_folds * holdout} of the "
                             f"{len(runs)} training runs: every fold needs a run to train on that no fold holds out")
        return [runs[k * holdout:(k + 1) * holdout] for k in range(n_folds)]
    if n_folds > len(runs):
        raise SystemExit(f"--folds {n_folds} exceeds the {len(runs)} training runs")
    return [runs[k::n_folds] for k in range(n_folds)] if n_folds > 1 else [runs[-1:]]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cpu_tiny.yaml")
    parser.add_argument("--minutes", type=float, default=5.0, help="total training budget (all folds)")
    parser.add_argument("--folds", type=int, default=2,
                        help="folds over the training runs (1: one model on all runs but the last, tuned on it)")
    parser.add_argument("--holdout", type=int, default=0, metavar="N",
                        help="runs each fold holds out (fold k: runs k*N..k*N+N-1, the rest train); "
                             "0 = every run held out once, round-robin")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench_accuracy")
    parser.add_argument("--no-full", action="store_true", help="skip the 184×630×630 test tomogram")
    parser.add_argument("--name", help="results file stem (default: accuracy_<config>_<N>min)")
    args = parser.parse_args()

    started = time.perf_counter()
    train_sim = _simulate(args.work / "sim_train", TRAIN)
    tests = {name: _simulate(args.work / f"sim_{name}", over) for name, over in TEST_SETS.items()
             if not (args.no_full and name == "full")}
    sim_seconds = time.perf_counter() - started

    runs = sorted(p.name for p in (train_sim / "kaggle" / "train" / "static" / "ExperimentRuns").iterdir())
    folds = fold_layout(runs, args.folds, args.holdout)
    stem = args.name or f"accuracy_{Path(args.config).stem}_{args.minutes:g}min"
    config = with_data_paths(load_config(args.config, [
        *args.overrides, f"data.folds={json.dumps(folds)}", f"train.max_minutes={args.minutes / args.folds}",
    ]), [train_sim / "copick_config.json"])
    run_dir = args.work / "runs" / stem
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: remove it or pass another --name")
    t0 = time.perf_counter()
    for k in range(args.folds):
        train(config, fold=k, out_dir=run_dir, device="cpu")
    train_seconds = time.perf_counter() - t0
    histories = [json.loads((run_dir / f"fold{k}" / "status.json").read_text()) for k in range(args.folds)]
    t0 = time.perf_counter()
    tuned = tune_run_dir(run_dir)
    tune_seconds = time.perf_counter() - t0

    low = args.work / "runs" / f"{stem}_low_thresholds.json"
    classes = list(tuned.thresholds)
    save_thresholds(low, {c: CANDIDATE_THRESHOLD for c in classes}, report={})
    results = {}
    for name, folder in tests.items():
        t0 = time.perf_counter()
        out = args.work / "submissions" / f"{stem}_{name}.csv"
        run_inference(run_dir, folder / "kaggle", split="test", out_csv=out, device="cpu", progress=False,
                      overwrite=True, thresholds=low)
        seconds = time.perf_counter() - t0
        candidates = read_scored_submission(out)
        solution = load_solution(folder / "kaggle" / "solution.csv")
        reports = {policy: score(solution, _kept(candidates, thr))
                   for policy, thr in (("tuned", tuned.thresholds), ("default", DEFAULT_THRESHOLDS))}
        report = reports["tuned"]
        results[name] = {"f4": report.score, "f4_default": reports["default"].score, "seconds": seconds,
                         "classes": report.to_dict()["classes"]}
        print(f"{name:8s} F4 {report.score:.3f} (default thresholds {reports['default'].score:.3f})  ({seconds:.0f} s)")

    machine = (f"{_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), no GPU")
    doc = {"config": args.config, "overrides": args.overrides, "minutes": args.minutes, "folds": args.folds,
           "held_out_runs": folds, "machine": machine, "epochs_per_fold": [h["done_epochs"] for h in histories],
           "simulate_seconds": sim_seconds, "train_seconds": train_seconds, "tune_seconds": tune_seconds,
           "oof": {"default": tuned.score_default, "cross_fitted": tuned.score_cross_fitted,
                   "in_sample": tuned.score_in_sample},
           "spec_hash": tuned.spec_hash, "tests": results}
    out_dir = ROOT / "benchmarks" / "results"
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    names = list(results)
    classes = list(next(iter(results.values()))["classes"])
    lines = [
        f"# {stem}: `{args.config}` {' '.join(args.overrides)}, {args.minutes:g} min of training on {machine}",
        "",
        f"{args.folds} folds holding out {folds}, epochs per fold {doc['epochs_per_fold']}; "
        f"train {train_seconds:.0f} s (data loading "
        f"and the out-of-fold pass included), tune {tune_seconds:.1f} s; out-of-fold F4 default "
        f"{tuned.score_default:.3f}, cross-fitted {tuned.score_cross_fitted or float('nan'):.3f}.",
        "",
        "| test set | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| **weighted F4** | " + " | ".join(f"**{results[n]['f4']:.3f}**" for n in names) + " |",
        "| weighted F4 at the default thresholds (0.2) | "
        + " | ".join(f"{results[n]['f4_default']:.3f}" for n in names) + " |",
        *[f"| {c} | " + " | ".join(f"{results[n]['classes'][c]['f_beta']:.3f}" for n in names) + " |"
          for c in classes],
        "| inference s | " + " | ".join(f"{results[n]['seconds']:.0f}" for n in names) + " |",
        "",
    ]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
