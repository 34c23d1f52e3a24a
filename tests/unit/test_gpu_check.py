"""benchmarks/gpu/: the GPU check's dry run on CPU (every step, tiny) and the wheel list for the GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_dry_run_measures_every_step_and_writes_its_report(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu/check.py", "--dry-run", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert record["dry_run"] and record["skipped"] == []
    assert record["train"]["steps_per_s"] > 0 and record["train"]["ratio_to_floor"] >= 1
    assert set(record["infer"]) == {"torch", "onnx"}
    for runtime in record["infer"].values():
        assert list(runtime["runs"]) == ["1 model", "2 models × 4 TTA"]
        single, ensemble = runtime["runs"].values()
        assert ensemble["passes"] == 8 * single["passes"] and single["passes"] == runtime["tiles"]
        assert all(run["seconds"] > 0 and run["ratio_to_floor"] >= 1 for run in (single, ensemble))
    report = (tmp_path / "gpu_cpu.md").read_text()
    assert "DRY RUN" in report and report.count("| onnx |") == 2 and report.count("| torch |") == 2


def test_a_budget_too_small_skips_the_steps_and_says_so(tmp_path):
    result = subprocess.run([sys.executable, "benchmarks/gpu/check.py", "--dry-run", "--out", str(tmp_path),
                             "--budget-s", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert "train" not in record and record["infer"] == {}
    assert [s.split()[0] for s in record["skipped"]] == ["train", "torch", "onnx"]
    assert "Skipped for time: train" in (tmp_path / "gpu_cpu.md").read_text()


def test_the_wheel_list_holds_what_the_gpu_image_lacks_and_not_what_it_has():
    result = subprocess.run([sys.executable, "benchmarks/gpu/wheels.py", "--dry-run"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = {line.split("==")[0] for line in result.stdout.splitlines() if "==" in line}
    assert {"segmentation-models-pytorch-3d", "timm-3d", "pydantic", "pydantic-core", "timm"} <= listed
    assert not listed & {"torch", "numpy", "scipy", "pandas", "onnxruntime", "copick", "zarr", "czii"}
