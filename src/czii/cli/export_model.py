"""``czii export-model``: write every member of a predictor as ONNX beside its checkpoint, for
``czii infer --runtime onnx`` (onnxruntime: CPU, CUDA or TensorRT)."""

from __future__ import annotations

import argparse

from czii.cli import add_force_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, nargs="+", metavar="PATH",
                        help="a training run directory, checkpoint files or a predictor spec / ensemble YAML "
                             "(as for `czii infer`)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="also export members whose training did not run every planned epoch")
    parser.add_argument("--overwrite", action="store_true", help="replace existing exports")
    add_force_argument(parser)


def run(args: argparse.Namespace) -> int:
    from czii import locks
    from czii.inference.onnx_members import export_onnx, onnx_path
    from czii.inference.pipeline import resolve_predictor

    spec, _, _ = resolve_predictor(args.models, allow_unfinished=args.allow_unfinished)
    for member in spec.members:
        out = onnx_path(member.checkpoint)
        with locks.hold(locks.sibling_lock(out), "ONNX export", out, force=args.force):
            path, record = export_onnx(member.checkpoint, overwrite=args.overwrite)
        print(f"wrote {path} (opset {record.opset}; onnxruntime vs torch logits within "
              f"{record.max_abs_logit_diff:.2g} on a {'×'.join(map(str, record.check_tile_zyx))} tile)")
    return 0
