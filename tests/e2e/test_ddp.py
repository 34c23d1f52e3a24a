"""Distributed training: two CPU ranks under torchrun (gloo) end with identical weights; ranks draw other patches."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from czii.config import load_config, with_data_paths
from czii.training.data import PatchDataset, load_runs, open_sources, split_fold

ROOT = Path(__file__).resolve().parents[2]
CPU_TINY = ROOT / "configs" / "cpu_tiny.yaml"


def test_two_cpu_ranks_end_with_identical_weights(tiny_sim, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "czii", "train", "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config),
        "--out", str(out), "--device", "cpu",
        "--set", "train.epochs=2", "train.steps_per_epoch=3", "patch.size_zyx=[16,32,32]", "val.tile_zyx=[16,48,48]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d+)/2: final weights sha256 ([0-9a-f]{64})", proc.stdout))
    assert sorted(digests) == ["0", "1"], proc.stdout[-2000:]
    assert digests["0"] == digests["1"]

    fold = out / "fold0"
    assert json.loads((fold / "seed.json").read_text())["world_size"] == 2
    assert len(pd.read_csv(fold / "history.csv")) == 2
    assert (fold / "checkpoints" / "best.pt").is_file() and (fold / "oof" / "candidates.csv").is_file()


def test_ranks_draw_different_patches(tiny_sim):
    config = with_data_paths(load_config(CPU_TINY), [tiny_sim.copick_config])
    datasets = open_sources(config)
    runs = load_runs(config, datasets, split_fold(config, datasets, 0).train, progress=False)
    x0, x1, x0_again = (PatchDataset(config, runs, rank=rank)[0][0] for rank in (0, 1, 0))
    assert torch.equal(x0, x0_again)
    assert not torch.equal(x0, x1)
