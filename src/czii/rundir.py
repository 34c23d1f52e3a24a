"""The run-directory layout: where training, tuning, inference, experiments and the Kaggle builder
find each other's files. Only this module spells the names.

```
<run dir>/
  config.yaml                 resolved config (written by training)
  predictor.yaml              the shipped predictor spec (czii.predictor), written by `czii tune`
  thresholds.json             tuned thresholds + the hash of the spec they were tuned under
  report/                     figures (`czii experiment`, `czii report`)
  czii.lock                   while `czii tune` or `czii experiment` writes here (czii.locks)
  fold<K>/
    config.yaml, seed.json    resolved config; seed, fold, held-out runs, config hash
    czii.lock                 while `czii train` trains this fold
    status.json               planned and done epochs, finished (after every epoch)
    history.csv               epoch, train_loss, val_score, lr, seconds
    checkpoints/last.pt       every epoch (resume state included)
    checkpoints/best.pt       the best validation epoch (what ships)
    oof/candidates.csv        held-out peaks at a low threshold, predicted with the shipped spec
    oof/truth.csv             held-out truth picks
    oof/spec.json             the spec (and its hash) the candidates were predicted with
```

Torch-free.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from czii import locks
from czii.errors import DataError
from czii.io import atomic_write_text

_FOLD_NAME = re.compile(r"fold(\d+)")


@dataclass(frozen=True)
class FoldDir:
    """One fold's folder ``<run dir>/fold<K>``."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def index(self) -> int:
        return int(_FOLD_NAME.fullmatch(self.name).group(1))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def seed(self) -> Path:
        return self.path / "seed.json"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def oof(self) -> Path:
        return self.path / "oof"

    @property
    def candidates(self) -> Path:
        return self.oof / "candidates.csv"

    @property
    def truth(self) -> Path:
        return self.oof / "truth.csv"

    @property
    def oof_spec(self) -> Path:
        return self.oof / "spec.json"


@dataclass(frozen=True)
class RunDir:
    """A training run directory (see the module docstring)."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def predictor(self) -> Path:
        return self.path / "predictor.yaml"

    @property
    def thresholds(self) -> Path:
        return self.path / "thresholds.json"

    @property
    def report(self) -> Path:
        return self.path / "report"

    def fold(self, k: int) -> FoldDir:
        return FoldDir(self.path / f"fold{k}")

    def folds(self) -> list[FoldDir]:
        """Every ``fold<K>`` folder, by K."""
        if not self.path.is_dir():
            return []
        found = [FoldDir(p) for p in self.path.iterdir() if p.is_dir() and _FOLD_NAME.fullmatch(p.name)]
        return sorted(found, key=lambda f: f.index)


@contextmanager
def writing(run_dir: RunDir, *, force: bool = False) -> Iterator[None]:
    """Hold ``run_dir``'s lock (:mod:`czii.locks`; ``force`` takes over a stale one) and refuse while another
    process trains one of its folds: what tunes, re-predicts or runs an experiment in it holds this."""
    with locks.hold(locks.folder_lock(run_dir.path), "run directory", run_dir.path, force=force):
        for fold in run_dir.folds():
            locks.check_free(locks.folder_lock(fold.path), "fold", fold.path)
        yield


def write_status(fold: FoldDir, done_epochs: int, planned_epochs: int) -> None:
    """Record how far the fold's training got (``finished`` once every planned epoch is done)."""
    atomic_write_text(fold.status, json.dumps({"planned_epochs": planned_epochs, "done_epochs": done_epochs,
                                               "finished": done_epochs >= planned_epochs}) + "\n")


def read_status(fold: FoldDir) -> dict | None:
    """The fold's ``status.json`` (None when training wrote none yet); DataError when unreadable."""
    try:
        return json.loads(fold.status.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{fold.status}: unreadable ({exc})") from None


def unfinished(checkpoints: Iterable[str | os.PathLike]) -> list[str]:
    """``<checkpoint> (trained D of P epochs)`` for each checkpoint of a fold whose ``status.json`` says its
    training did not finish (checkpoints outside a run directory, or without a status, are not judged)."""
    out = []
    for checkpoint in checkpoints:
        path = Path(checkpoint)
        if path.parent.name != "checkpoints" or not _FOLD_NAME.fullmatch(path.parent.parent.name):
            continue
        status = read_status(FoldDir(path.parent.parent))
        if status is not None and not status.get("finished"):
            out.append(f"{path} (trained {status.get('done_epochs')} of {status.get('planned_epochs')} epochs)")
    return out


def check_finished(checkpoints: Iterable[str | os.PathLike], allow_unfinished: bool) -> list[str]:
    """The unfinished checkpoints (:func:`unfinished`); DataError listing them unless ``allow_unfinished``."""
    found = unfinished(checkpoints)
    if found and not allow_unfinished:
        raise DataError(f"training is unfinished for {'; '.join(found)}: finish it with `czii train --resume` "
                        "(same --config, --out and --fold), or pass --allow-unfinished to use it anyway")
    return found
