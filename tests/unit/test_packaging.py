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


def _imported_top_modules(*, module_level: bool) -> set[str]:
    """Third-party top-level modules imported anywhere (``module_level=False``) or at module level only."""
    names = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in (tree.body if module_level else ast.walk(tree)):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"czii", "__future__"}


def _declared(requirements) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", d)[0].lower().replace("_", "-") for d in requirements}


def _undeclared(modules: set[str], declared: set[str]) -> dict[str, list[str]]:
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(modules):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    return undeclared


def test_every_imported_third_party_module_is_declared():
    """Module-level imports are base dependencies; imports inside functions may come from an extra (onnx)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _declared(project["dependencies"])
    extras = base | {d for name, reqs in project["optional-dependencies"].items() if name != "dev"
                     for d in _declared(reqs)}
    assert _undeclared(_imported_top_modules(module_level=True), base) == {}
    assert _undeclared(_imported_top_modules(module_level=False), extras) == {}


def test_the_static_encoder_registry_matches_smp_3d():
    assert ENCODERS == supported_encoders()


def test_torch_free_modules_stay_torch_and_copick_free():
    probe = ("import sys\n"
             "import czii.config, czii.predictor, czii.picks, czii.rundir, czii.registry, czii.metric, "
             "czii.submission, czii.postprocess.thresholds, czii.cli\n"
             "print(sorted(m for m in ('torch', 'copick', 'zarr', 'segmentation_models_pytorch_3d') "
             "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
