"""Datasets of the out-of-family benchmark: training runs from some simulator families, test runs from
the same families (in-family) and from one never trained on (out-of-family).

Each family's runs are simulated apart (``SimConfig.preset("small", family=F)``, run names prefixed
``F_``) and joined into one Kaggle-layout folder of symbolic links, with one ``solution.csv``, that this
project and TopCUP both read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from czii.simulate import FAMILIES, SIMULATOR_VERSION, SimConfig, simulate_dataset
from czii.submission import SUBMISSION_COLUMNS

TRAIN_RUNS_PER_FAMILY = 3
TEST_RUNS_PER_FAMILY = 3  # in-family test runs per training family
OUT_OF_FAMILY_RUNS = 6
PRESET = "small"


def simulated(folder: Path, config: SimConfig) -> Path:
    """``folder`` holding ``config`` (simulated once, then reused while its config and the simulator hold)."""
    recorded = folder / "simulation.json"
    previous = json.loads(recorded.read_text()) if recorded.is_file() else {}
    if previous.get("config") != config.to_dict() or previous.get("simulator_version") != SIMULATOR_VERSION:
        simulate_dataset(folder, config, overwrite=True, progress=False)
    return folder


def _union(out: Path, split: str, sources: list[Path]) -> Path:
    """A Kaggle folder at ``out`` whose ``split`` runs link to those of ``sources`` (their solutions joined)."""
    if out.exists():
        shutil.rmtree(out)
    solutions = []
    for source in sources:
        for tree in ("static", "overlay"):
            runs = source / "kaggle" / split / tree / "ExperimentRuns"
            if not runs.is_dir():
                continue
            target = out / split / tree / "ExperimentRuns"
            target.mkdir(parents=True, exist_ok=True)
            for run in sorted(runs.iterdir()):
                (target / run.name).symlink_to(run.resolve(), target_is_directory=True)
        if split == "test":
            solutions.append(pd.read_csv(source / "kaggle" / "solution.csv"))
    if solutions:
        solution = pd.concat(solutions, ignore_index=True)
        solution["id"] = range(len(solution))
        solution[list(SUBMISSION_COLUMNS)].to_csv(out / "solution.csv", index=False)
    return out


def family_sets(work: Path, train_families: list[str], test_family: str, seed: int) -> tuple[Path, dict[str, Path]]:
    """(training Kaggle folder, {"in_family": …, "out_of_family": …} test Kaggle folders) for ``seed``.

    Seeds: family F of seed s trains on seed 1000·s + 10·i and tests on 1000·s + 10·i + 1 (i its index in
    :data:`FAMILIES`), so no two sets share a seed and every seed gives new scenes.
    """
    unknown = [f for f in [*train_families, test_family] if f not in FAMILIES]
    if unknown or test_family in train_families or not train_families:
        raise SystemExit(f"families: train on some of {list(FAMILIES)} and test on another one "
                         f"(got train {train_families}, test {test_family!r})")
    index = {f: i for i, f in enumerate(FAMILIES)}

    def one(family: str, split: str) -> Path:
        n_test = OUT_OF_FAMILY_RUNS if family == test_family else TEST_RUNS_PER_FAMILY
        n_train, n_test, offset = (TRAIN_RUNS_PER_FAMILY, 0, 0) if split == "train" else (0, n_test, 1)
        config = SimConfig.preset(PRESET, family=family, n_train=n_train, n_test=n_test, run_prefix=f"{family}_",
                                  seed=1000 * seed + 10 * index[family] + offset)
        return simulated(work / "sims" / f"{family}_{split}_s{seed}", config)

    root = work / f"sets_s{seed}_{''.join(train_families)}_{test_family}"
    train = _union(root / "train", "train", [one(f, "train") for f in train_families])
    tests = {
        "in_family": _union(root / "in_family", "test", [one(f, "test") for f in train_families]),
        "out_of_family": _union(root / "out_of_family", "test", [one(test_family, "test")]),
    }
    return train, tests
