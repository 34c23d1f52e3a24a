"""Mutation score of the pure core after `make mutate` (mutmut run + export-cicd-stats) → results/mutation.md.

    .venv/bin/python benchmarks/mutation_report.py [--seconds S]

Reads ``mutants/mutmut-cicd-stats.json`` and the survivors listed by ``mutmut results``; the modules
and tests mutmut used are ``[tool.mutmut]`` of pyproject.toml.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="wall time of the mutmut run, to record")
    args = parser.parse_args()
    stats = json.loads((ROOT / "mutants" / "mutmut-cicd-stats.json").read_text())
    results = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "results"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    survivors = [line.split(":")[0].strip() for line in results.splitlines() if line.strip().endswith("survived")]
    by_module = collections.Counter(name.rsplit(".", 1)[0].rsplit(".x_", 1)[0] for name in survivors)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    judged = stats["killed"] + stats["survived"] + stats["timeout"]
    score = (stats["killed"] + stats["timeout"]) / judged if judged else float("nan")
    lines = [
        "# Mutation score of the pure core (`make mutate`)",
        "",
        f"{date.today().isoformat()}, {platform.processor() or platform.machine()}, mutmut on "
        f"{len(config['source_paths'])} source paths with their fast unit tests"
        + (f", {args.seconds / 60:.1f} min" if args.seconds else "") + ".",
        "",
        "| mutants | killed | survived | timeout (counted as killed) | no tests | score |",
        "|---|---|---|---|---|---|",
        f"| {stats['total']} | {stats['killed']} | {stats['survived']} | {stats['timeout']} | {stats['no_tests']} "
        f"| **{score:.1%}** |",
        "",
        "Modules: " + ", ".join(f"`{p.removeprefix('src/')}`" for p in config["source_paths"]) + ".",
        "",
        "Survivors by module (`mutmut show <name>` prints one):",
        "",
        *[f"- `{module}`: {n}" for module, n in by_module.most_common()],
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "mutation.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines[6:9]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
