"""Collect the wheels the GPU machine lacks for benchmarks/gpu/check.py (≤ 60 MiB, no registry there).

    .venv/bin/python benchmarks/gpu/wheels.py --out .whl            # download and build them here
    .venv/bin/python benchmarks/gpu/wheels.py --out .whl --dry-run  # only say which, and why

Which: the distributions of every module the check imports (found by importing it in a child process, plus the
exporter's lazily imported onnx, onnxscript and onnxruntime), at the versions installed here, less those the
GPU image provides (:data:`DEVICE_PROVIDES`, the packages its image lists; czii itself travels as ``src/``).
Binary wheels are fetched for the device's Python (:data:`DEVICE_PYTHON`) and manylinux platforms; packages
published only as source (pure Python) are built into wheels here. The device installs them with
``pip install --no-index --no-deps --target``, so versions pinned by our packages (timm 0.9.7 for
segmentation-models-pytorch-3d) win over the image's.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
LIMIT_MIB = 60
# what the GPU image holds (its package list, 2026-11): carried again only when our pins need another version
DEVICE_PROVIDES = frozenset("""
anyio certifi charset-normalizer click cuda-bindings cuda-core cuda-pathfinder filelock flatbuffers fsspec h11
hf-xet httpcore httpx huggingface-hub idna jinja2 markupsafe ml-dtypes mpmath networkx numpy onnx onnx-ir
onnxruntime onnxscript packaging pandas pillow protobuf psutil python-dateutil pyyaml requests rich safetensors
scipy setuptools six sympy torch torchvision tqdm triton typing-extensions urllib3
""".split())
PINNED_OVER_DEVICE = frozenset({"timm"})  # segmentation-models-pytorch-3d requires timm==0.9.7
LAZY_IMPORTS = ("onnx", "onnxscript", "onnxruntime")
PROBE = f"""
import importlib, json, runpy, sys
sys.argv = ["check"]
runpy.run_path({str(Path(__file__).with_name("check.py"))!r}, run_name="probe")
for name in {LAZY_IMPORTS!r}:
    importlib.import_module(name)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed() -> dict[str, str]:
    """{distribution: installed version} the check imports and the device lacks."""
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, check=True, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    modules = json.loads(probe.stdout.splitlines()[-1])
    owners = md.packages_distributions()
    dists = {canonical(d) for m in modules for d in owners.get(m, [])} - {"czii"}
    return {d: md.version(d) for d in sorted(dists) if d not in DEVICE_PROVIDES or d in PINNED_OVER_DEVICE}


def fetch(name: str, version: str, out: Path) -> str:
    """Download the device's wheel of ``name==version`` into ``out``; build one from source when none exists."""
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platform_args, "-d", str(out),
                f"{name}=={version}"]
    if subprocess.run(download, capture_output=True, text=True).returncode == 0:
        return "wheel"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), f"{name}=={version}"]
    result = subprocess.run(build, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name}=={version}: no wheel for Python {DEVICE_PYTHON} and no build from source "
                         f"({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'})")
    return "built from source"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    parser.add_argument("--dry-run", action="store_true", help="list the distributions; download nothing")
    args = parser.parse_args()
    wanted = needed()
    for name, version in wanted.items():
        why = "pinned over the image's" if name in PINNED_OVER_DEVICE else "not in the GPU image"
        print(f"{name}=={version}  ({why})")
    if args.dry_run:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for name, version in wanted.items():
        print(f"{name}=={version}: {fetch(name, version, args.out)}")
    total = sum(p.stat().st_size for p in args.out.glob("*.whl")) / 2**20
    print(f"{len(list(args.out.glob('*.whl')))} wheels, {total:.1f} MiB in {args.out}")
    if total > LIMIT_MIB:
        raise SystemExit(f"{total:.1f} MiB of wheels is over the {LIMIT_MIB} MiB a device call can carry")


if __name__ == "__main__":
    main()
