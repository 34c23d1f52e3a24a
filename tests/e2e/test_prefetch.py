"""Reading the next run and finding the previous run's peaks in background threads (``prefetch``) gives the same
bytes as the serial loop, and an error in a run read ahead is raised in the caller naming that run, after the
run before it is stored for resuming."""

from __future__ import annotations

import numpy as np
import pytest

from czii.cli import main
from czii.formats.mrc import write_mrc
from czii.inference.pipeline import run_inference
from czii.submission import scores_path


@pytest.fixture(scope="module")
def models(tmp_path_factory, save_tiny_checkpoint):
    run_dir = tmp_path_factory.mktemp("prefetch") / "runs" / "exp"
    save_tiny_checkpoint(run_dir / "fold0" / "checkpoints" / "best.pt", seed=21)
    return run_dir


def _tomograms(folder, n=3):
    rng = np.random.default_rng(5)
    for i in range(n):
        write_mrc(folder / f"TS_{i}.mrc", rng.normal(size=(32, 96, 96)).astype(np.float32), 10.0)
    return folder


def test_prefetching_gives_the_bytes_of_the_serial_loop(models, tmp_path):
    data = _tomograms(tmp_path / "tomos")
    out = {}
    for prefetch in (False, True):
        csv = tmp_path / f"prefetch_{prefetch}.csv"
        result = run_inference(models, data, out_csv=csv, device="cpu", progress=False, prefetch=prefetch)
        assert result.manifest["data"]["runs"] == ["TS_0", "TS_1", "TS_2"]
        out[prefetch] = (csv.read_bytes(), scores_path(csv).read_bytes())
    assert out[True] == out[False] and out[True][0].count(b"\n") > 3


def test_an_error_in_a_run_read_ahead_names_it_and_keeps_the_run_before(models, tmp_path, capsys):
    data = _tomograms(tmp_path / "tomos")
    broken = np.random.default_rng(6).normal(size=(32, 96, 96)).astype(np.float32)
    broken[3, 4, 5] = np.nan
    write_mrc(data / "TS_1.mrc", broken, 10.0)
    out = tmp_path / "sub.csv"
    args = ["infer", "--models", str(models), "--data", str(data), "--out", str(out), "--device", "cpu",
            "--prefetch", "on"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "TS_1" in err and "non-finite" in err and not out.exists()
    assert sorted(p.name for p in out.with_name("sub.csv.work").glob("*.npz")) == ["TS_0.npz"]

    write_mrc(data / "TS_1.mrc", np.nan_to_num(broken), 10.0)
    assert main(args) == 0
    assert "resuming: 1 of 3 runs" in capsys.readouterr().err
