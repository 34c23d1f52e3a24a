"""TopCUP (the organisers' package of the 1st-place solution) trained and tested beside this project, on CPU.

It runs in its own Python (``--topcup-python``: a virtual environment with ``pip install topcup==1.2.2``)
through the CPU helpers of a peers folder (``--topcup-helpers``: ``topcup_cpu.py``, ``mk_overlay.py``,
``mk_config.py``, ``thr_from_metrics.py``, ``to_sub.py``); neither ships with this project. It trains
resnet10 on the training runs but the last (its validation run, on which it tunes its own thresholds)
for ``epochs`` epochs, then predicts every test set; each step's seconds are returned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path


def _run(cmd: list[str], log: Path) -> float:
    """Run a TopCUP step in the folder of ``log`` (it writes lightning_logs/ where it runs); its seconds."""
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
                              env={**os.environ, "OMP_NUM_THREADS": "2"})
    if done.returncode:
        raise SystemExit(f"TopCUP step failed ({done.returncode}); see {log}")
    return time.perf_counter() - started


def _runs(kaggle_split: Path) -> list[str]:
    return sorted(p.name for p in (kaggle_split / "static" / "ExperimentRuns").iterdir())


def run_topcup(python: Path, helpers: Path, objects_config: Path, train: Path, tests: dict[str, Path], work: Path,
               epochs: int) -> dict:
    """Train TopCUP on ``train`` (a Kaggle folder) and predict each of ``tests``; submissions and seconds.

    ``objects_config``: a copick config whose pickable objects TopCUP's configs copy.
    """
    work, train, objects_config = work.resolve(), train.resolve(), objects_config.resolve()
    tests = {name: kaggle.resolve() for name, kaggle in tests.items()}
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log = work / "topcup.log"
    py, h = str(Path(python).absolute()), str(Path(helpers).absolute())  # absolute, not resolved: a venv's python
    subprocess.run([py, f"{h}/mk_overlay.py", str(train / "train" / "overlay"), str(work / "overlay")], check=True)
    subprocess.run([py, f"{h}/mk_config.py", str(objects_config), str(work / "overlay"),
                    str((train / "train" / "static").resolve()), str(work / "train.json")], check=True)
    runs = _runs(train / "train")
    train_seconds = _run([py, f"{h}/topcup_cpu.py", "train", "-c", str(work / "train.json"), "-bk", "resnet10",
                          "-tts", ",".join(runs[:-1]), "-vts", runs[-1], "-tt", "denoised", "-u", "curation",
                          "--pixelsize", "10", "-bs", "1", "-n", "6", "-e", str(epochs), "-o", str(work / "run"),
                          "-v", "0"], log)
    thresholds = subprocess.run([py, f"{h}/thr_from_metrics.py", str(work / "run" / "jobs" / "0" / "metrics.json")],
                                check=True, capture_output=True, text=True).stdout.strip()
    result = {"train_seconds": train_seconds, "epochs": epochs, "thresholds": json.loads(thresholds), "tests": {}}
    for name, kaggle in tests.items():
        overlay = work / f"overlay_{name}"
        overlay.mkdir()
        config = work / f"{name}.json"
        subprocess.run([py, f"{h}/mk_config.py", str(objects_config), str(overlay),
                        str((kaggle / "test" / "static").resolve()), str(config), thresholds], check=True)
        out = work / f"inf_{name}"
        seconds = _run([py, f"{h}/topcup_cpu.py", "inference", "-c", str(config), "-ts",
                        ",".join(_runs(kaggle / "test")), "-bs", "1", "-p",
                        str(work / "run" / "checkpoints" / "best_model.ckpt"), "--pixelsize", "10", "-tt", "denoised",
                        "-o", str(out)], log)
        submission = work / f"{name}.csv"
        subprocess.run([py, f"{h}/to_sub.py", str(out / "val_pred_df_seed.csv"), str(submission)], check=True,
                       stdout=subprocess.DEVNULL)
        result["tests"][name] = {"submission": str(submission), "seconds": seconds}
    return result
