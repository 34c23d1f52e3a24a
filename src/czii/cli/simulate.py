"""``czii simulate``: write a simulated CZII dataset (copick project + Kaggle layout) and summarise it."""

from __future__ import annotations

import argparse
import time

from czii.particles import PARTICLE_NAMES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    parser.add_argument("--preset", default="small",
                        help="starting config: tiny, small, full or portal (default: small; see czii.simulate)")
    parser.add_argument("--family", help="world of scenes and imaging: A, B or C (default: the preset's own; "
                        "families differ in particle models, decoys and imaging, see czii.simulate.config.FAMILIES)")
    parser.add_argument("--n-train", type=int, help="number of training runs")
    parser.add_argument("--n-test", type=int, help="number of test runs")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="tomogram size in voxels")
    parser.add_argument("--snr", type=float, help="signal-to-noise ratio of the denoised tomograms")
    parser.add_argument("--contrast", type=float, help="particle contrast factor (default 1)")
    parser.add_argument("--density-scale", type=float, help="particle density relative to the real runs (crowding)")
    parser.add_argument("--ice-gradient", type=float,
                        help="ice thickness ramp across the field, in tomogram standard deviations (default 0)")
    parser.add_argument("--intensity-scale-log10", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of log10 of each tomogram's intensity scale (default -6 -3)")
    parser.add_argument("--intensity-offset", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of each tomogram's offset, in units of its scale (default -2 2)")
    parser.add_argument("--voxel-size", type=float, help="voxel size in Å (default 10.012, the CZII level 0)")
    parser.add_argument("--seed", type=int, help="random seed (same seed, same bytes)")
    parser.add_argument("--layout", choices=["random", "real"], help="random particles, or a real run's picks")
    parser.add_argument("--types", nargs="+", help="tomogram types of the training runs (denoised, wbp, "
                        "ctfdeconvolved, isonetcorrected)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous simulation in --out")


def run(args: argparse.Namespace) -> int:
    from czii.simulate import SimConfig, simulate_dataset  # copick, zarr: only when simulating

    overrides = {
        "n_train": args.n_train, "n_test": args.n_test, "shape_zyx": args.shape, "snr": args.snr,
        "seed": args.seed, "layout": args.layout, "types": args.types, "contrast": args.contrast,
        "density_scale": args.density_scale, "ice_gradient": args.ice_gradient,
        "intensity_scale_log10": args.intensity_scale_log10, "intensity_offset": args.intensity_offset,
        "spacing_zyx_A": args.voxel_size,
    }
    config = SimConfig.preset(args.preset, args.family, **{k: v for k, v in overrides.items() if v is not None})
    start = time.perf_counter()
    result = simulate_dataset(args.out, config, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    shape = "×".join(map(str, config.shape_zyx))
    print(
        f"simulated {len(result.train_runs)} train + {len(result.test_runs)} test runs of {shape} voxels "
        f"({', '.join(config.types)}) in {seconds:.1f} s"
    )
    split = result.picks["experiment"].isin(result.train_runs).map({True: "train", False: "test"})
    counts = result.picks.groupby([result.picks["particle_type"], split]).size()
    print(f"  {'particle':<22}{'train':>7}{'test':>7}")
    for name in PARTICLE_NAMES:
        print(f"  {name:<22}{counts.get((name, 'train'), 0):>7}{counts.get((name, 'test'), 0):>7}")
    print(f"  copick config: {result.copick_config}")
    print(f"  kaggle dir:    {result.kaggle_dir}")
    print(f"  solution:      {result.solution_csv}")
    print(f"  parameters:    {result.out_dir / 'simulation.json'}")
    return 0
