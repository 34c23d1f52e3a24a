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

Out of family (``--test-family C [--train-families A B] [--family-seed S]``): the sets are instead the
simulator's families (:data:`czii.simulate.FAMILIES`, :mod:`family_sets`): 3 training runs of each
training family, ``in_family`` = 3 unseen runs of each training family, ``out_of_family`` = 6 runs of
the test family, whose particle models, decoys and imaging no training run had. With
``--topcup-python`` TopCUP is trained on the same runs (its own validation run and thresholds) and
scored beside on the same sets (:mod:`peer_topcup`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from family_sets import family_sets, simulated
from peer_topcup import run_topcup

from czii.config import load_config, with_data_paths
from czii.data import load_solution
from czii.simulate import FAMILIES, SimConfig
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


def _default_sets(work: Path, no_full: bool) -> tuple[Path, dict[str, Path]]:
    """The training set's copick config and the Kaggle folder of each test set of the default benchmark."""
    train = simulated(work / "sim_train", SimConfig.preset("small", **TRAIN)) / "copick_config.json"
    tests = {name: simulated(work / f"sim_{name}", SimConfig.preset("small", **over)) / "kaggle"
             for name, over in TEST_SETS.items() if not (no_full and name == "full")}
    return train, tests


def _kept(candidates, thresholds: dict[str, float]):
    """The candidates at or above their class's threshold (maxpool peaks: exactly what inference keeps)."""
    keep = candidates["score"].to_numpy() >= candidates["particle_type"].map(thresholds).to_numpy()
    return candidates[keep].drop(columns="score")


def fold_layout(runs: list[str], n_folds: int, holdout: int = 0) -> list[list[str]]:
    """The held-out runs of each fold (each fold's model trains on the others): ``holdout`` > 0 holds
    out runs ``k*holdout .. k*holdout+holdout-1`` in fold k (the blocks may cover every run: fold k then
    holds out, say, family k); 0 holds out
    every run once, round-robin; one fold without ``holdout`` holds out the last run."""
    if n_folds < 1 or holdout < 0:
        raise SystemExit(f"--folds must be ≥ 1 and --holdout ≥ 0 (got {n_folds}, {holdout})")
    if holdout:
        if n_folds * holdout > len(runs) or n_folds < 2 and holdout >= len(runs):
            raise SystemExit(f"--folds {n_folds} × --holdout {holdout} holds out {n_folds * holdout} of the "
                             f"{len(runs)} training runs: the held-out blocks must fit and leave runs to train on")
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


def _scores(solution, candidates, thresholds: dict[str, dict[str, float]]) -> dict:
    """Weighted F4 and the per-class table of ``candidates`` at each named threshold policy."""
    reports = {policy: score(solution, _kept(candidates, thr)) for policy, thr in thresholds.items()}
    return {policy: {"f4": r.score, "classes": r.to_dict()["classes"]} for policy, r in reports.items()}


def _cell(row: dict) -> str:
    return f"{row['f_beta']:.3f} ({row['tp']}/{row['tp'] + row['fn']}, {row['fp']} fp)"


def _table(results: dict, columns: list[tuple[str, str]], key: str = "tuned") -> list[str]:
    """Markdown rows: weighted F4 and per class for each (test set, method) column."""
    first = results[columns[0][0]][columns[0][1]][key]
    classes = list(first["classes"])
    cell = [results[t][m][key] for t, m in columns]
    return [
        "| | " + " | ".join(f"{t} · {m}" for t, m in columns) + " |",
        "|---|" + "---|" * len(columns),
        "| **weighted F4** | " + " | ".join(f"**{c['f4']:.3f}**" for c in cell) + " |",
        *[f"| {name} | " + " | ".join(_cell(c["classes"][name]) for c in cell) + " |" for name in classes],
    ]


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
    parser.add_argument("--name",
                        help="results file stem (default: accuracy_<config>_<N>min, + _oof<family>_s<seed>)")
    parser.add_argument("--test-family", choices=list(FAMILIES),
                        help="out-of-family benchmark: test on this simulator family, train on the others")
    parser.add_argument("--train-families", nargs="+", choices=list(FAMILIES), help="default: every other family")
    parser.add_argument("--family-seed", type=int, default=1, help="seed of the family datasets")
    parser.add_argument("--topcup-python", type=Path, help="a Python with topcup installed: run TopCUP beside")
    parser.add_argument("--topcup-helpers", type=Path, default=ROOT.parent / "shared" / "peers" / "topcup",
                        help="the folder of TopCUP's CPU helpers (topcup_cpu.py, mk_config.py, …)")
    parser.add_argument("--topcup-epochs", type=int, default=7)
    args = parser.parse_args()

    started = time.perf_counter()
    if args.test_family:
        train_families = args.train_families or [f for f in FAMILIES if f != args.test_family]
        train_data, tests = family_sets(args.work, train_families, args.test_family, args.family_seed)
        train_static = train_data / "train" / "static" / "ExperimentRuns"
    else:
        train_data, tests = _default_sets(args.work, args.no_full)
        train_static = train_data.parent / "kaggle" / "train" / "static" / "ExperimentRuns"
    sim_seconds = time.perf_counter() - started

    runs = sorted(p.name for p in train_static.iterdir())
    folds = fold_layout(runs, args.folds, args.holdout)
    family_part = f"_oof{args.test_family}_s{args.family_seed}" if args.test_family else ""
    stem = args.name or f"accuracy_{Path(args.config).stem}_{args.minutes:g}min{family_part}"
    config = with_data_paths(load_config(args.config, [
        *args.overrides, f"data.folds={json.dumps(folds)}", f"train.max_minutes={args.minutes / args.folds}",
    ]), [train_data])
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
    results: dict[str, dict] = {}
    for name, kaggle in tests.items():
        t0 = time.perf_counter()
        out = args.work / "submissions" / f"{stem}_{name}.csv"
        run_inference(run_dir, kaggle, split="test", out_csv=out, device="cpu", progress=False,
                      overwrite=True, thresholds=low)
        seconds = time.perf_counter() - t0
        solution = load_solution(kaggle / "solution.csv")
        scored = _scores(solution, read_scored_submission(out),
                         {"tuned": tuned.thresholds, "default": DEFAULT_THRESHOLDS})
        results[name] = {"czii": {**scored, "seconds": seconds}}
        print(f"{name:13s} F4 {scored['tuned']['f4']:.3f} (default thresholds {scored['default']['f4']:.3f})  "
              f"({seconds:.0f} s)")

    peer = None
    if args.topcup_python:
        objects = next(p for p in (args.work / "sims").glob("*/copick_config.json")) if args.test_family else train_data
        peer = run_topcup(args.topcup_python, args.topcup_helpers, objects, train_data if args.test_family
                          else train_data.parent / "kaggle", tests, args.work / "topcup" / stem, args.topcup_epochs)
        for name, kaggle in tests.items():
            picks = read_scored_submission(Path(peer["tests"][name]["submission"]))
            picks["score"] = 1.0  # TopCUP's own thresholds are applied already
            scored = _scores(load_solution(kaggle / "solution.csv"), picks, {"tuned": {c: 0.0 for c in classes}})
            results[name]["topcup"] = {**scored, "seconds": peer["tests"][name]["seconds"]}
            print(f"{name:13s} TopCUP F4 {scored['tuned']['f4']:.3f}")

    machine = (f"{_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
               f"({torch.get_num_threads()} threads), no GPU")
    doc = {"config": args.config, "overrides": args.overrides, "minutes": args.minutes, "folds": args.folds,
           "test_family": args.test_family, "family_seed": args.family_seed if args.test_family else None,
           "held_out_runs": folds, "machine": machine, "epochs_per_fold": [h["done_epochs"] for h in histories],
           "simulate_seconds": sim_seconds, "train_seconds": train_seconds, "tune_seconds": tune_seconds,
           "oof": {"default": tuned.score_default, "cross_fitted": tuned.score_cross_fitted,
                   "in_sample": tuned.score_in_sample},
           "spec_hash": tuned.spec_hash, "tests": results,
           "topcup": {k: v for k, v in peer.items() if k != "tests"} if peer else None}
    out_dir = ROOT / "benchmarks" / "results"
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    methods = ["czii"] + (["topcup"] if peer else [])
    columns = [(t, m) for t in results for m in methods]
    family_line = (f"Trained on families {', '.join(train_families)} (family seed {args.family_seed}), "
                   f"out-of-family = family {args.test_family}. " if args.test_family else "")
    lines = [
        f"# {stem}: `{args.config}` {' '.join(args.overrides)}, {args.minutes:g} min of training on {machine}",
        "",
        f"{family_line}{args.folds} folds holding out {folds}, epochs per fold {doc['epochs_per_fold']}; "
        f"train {train_seconds:.0f} s (data loading "
        f"and the out-of-fold pass included), tune {tune_seconds:.1f} s; out-of-fold F4 default "
        f"{tuned.score_default:.3f}, cross-fitted {tuned.score_cross_fitted or float('nan'):.3f}."
        + (f" TopCUP: resnet10, {peer['epochs']} epochs, {peer['train_seconds']:.0f} s of training." if peer else ""),
        "",
        "F-beta per class (found/particles, false picks) at the tuned thresholds:",
        "",
        *_table(results, columns),
        "| weighted F4 at the default thresholds (0.2) | " + " | ".join(
            f"{results[t]['czii']['default']['f4']:.3f}" if m == "czii" else "–" for t, m in columns) + " |",
        "| inference s | " + " | ".join(f"{results[t][m]['seconds']:.0f}" for t, m in columns) + " |",
        "",
    ]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
