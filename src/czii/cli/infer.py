"""``czii infer``: predict a dataset with trained models; writes a submission CSV and its manifest.

Under ``torchrun`` the runs are shared out over the processes and rank 0 writes the outputs
(``torchrun --nproc_per_node N -m czii infer ...``).
"""

from __future__ import annotations

import argparse

from czii.cli import add_device_argument, add_force_argument
from czii.registry import RUNTIMES, TTA_PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, nargs="+", metavar="PATH",
                        help="a training run directory (every fold's best.pt; its thresholds.json), "
                             "checkpoint files (equal weights) or a predictor spec / ensemble YAML")
    parser.add_argument("--data", required=True,
                        help="a copick config JSON, a Kaggle competition directory or one of its split folders, "
                             "or a folder / quoted glob of .mrc/.rec tomograms or bare .zarr OME-Zarr stores "
                             "(run name = file stem)")
    parser.add_argument("--voxel-size", type=float, metavar="ANGSTROM",
                        help="voxel size of MRC/OME-Zarr inputs, overriding their headers (refused for copick "
                             "and Kaggle data); tomograms are resampled to the models' voxel size")
    parser.add_argument("--split", choices=("train", "test"), default="test",
                        help="split of a Kaggle competition directory (default: test)")
    parser.add_argument("--runs", nargs="+", metavar="RUN", help="runs to predict (default: every run)")
    parser.add_argument("--tta", metavar="PRESET",
                        help=f"TTA preset ({', '.join(TTA_PRESETS)}) or comma-separated transforms; "
                             "default: the spec's. Changes scores: tuned thresholds are then refused "
                             "unless --allow-spec-mismatch")
    parser.add_argument("--thresholds", metavar="FILE",
                        help="thresholds JSON from `czii tune` (default: the models' thresholds.json, else defaults)")
    parser.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="sliding-window tile (multiples of the network stride; default: the checkpoint's "
                             "infer.tile_zyx); e.g. 64 128 128 keeps a full tomogram under 8 GB of RAM on CPU")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default: the checkpoint's)")
    parser.add_argument("--allow-spec-mismatch", action="store_true",
                        help="use thresholds tuned under another predictor spec (other TTA, tiles, ...); the "
                             "manifest records it. Without it such thresholds are refused")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="use models whose training did not run every planned epoch; the manifest records it")
    parser.add_argument("--nan-policy", choices=("error", "repair"),
                        help="non-finite voxels: stop (error) or replace them by the finite mean (repair); "
                             "default: the spec's data.nan_policy")
    add_device_argument(parser)
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch",
                        help="run the members with torch (default), through torch.compile (compiling takes a "
                             "while; pays off over many tomograms on a GPU), or their ONNX exports through "
                             "onnxruntime (`czii export-model --format onnx` first; CPU, CUDA or TensorRT providers)")
    parser.add_argument("--prefetch", choices=("auto", "on", "off"), default="auto",
                        help="read the next run and find the previous run's peaks in background threads while the "
                             "model predicts (auto: on CUDA only; the same picks either way)")
    parser.add_argument("--copick-user", help="also write the picks into the dataset's copick overlay as this user")
    parser.add_argument("--copick-session", default="0", help="copick session id of those picks (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out CSV, its manifest and score sidecar")
    add_force_argument(parser)
    parser.add_argument("--out", required=True, metavar="CSV",
                        help="submission CSV to write, e.g. submissions/<name>.csv (manifest: <CSV>.manifest.json)")


def run(args: argparse.Namespace) -> int:
    from czii.distributed import launched_rank
    from czii.inference.pipeline import run_inference
    from czii.submission import manifest_path, scores_path

    tta = args.tta.split(",") if args.tta and "," in args.tta else args.tta
    result = run_inference(
        args.models, args.data, split=args.split, runs=args.runs, out_csv=args.out, tta=tta,
        thresholds=args.thresholds, device=args.device, copick_user=args.copick_user,
        copick_session=args.copick_session, tile_zyx=args.tile, batch_size=args.batch_size,
        allow_spec_mismatch=args.allow_spec_mismatch, overwrite=args.overwrite, nan_policy=args.nan_policy,
        allow_unfinished=args.allow_unfinished, voxel_size_A=args.voxel_size, force=args.force,
        runtime=args.runtime, prefetch={"auto": None, "on": True, "off": False}[args.prefetch],
    )
    if launched_rank() == 0:
        m = result.manifest
        counts = ", ".join(f"{name} {n}" for name, n in m["picks_per_class"].items())
        print(f"{len(m['data']['runs'])} runs, {m['n_picks']} picks ({counts}) in {m['total_seconds']:.1f} s "
              f"on {m['device']} x{m['world_size']}; predictor spec {m['spec_hash']}; thresholds: "
              f"{m['thresholds']['source']} ({m['thresholds']['spec_check']})")
        print(f"wrote {args.out}, {manifest_path(args.out)} and {scores_path(args.out)} (scores)")
    return 0
