"""Every third-party module the package imports is a declared dependency, and the layers import one way."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from czii.models import supported_encoders
from czii.registry import ENCODERS

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "czii"


def _imported_top_modules() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"czii", "__future__"}


def test_every_imported_third_party_module_is_declared():
    declared = {re.split(r"[<>=!\[ ;]", d)[0].lower().replace("_", "-")
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_imported_top_modules()):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not in pyproject dependencies: {undeclared}"


def test_the_static_encoder_registry_matches_smp_3d():
    assert ENCODERS == supported_encoders()


def test_torch_free_modules_stay_torch_and_copick_free():
    probe = ("import sys\n"
             "import czii.config, czii.predictor, czii.picks, czii.rundir, czii.registry, czii.metric, "
             "czii.submission, czii.postprocess.thresholds, czii.cli\n"
             "print(sorted(m for m in ('torch', 'copick', 'zarr', 'segmentation_models_pytorch_3d') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
