"""The offline Kaggle submission end to end.

``czii kaggle-build`` turns a run directory into the dataset folder; pip resolves czii from its
wheels with no index in a fresh venv that, like Kaggle's image, already has torch; the notebook
runs under nbclient against the simulator's Kaggle layout with the network blocked, and its CSV
is validated and scored. The build reuses the per-target wheel cache (the first build ever
downloads the wheels, a few minutes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
import yaml
from nbclient import NotebookClient
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from czii.config import config_to_dict, load_config, save_resolved
from czii.inference.pipeline import manifest_path
from czii.predictor import load_spec, resolve_spec
from czii.registry import resolve_tta
from czii.kaggle import BuildResult, WheelTarget, build_kaggle_dataset, is_provided, verify_dataset
from czii.metric import score
from czii.models import build_model, output_channels, save_checkpoint
from czii.particles import PARTICLE_NAMES
from czii.predictor import load_thresholds, save_thresholds
from czii.submission import read_submission, validate_submission

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "kaggle_notebooks"
NOTEBOOK = NOTEBOOK_DIR / "czii_submission.ipynb"
CPU_TINY = ROOT / "configs" / "cpu_tiny.yaml"
DEAD_PROXY = "http://127.0.0.1:9"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


NOTEBOOK_DIR_AT_IMPORT = _tree_digest(NOTEBOOK_DIR)


def _test_target() -> WheelTarget:
    """Kaggle's default target when this machine can install its wheels, else this machine's own."""
    default = WheelTarget()
    here = {t.platform for t in sys_tags()}
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python == default.python_version and set(default.expanded_platforms) <= here:
        return default
    libc, version = platform.libc_ver()
    assert libc == "glibc", "the offline-install tests need a glibc Linux"
    major, minor = version.split(".")[:2]
    return WheelTarget(python, (f"manylinux_{major}_{minor}_{platform.machine()}",))


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    """A run directory (fold0/checkpoints/best.pt, thresholds.json) holding a freshly initialised cpu_tiny model."""
    config = load_config(CPU_TINY, ["infer.tile_zyx=[32,96,96]"])
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    torch.manual_seed(0)
    model = build_model(config.model, len(config.data.input_channels), output_channels(config.data.classes, "sigmoid"))
    save_checkpoint(run_dir / "fold0" / "checkpoints" / "best.pt", {
        "model_config": dataclasses.asdict(config.model), "classes": list(config.data.classes),
        "input_channels": list(config.data.input_channels), "activation": "sigmoid",
        "normalisation": dataclasses.asdict(config.data.normalisation), "level": config.data.level,
        "state_dict": model.state_dict(), "ema_state_dict": None, "epoch": 0, "config": config_to_dict(config),
    })
    save_resolved(config, run_dir / "config.yaml")
    save_thresholds(run_dir / "thresholds.json", {name: 0.3 + 0.05 * i for i, name in enumerate(PARTICLE_NAMES)},
                    report={"source": "test"})
    return run_dir


@pytest.fixture(scope="module")
def built(model_run, tmp_path_factory) -> BuildResult:
    result = build_kaggle_dataset(model_run, tmp_path_factory.mktemp("kaggle") / "czii-model",
                                  target=_test_target(), progress=False)
    print(f"\nkaggle-build: {result.seconds:.1f} s, {len(result.manifest['wheels'])} wheels, "
          f"{result.wheels_bytes / 2**20:.0f} MiB")
    return result


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_build_writes_a_verified_self_contained_folder(built, model_run):
    out, manifest = built.out, built.manifest
    assert verify_dataset(out) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["inference.yaml", "manifest.json", "models", "thresholds.json",
                                                      "wheels"]
    assert not list(out.parent.glob(".czii-model.*")), "temporary build folders left behind"

    wheels = {canonicalize_name(parse_wheel_filename(name)[0]): str(parse_wheel_filename(name)[1])
              for name in manifest["wheels"]}
    assert sorted(manifest["wheels"]) == sorted(p.name for p in (out / "wheels").iterdir())
    assert wheels["czii"] == importlib.metadata.version("czii")
    assert not [name for name in wheels if is_provided(name)]
    pins = _pins()
    assert {name: v for name, v in wheels.items() if name in pins} == {name: pins[name] for name in wheels
                                                                       if name in pins}
    unpinned = set(wheels) - set(pins)
    assert unpinned <= {"czii", "setuptools", "pip", "wheel"}, "pip freeze leaves out only these"
    assert sorted(unpinned - {"czii"}) == manifest["unpinned"]
    for needed in ("copick", "zarr", "numcodecs", "segmentation-models-pytorch-3d", "timm", "timm-3d",
                   "pretrainedmodels", "efficientnet-pytorch", "connected-components-3d", "numpy", "sympy"):
        assert needed in wheels, needed
    assert wheels["zarr"].startswith("2.") and wheels["timm"] == "0.9.7"
    assert f"torch=={pins['torch']}" in manifest["provided"]["requirements"]

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert manifest["git"]["commit"] == head.stdout.strip()
    assert manifest["target"]["python_version"] == _test_target().python_version

    ensemble = yaml.safe_load((out / "inference.yaml").read_text())
    assert ensemble["thresholds"] == "thresholds.json" and not Path(ensemble["members"][0]["checkpoint"]).is_absolute()
    assert ensemble["tta"] == list(resolve_tta(load_config(CPU_TINY).infer.tta))
    assert ensemble["tiling"]["tile_zyx"] == [32, 96, 96]
    source = load_spec(out / "inference.yaml")
    assert [Path(m.checkpoint).resolve().parent for m in source.members] == [(out / "models").resolve()]
    original = model_run / "fold0" / "checkpoints" / "best.pt"
    assert Path(source.members[0].checkpoint).read_bytes() == original.read_bytes()
    assert load_thresholds(source.thresholds) == load_thresholds(model_run / "thresholds.json")
    assert source.hash == resolve_spec(model_run).hash == manifest["models"]["spec_hash"]


def test_rebuild_replaces_a_previous_build_and_keeps_the_kaggle_metadata(built, model_run, tmp_path):
    previous = tmp_path / "czii-model"
    shutil.copytree(built.out, previous, copy_function=os.link)
    (previous / "wheels" / "stale-0.1-py3-none-any.whl").write_bytes(b"old")
    (previous / "dataset-metadata.json").write_text('{"id": "someone/czii-model"}')
    result = build_kaggle_dataset(model_run, previous, target=_test_target(), wheels_from=built.out / "wheels",
                                  progress=False)
    assert verify_dataset(previous) == result.manifest
    assert not (previous / "wheels" / "stale-0.1-py3-none-any.whl").exists()
    assert json.loads((previous / "dataset-metadata.json").read_text()) == {"id": "someone/czii-model"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["czii-model"], "temporary folders left behind"


def _installed_closure(names: list[str]) -> list[importlib.metadata.Distribution]:
    """Installed distributions of ``names`` and everything they require here (markers for this interpreter)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen[name] = importlib.metadata.distribution(name)
        for text in seen[name].requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _kaggle_like_venv(path: Path, *, with_pip: bool, kernel: bool) -> Path:
    """A fresh venv whose interpreter also sees this environment's provided packages (torch, nvidia-*, ...)
    and, with ``kernel``, ipykernel and its requirements: Kaggle's image, less what czii brings.

    They are exposed as symlinks in a folder outside the venv, put on sys.path by a .pth file;
    pip installs into the venv and never uninstalls from that folder (outside its environment).
    """
    venv.EnvBuilder(with_pip=with_pip).create(path / "venv")
    folder = path / "image"
    folder.mkdir()
    provided = [d for d in importlib.metadata.distributions() if is_provided(d.metadata["Name"])]
    for dist in provided + (_installed_closure(["ipykernel"]) if kernel else []):
        for top in {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (folder / top).exists():
                (folder / top).symlink_to(target)
    (site,) = (path / "venv" / "lib").glob("python3*/site-packages")
    (site / "kaggle_image.pth").write_text(f"{folder}\n")
    return path / "venv" / "bin" / "python"


def _offline_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PIP_") and "PROXY" not in k.upper()}
    env.update(PIP_CONFIG_FILE=os.devnull, HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, http_proxy=DEAD_PROXY,
               https_proxy=DEAD_PROXY, PYTHONNOUSERSITE="1", **extra)
    return env


def _dry_run(python: Path, wheels: Path, report: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--no-index",
         "--find-links", str(wheels), "--report", str(report), "czii"],
        capture_output=True, text=True, env=_offline_env(), check=False,
    )


