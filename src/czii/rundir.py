"""The run-directory layout: where training, tuning, inference, experiments and the Kaggle builder
find each other's files. Only this module spells the names.

```
<run dir>/
  config.yaml                 resolved config (written by training)
  predictor.yaml              the shipped predictor spec (czii.predictor), written by `czii tune`
  thresholds.json             tuned thresholds + the hash of the spec they were tuned under
  report/                     figures (`czii experiment`, `czii report`)
  fold<K>/
    config.yaml, seed.json    resolved config; seed, fold, held-out runs, config hash
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

import os
import re
from dataclasses import dataclass
from pathlib import Path

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

    def is_run_dir(self) -> bool:
        """Whether this looks like a training run directory (a config or fold folders)."""
        return self.config.is_file() or bool(self.folds())
