"""czii.kaggle without downloads: target tags, closure walking, errors, runtime projection, the committed notebook."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import nbformat
import pytest
from conftest import CPU_TINY

from czii.cli import SUBCOMMANDS, main
from czii.config import load_config
from czii.predictor import spec_from_config, spec_yaml
from czii.errors import BuildError, ConfigError, DataError
from czii.kaggle import (
    WheelSource,
    WheelTarget,
    build_kaggle_dataset,
    project_runtime,
    resolve_closure,
    verify_dataset,
)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "kaggle_notebooks" / "czii_submission.ipynb"
NUMPY_LIKE = "numpy-2.3.5-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"


# --------------------------------------------------------------------------- the committed notebook


def test_committed_notebook_is_stripped_and_only_calls_the_package():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) == 4
    for cell in nb.cells:
        assert cell.metadata == {}, f"cell {cell.id} carries metadata"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has outputs; strip them"
        assert "def " not in cell.source and "class " not in cell.source, "the notebook holds no logic of its own"
    paths, install, infer, timings = (c.source for c in code)
    for var, default in (("CZII_DATASET_DIR", "/kaggle/input/czii-model"),
                         ("CZII_COMPETITION_DIR", "/kaggle/input/czii-cryo-et-object-identification"),
                         ("CZII_OUTPUT", "/kaggle/working/submission.csv"), ("CZII_DEVICE", "auto")):
        assert f'os.environ.get("{var}", "{default}")' in paths
    assert all(s in install for s in ("sys.executable", '"--no-index"', '"--find-links"', "check=True"))
    assert "run_inference(" in infer and 'split="test"' in infer and "inference.yaml" in infer
    assert "project_runtime(" in timings


def test_kaggle_build_is_a_registered_subcommand(tmp_path, capsys):
    assert SUBCOMMANDS["kaggle-build"][0] == "kaggle"
    missing = tmp_path / "nowhere" / "best.pt"
    assert main(["kaggle-build", "--models", str(missing), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- target


def test_target_accepts_older_manylinux_and_abi3_but_not_newer_glibc_or_other_python():
    target = WheelTarget("3.11", ("manylinux_2_35_x86_64",))
    platforms = target.expanded_platforms
    assert platforms[0] == "manylinux_2_35_x86_64" and "manylinux_2_36_x86_64" not in platforms
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64",
            "manylinux1_x86_64"} <= set(platforms)
    assert target.accepts(NUMPY_LIKE)
    assert target.accepts("six-1.17.0-py2.py3-none-any.whl")
    assert target.accepts("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl")
    assert not target.accepts("numpy-2.3.5-cp312-cp312-manylinux_2_27_x86_64.whl")
    assert not target.accepts("x-1.0-cp311-cp311-manylinux_2_36_x86_64.whl")
    assert not target.accepts("x-1.0-cp311-cp311-manylinux_2_35_aarch64.whl")
    assert not target.accepts("x-1.0-cp311-cp311-win_amd64.whl")

    legacy = WheelTarget("3.11", ("manylinux2014_x86_64",))
    assert legacy.expanded_platforms[:2] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert not legacy.accepts(NUMPY_LIKE)
    assert "--platform" in legacy.pip_args() and legacy.key == "cp311-manylinux2014_x86_64"
    assert target.marker_environment()["python_version"] == "3.11"
    assert target.marker_environment()["platform_machine"] == "x86_64"


@pytest.mark.parametrize("python, platforms, message", [
    ("311", ("manylinux_2_35_x86_64",), "MAJOR.MINOR"),
    ("3.11", ("win_amd64",), "manylinux"),
    ("3.11", ("manylinux_2_35_x86_64", "manylinux_2_28_aarch64"), "mix architectures"),
    ("3.11", (), "no target platform"),
])
def test_bad_targets_are_refused(python, platforms, message):
    with pytest.raises(ConfigError, match=message):
        WheelTarget(python, platforms)


# --------------------------------------------------------------------------- closure


def _wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """A minimal real wheel file: its METADATA (name, version, Requires-Dist)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                      *(f"Requires-Dist: {r}" for r in requires)]) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


@pytest.fixture
def no_index(monkeypatch):
    """pip sees no index and no configured find-links: a missing wheel fails fast, offline."""
    for key in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")


