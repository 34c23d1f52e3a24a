"""``czii infer`` under torchrun: runs dealt over two CPU ranks (gloo) give the CSV of one process;
a rank that fails stops every rank with the error and no output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from czii.inference import manifest_path, run_inference, shard_runs

TORCHRUN = Path(sys.executable).parent / "torchrun"


def _torchrun_infer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "czii", "infer", "--device", "cpu", *args]
    # torchrun gives each rank one thread; the single-process reference below uses one too
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, save_tiny_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("ddp_models") / "exp"
    for fold in (0, 1):
        save_tiny_checkpoint(root / f"fold{fold}" / "checkpoints" / "best.pt", seed=10 + fold)
    return root


def test_shard_runs_deals_the_sorted_runs_round_robin():
    runs = ["TS_c", "TS_a", "TS_e", "TS_b", "TS_d"]
    shards = [shard_runs(runs, rank, 2) for rank in range(2)]
    assert shards == [["TS_a", "TS_c", "TS_e"], ["TS_b", "TS_d"]]
    assert shard_runs(list(reversed(runs)), 1, 2) == shards[1]
    assert [shard_runs(runs, r, 3) for r in range(3)] == [["TS_a", "TS_d"], ["TS_b", "TS_e"], ["TS_c"]]
    with pytest.raises(ValueError):
        shard_runs(runs, 2, 2)


def test_two_cpu_ranks_write_the_same_csv_as_one_process(tiny_sim, run_dir, tmp_path):
    runs = sorted(tiny_sim.train_runs)
    assert len(runs) == 3  # rank 0 predicts two runs, rank 1 one
    ddp_out = tmp_path / "ddp" / "sub.csv"
    proc = _torchrun_infer("--models", str(run_dir), "--data", str(tiny_sim.copick_config), "--out", str(ddp_out),
                           cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 reports (and writes)

    one_out = tmp_path / "one" / "sub.csv"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_inference(run_dir, tiny_sim.copick_config, out_csv=one_out, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)

    assert len(single.submission) > 0
    assert ddp_out.read_bytes() == one_out.read_bytes()
    manifest = json.loads(manifest_path(ddp_out).read_text())
    assert manifest["world_size"] == 2 and single.manifest["world_size"] == 1
    assert manifest["data"]["runs"] == runs and sorted(manifest["timings"]) == runs
    assert manifest["picks_per_class"] == single.manifest["picks_per_class"]
    assert sorted(p.name for p in ddp_out.parent.iterdir()) == [
        "sub.csv", "sub.csv.manifest.json", "sub.csv.scores.csv"]


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank_without_output(tiny_sim, run_dir, tmp_path):
    # a private copy of the denoised tomograms in which one chunk of TS_sim_01 (rank 1's run) is corrupt
    static = tmp_path / "static"
    src = Path(tiny_sim.out_dir) / "copick" / "static"
    shutil.copytree(src, static,
                    ignore=lambda folder, names: [n for n in names if n.endswith(".zarr") and n != "denoised.zarr"])
    chunk = static / "ExperimentRuns" / "TS_sim_01" / "VoxelSpacing10.000" / "denoised.zarr" / "0" / "0" / "0" / "0"
    chunk.write_bytes(b"not a blosc chunk")
    doc = json.loads(tiny_sim.copick_config.read_text())
    doc.update(static_root=str(static), overlay_root=str(tmp_path / "overlay"))
    config = tmp_path / "copick_config.json"
    config.write_text(json.dumps(doc))

    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    proc = _torchrun_infer("--models", str(run_dir), "--data", str(config), "--out", str(out), cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("czii infer: error: ")]
    assert len(errors) == 2 and all("TS_sim_01" in line and "unreadable zarr data" in line for line in errors), \
        proc.stderr[-3000:]
    assert list(out.parent.iterdir()) == []
