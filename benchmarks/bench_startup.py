"""Start-up cost of the command line and of loading a config / predictor spec (goal: under 1 s each).

Each probe is a fresh Python process (what a user pays per command), run ``--repeats`` times; the
median wall time is printed with the modules the probe imported that it should not have.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from czii.cli import SUBCOMMANDS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cpu_tiny.yaml"
HEAVY = ("torch", "copick", "zarr", "segmentation_models_pytorch_3d")
HELP = "from czii.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass"
PROBES = {
    "czii --help": HELP.format(argv=["--help"]),
    **{f"czii {cmd} --help": HELP.format(argv=[cmd, "--help"]) for cmd in SUBCOMMANDS},
    "load_config": f"from czii.config import load_config\nload_config({str(CONFIG)!r})",
    "load_config + spec_from_config": ("from czii.config import load_config\n"
                                       "from czii.predictor import spec_from_config\n"
                                       f"spec_from_config(load_config({str(CONFIG)!r}), [('m.pt', 1.0)]).hash"),
}


def _run(code: str) -> tuple[float, list[str]]:
    probe = ("import contextlib, io, sys\nwith contextlib.redirect_stdout(io.StringIO()):\n"
             + "".join(f"    {line}\n" for line in code.splitlines())
             + f"print([m for m in {HEAVY!r} if m in sys.modules])")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, json.loads(proc.stdout.strip().replace("'", '"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"{args.repeats} runs each (median wall seconds of a fresh process)")
    for name, code in PROBES.items():
        _run(code)  # warm the file cache
        runs = [_run(code) for _ in range(args.repeats)]
        median = statistics.median(t for t, _ in runs)
        heavy = runs[0][1]
        print(f"  {name:32s} {median:6.2f} s  {'OK' if median < 1 else 'OVER 1 s'}"
              f"{'' if not heavy else f'  imported {heavy}'}")


if __name__ == "__main__":
    main()