@pytest.fixture
def local_wheels(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    _wheel(folder, "alpha", "1.0", ["delta; extra == 'never'", "epsilon<2", "nvidia-fake-lib>=1"])
    _wheel(folder, "beta", "1.0")
    _wheel(folder, "gamma", "1.0", ["zeta; extra == 'fast'", "eta; sys_platform == 'win32'"])
    _wheel(folder, "epsilon", "1.5")
    _wheel(folder, "epsilon", "2.5")
    _wheel(folder, "zeta", "1.0")
    _wheel(folder, "zeta", "2.0")
    return folder


ROOTS = ["alpha==1.0", "beta>=1; python_version < '3.11'", "gamma[fast]"]
PINS = {"alpha": "1.0", "gamma": "1.0", "zeta": "1.0"}


def test_closure_follows_markers_extras_and_pins_for_the_target(local_wheels, tmp_path, no_index):
    target = WheelTarget("3.11", ("manylinux_2_35_x86_64",))
    source = WheelSource(target, tmp_path / "cache", local_wheels)
    closure = resolve_closure(ROOTS, target, PINS, source, progress=False)
    assert {name: path.name for name, path in closure.wheels.items()} == {
        "alpha": "alpha-1.0-py3-none-any.whl", "gamma": "gamma-1.0-py3-none-any.whl",
        "epsilon": "epsilon-1.5-py3-none-any.whl",  # unpinned: the newest below 2
        "zeta": "zeta-1.0-py3-none-any.whl",        # pinned, though 2.0 is there too
    }
    assert closure.provided == {"nvidia-fake-lib": "nvidia-fake-lib>=1"}

    older = WheelTarget("3.10", ("manylinux_2_35_x86_64",))
    closure = resolve_closure(ROOTS, older, PINS, WheelSource(older, tmp_path / "cache", local_wheels), progress=False)
    assert "beta" in closure.wheels


def test_pin_conflicts_and_unobtainable_packages_are_named(local_wheels, tmp_path, no_index):
    target = WheelTarget()
    source = WheelSource(target, tmp_path / "cache", local_wheels)
    with pytest.raises(BuildError, match=r"alpha.*constraints file pins alpha==2\.0"):
        resolve_closure(ROOTS, target, {**PINS, "alpha": "2.0"}, source, progress=False)
    with pytest.raises(BuildError, match=r"alpha requires epsilon<2, but epsilon resolves to 2\.5"):
        resolve_closure([*ROOTS, "epsilon>=2"], target, PINS, source, progress=False)
    with pytest.raises(BuildError, match="package omega-not-here: no wheel"):
        resolve_closure(["omega-not-here==1.0"], target, {}, source, progress=False)
    assert not [p for p in (tmp_path / "cache").iterdir()], "a failed fetch left files in the cache"


# --------------------------------------------------------------------------- build errors and verification


def test_build_refuses_bad_outputs_and_missing_checkpoints(tmp_path):
    checkpoint = tmp_path / "runs" / "a" / "best.pt"
    with pytest.raises(ConfigError, match="kaggle_notebooks"):
        build_kaggle_dataset(checkpoint, ROOT / "kaggle_notebooks" / "ds", progress=False)
    assert not (ROOT / "kaggle_notebooks" / "ds").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a czii Kaggle dataset folder"):
        build_kaggle_dataset(checkpoint, taken, progress=False)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]

    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match="inside the run directory"):
        build_kaggle_dataset(run_dir, run_dir / "kaggle", progress=False)
    assert main(["kaggle-build", "--models", str(run_dir), "--out", str(run_dir / "kaggle")]) == 2
    assert list(run_dir.iterdir()) == []

    with pytest.raises(DataError, match=str(checkpoint)):
        build_kaggle_dataset(checkpoint, tmp_path / "out" / "ds", progress=False)
    ensemble = tmp_path / "ensemble.yaml"
    ensemble.write_text(spec_yaml(spec_from_config(load_config(CPU_TINY), [(tmp_path / "runs/b/best.pt", 1.0)]),
                                  tmp_path))
    with pytest.raises(DataError, match="runs/b/best.pt"):
        build_kaggle_dataset(ensemble, tmp_path / "out" / "ds", progress=False)
    assert not (tmp_path / "out").exists(), "a failed build left files or folders behind"


def test_verify_dataset_detects_changed_missing_and_extra_files(tmp_path):
    folder = tmp_path / "ds"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "m0.pt").write_bytes(b"weights")
    (folder / "thresholds.json").write_text("{}")
    files = {p.relative_to(folder).as_posix(): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                                 "size": p.stat().st_size}
             for p in folder.rglob("*") if p.is_file()}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))
    assert verify_dataset(folder)["files"] == files

    (folder / "models" / "m0.pt").write_bytes(b"Weights")
    with pytest.raises(DataError, match="models/m0.pt"):
        verify_dataset(folder)
    (folder / "models" / "m0.pt").unlink()
    with pytest.raises(DataError, match="missing.*models/m0.pt"):
        verify_dataset(folder)


# --------------------------------------------------------------------------- runtime projection


def _manifest(level: int, runs: dict[str, tuple[list[int], float]], total: float) -> dict:
    return {"level": level, "total_seconds": total,
            "timings": {run: {"shape_zyx": shape, "seconds": {"load": 0.1 * s, "predict": 0.8 * s, "peaks": 0.1 * s}}
                        for run, (shape, s) in runs.items()}}


def test_projection_scales_runs_to_full_tomograms_and_says_ok_or_over():
    manifest = _manifest(0, {"TS_a": ([92, 315, 315], 10.0), "TS_b": ([184, 630, 630], 60.0)}, total=100.0)
    p = project_runtime(manifest)
    assert p.seconds_per_tomogram == pytest.approx((10.0 * 8 + 60.0) / 2)
    assert p.fixed_seconds == pytest.approx(30.0)
    assert p.projected_seconds == pytest.approx(30.0 + 70.0 * 500)
    assert p.ok
    report = p.report().splitlines()
    assert [line for line in report if line.startswith(("OK", "OVER"))] == [report[-1]]
    assert report[-1].startswith("OK:") and any("TS_a" in line and "92x315x315" in line for line in report)

    over = project_runtime(manifest, n_tomograms=700)
    assert not over.ok and over.report().splitlines()[-1].startswith("OVER:")

    level2 = project_runtime(_manifest(2, {"TS_a": ([46, 158, 158], 5.0)}, total=5.0))
    assert level2.seconds_per_tomogram == pytest.approx(5.0) and level2.fixed_seconds == 0.0
    with pytest.raises(DataError, match="timings"):
        project_runtime({"level": 0, "timings": {}})
