"""Native vs resampled input: one trained run directory, the same simulated test scenes as CZII OME-Zarr
(native, 10.012 Å) and as MRC folders resampled to other voxel sizes (7.84 Å and 13.48 Å by default).

    .venv/bin/python benchmarks/spacing.py --run-dir work/bench_accuracy/runs/<name> \\
        --data work/bench_accuracy/sim_same [--voxel-sizes 7.84 13.48]

Prints and writes (``benchmarks/results/spacing_<run>.md``) the weighted F4 of each input against the
same truth (Å), and the median distance between native picks and their nearest resampled pick of the
same class, in units of the class radius.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from czii.data import load_solution, open_dataset
from czii.formats.mrc import write_mrc
from czii.geometry import resample_zyx
from czii.inference import run_inference
from czii.metric import score
from czii.particles import BY_NAME
from czii.submission import read_submission

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a simulator output folder (kaggle/ inside)")
    parser.add_argument("--voxel-sizes", type=float, nargs="+", default=[7.84, 13.48])
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "bench_spacing")
    args = parser.parse_args()

    kaggle = args.data / "kaggle"
    solution = load_solution(kaggle / "solution.csv")
    dataset = open_dataset(kaggle, split="test")
    results = {}
    native_csv = args.work / "native.csv"
    run_inference(args.run_dir, kaggle, split="test", out_csv=native_csv, device="cpu", progress=False,
                  overwrite=True)
    native = read_submission(native_csv)
    results["native 10.012 Å (OME-Zarr)"] = (score(solution, native).score, 0.0)
    for voxel in args.voxel_sizes:
        folder = args.work / f"mrc_{voxel:g}"
        folder.mkdir(parents=True, exist_ok=True)
        for run in dataset.runs():
            volume = dataset.tomogram(run, level=0)
            write_mrc(folder / f"{run}.mrc", resample_zyx(volume.data, volume.spacing_zyx_A, voxel), voxel)
        out = args.work / f"mrc_{voxel:g}.csv"
        run_inference(args.run_dir, folder, out_csv=out, device="cpu", progress=False, overwrite=True)
        picks = read_submission(out)
        distances = []
        for (run, cls), rows in native.groupby(["experiment", "particle_type"]):
            other = picks[(picks["experiment"] == run) & (picks["particle_type"] == cls)]
            if len(other):
                d, _ = cKDTree(other[["x", "y", "z"]].to_numpy()).query(rows[["x", "y", "z"]].to_numpy())
                distances.extend(d / BY_NAME[cls].radius_A)
        results[f"MRC resampled to {voxel:g} Å"] = (score(solution, picks).score, float(np.median(distances)))
    lines = [f"# spacing_{args.run_dir.name}: native vs resampled input, `{args.data}` test runs", "",
             "| input | weighted F4 | median distance to the native pick (× radius) |", "|---|---|---|"]
    lines += [f"| {name} | {f4:.3f} | {d:.3f} |" for name, (f4, d) in results.items()]
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / f"spacing_{args.run_dir.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