def test_wheels_resolve_offline_given_only_the_provided_packages(built, tmp_path):
    wheels = built.out / "wheels"
    with_torch = _kaggle_like_venv(tmp_path / "kaggle", with_pip=False, kernel=False)
    proc = _dry_run(with_torch, wheels, tmp_path / "report.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    install = json.loads((tmp_path / "report.json").read_text())["install"]
    assert all(item["download_info"]["url"].startswith(wheels.resolve().as_uri()) for item in install)
    would_install = sorted(Path(item["download_info"]["url"]).name for item in install)
    assert would_install == sorted(built.manifest["wheels"]), "every bundled wheel is needed, and only those"

    bare = tmp_path / "bare"
    venv.EnvBuilder().create(bare)
    proc = _dry_run(bare / "bin" / "python", wheels, tmp_path / "bare.json")
    assert proc.returncode != 0 and "torch" in proc.stderr


def _run_notebook(kernel_python: Path, tmp_path: Path, built: BuildResult, tiny_sim,
                  monkeypatch) -> nbformat.NotebookNode:
    """Execute the committed notebook (in memory) in a kernel of ``kernel_python`` with the network blocked."""
    kernels = tmp_path / "jupyter" / "kernels" / "czii-kaggle-test"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(kernel_python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "czii Kaggle test", "language": "python",
    }))
    for key in list(os.environ):
        if key.upper().startswith("PIP_") or "PROXY" in key.upper():
            monkeypatch.delenv(key)
    for key, value in _offline_env(
        JUPYTER_PATH=str(tmp_path / "jupyter"), CZII_CACHE=str(tmp_path / "czii-cache"),
        CZII_DATASET_DIR=str(built.out), CZII_COMPETITION_DIR=str(tiny_sim.kaggle_dir),
        CZII_OUTPUT=str(tmp_path / "working" / "submission.csv"), CZII_DEVICE="cpu",
    ).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import czii, sys\nprint(sys.executable, czii.__file__)", id="where"))
    NotebookClient(nb, kernel_name="czii-kaggle-test", timeout=600,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    nbformat.write(nb, tmp_path / "executed.ipynb")
    return nb


def _stdout(nb: nbformat.NotebookNode, cell_id: str) -> str:
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


def _check_outputs(nb, tmp_path: Path, built: BuildResult, tiny_sim) -> None:
    csv = tmp_path / "working" / "submission.csv"
    submission = read_submission(csv)
    validate_submission(submission, runs=tiny_sim.test_runs)
    report = score(pd.read_csv(tiny_sim.solution_csv), submission)
    assert 0.0 <= report.score <= 1.0

    manifest = json.loads(manifest_path(csv).read_text())
    shipped = built.manifest["files"][built.manifest["models"]["members"][0]["file"]]["sha256"]
    assert [c["sha256"] for c in manifest["checkpoints"]] == [shipped]
    assert manifest["thresholds"]["values"] == load_thresholds(built.out / "thresholds.json")
    assert manifest["data"]["runs"] == sorted(tiny_sim.test_runs) and manifest["n_picks"] == len(submission)
    assert len(manifest["tta"]) > 1, "the notebook runs with TTA"

    timings = _stdout(nb, "timings")
    for run in tiny_sim.test_runs:
        assert run in timings
    assert sum(line.startswith(("OK:", "OVER:")) for line in timings.splitlines()) == 1
    assert _tree_digest(NOTEBOOK_DIR) == NOTEBOOK_DIR_AT_IMPORT, "kaggle_notebooks/ was written to"


def test_notebook_runs_offline_in_the_project_environment(built, tiny_sim, tmp_path, monkeypatch):
    started = time.perf_counter()
    nb = _run_notebook(Path(sys.executable), tmp_path, built, tiny_sim, monkeypatch)
    print(f"\nnotebook in the project venv: {time.perf_counter() - started:.1f} s")
    _check_outputs(nb, tmp_path, built, tiny_sim)


@pytest.mark.slow
def test_notebook_installs_czii_offline_into_a_kaggle_like_venv(built, tiny_sim, tmp_path, monkeypatch):
    """Fresh venv + preinstalled torch and Jupyter kernel (Kaggle's image); everything else from the wheels."""
    started = time.perf_counter()
    python = _kaggle_like_venv(tmp_path / "kaggle", with_pip=True, kernel=True)
    nb = _run_notebook(python, tmp_path, built, tiny_sim, monkeypatch)
    print(f"\nnotebook with offline install into a fresh venv: {time.perf_counter() - started:.1f} s")
    _check_outputs(nb, tmp_path, built, tiny_sim)

    executable, module = _stdout(nb, "where").split()
    assert Path(executable) == python
    (site,) = (tmp_path / "kaggle" / "venv" / "lib").glob("python3*/site-packages")
    assert Path(module).is_relative_to(site)
    installed = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    for name in ("czii", "numpy", "scipy", "copick", "zarr", "segmentation-models-pytorch-3d", "pretrainedmodels"):
        assert name in installed, f"{name} was not installed from the dataset's wheels"
    assert not any(is_provided(name) for name in installed), "a provided package was installed over the image's"
