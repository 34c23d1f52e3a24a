"""Benchmark czii.inference.predict_volume on one random tomogram-sized volume.

Measures seconds per tomogram for one model (no TTA) and for an ensemble × TTA, voxels/s,
peak memory (CPU: process peak RSS from getrusage, which never decreases, so the second
figure is the peak over both runs; CUDA: torch.cuda.max_memory_allocated per run), model
FLOPs per pass (FlopCounterMode on one tile) and the ratio of the measured time to the FLOP
floor (FLOPs ÷ device peak). The peak comes from --peak-tflops, else a table of dense
bf16/fp16 tensor-core figures for known GPUs, else (CPU) a measured fp32 GEMM rate.
Writes ``<out-dir>/inference_<UTC time>.json`` and appends a row to ``<out-dir>/inference.md``.

With ``--config`` the model, tile, overlap, batch size, TTA and pyramid level come from that
experiment config, and the volume is a full 184×630×630 tomogram at the config's level.

Examples: python benchmarks/bench_inference.py --config configs/cpu_tiny.yaml [--set model.output_stride=2]
          python benchmarks/bench_inference.py --device cpu --shape 184 630 630 --encoder resnet18
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from czii.config import ModelConfig, load_config
from czii.geometry import CZII_SHAPE_ZYX
from czii.io import atomic_write_text
from czii.inference import EnsembleMember, plan_tiles, predict_volume
from czii.registry import RUNTIMES, resolve_tta
from czii.inference.onnx_members import OnnxModel, export_onnx, onnx_path, onnx_session
from czii.models import build_model, save_checkpoint, stride
from czii.particles import PARTICLE_NAMES

# dense bf16/fp16 tensor-core peak, TFLOP/s, matched against torch.cuda.get_device_name()
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "T4": 65.0}
AMP = {"auto": None, "on": True, "off": False}
MD_HEADER = (
    "| date (UTC) | device | shape z,y,x | model | tile / overlap / batch | amp | members × TTA "
    "| s single | s ensemble | Mvox/s single | peak MB single / ens | GFLOP per pass "
    "| peak TFLOP/s (source) | time ÷ FLOP floor single / ens |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="take model, tiling, TTA and level from this experiment config")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, as for czii train (e.g. model.output_stride=2)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="volume shape (default: a full 184×630×630 tomogram at the config's level)")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--depth", type=int, default=5, help="encoder depth (stride 2**depth)")
    p.add_argument("--decoder-channels", type=int, nargs="+", default=None,
                   help="default: the first DEPTH of 256 128 64 32 16")
    p.add_argument("--tile", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="tile side (default: the config's infer.tile_zyx, else 64 128 128)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=None, help="tiles per batch (default: config, else 2)")
    p.add_argument("--blend", default="gaussian")
    p.add_argument("--members", type=int, default=2, help="ensemble size for the ensemble × TTA run (0: skip it)")
    p.add_argument("--tta", default=None, help="TTA preset or comma-separated names for the ensemble run "
                   "(default: the config's infer.tta, else flips)")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="members as torch modules, torch.compile'd ones, or ONNX exports run by onnxruntime")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak used for the FLOP floor")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    level = 0
    if args.config:
        config = load_config(args.config, args.set)
        args.model_cfg = config.model
        args.tile = args.tile or config.infer.tile_zyx
        args.batch_size = args.batch_size or config.infer.batch_size
        args.overlap, args.blend = config.infer.overlap, config.infer.blend
        args.tta = args.tta or config.infer.tta
        level = config.data.level
    else:
        args.model_cfg = ModelConfig(encoder_name=args.encoder, encoder_depth=args.depth,
                                     decoder_channels=args.decoder_channels or [256, 128, 64, 32, 16][: args.depth],
                                     decoder_attention_type=None)
    args.tta = args.tta or "flips"
    args.tile = args.tile or [64, 128, 128]
    args.batch_size = args.batch_size or 2
    args.encoder, args.depth = args.model_cfg.encoder_name, args.model_cfg.encoder_depth
    args.shape = args.shape or [-(-side // 2**level) for side in CZII_SHAPE_ZYX]
    return args


def build_members(model_cfg: ModelConfig, n: int, runtime: str = "torch", folder: Path | None = None,
                  device: torch.device = torch.device("cpu")) -> list[EnsembleMember]:
    """``n`` random-weight members of ``model_cfg``: torch modules (``torch``), compiled ones (``compiled``) or
    their ONNX exports run by onnxruntime (``onnx``: checkpoints and exports are written to ``folder``)."""
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = build_model(model_cfg, 1, len(PARTICLE_NAMES))
        if runtime == "onnx":
            ckpt = folder / f"member{seed}.pt"
            save_checkpoint(ckpt, {"model_config": dataclasses.asdict(model_cfg), "classes": list(PARTICLE_NAMES),
                                   "input_channels": ["denoised"], "activation": "sigmoid",
                                   "state_dict": model.state_dict()})
            export_onnx(ckpt, overwrite=True)
            model = OnnxModel(onnx_session(onnx_path(ckpt), device))
        elif runtime == "compiled":
            model = torch.compile(model.to(device).eval())
        members.append(EnsembleMember(model, PARTICLE_NAMES, ("denoised",), "sigmoid", stride=stride(model_cfg),
                                      name=f"{model_cfg.encoder_name}-{runtime}-seed{seed}"))
    return members


def flops_per_pass(model: torch.nn.Module, tile_zyx: tuple[int, int, int], device: torch.device) -> int:
    x = torch.zeros(1, 1, *tile_zyx, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.to(device).eval()(x)
    return counter.get_total_flops()


def device_peak(args: argparse.Namespace, device: torch.device) -> tuple[float, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "command line"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"table: {name} dense bf16/fp16"
        raise SystemExit(f"no peak FLOP/s known for {name!r}: pass --peak-tflops")
    a = torch.randn(2048, 2048)
    best_s = float("inf")
    for _ in range(8):
        start = time.perf_counter()
        torch.mm(a, a)
        best_s = min(best_s, time.perf_counter() - start)
    return 2 * 2048**3 / best_s, "measured fp32 GEMM, best of 8"


def timed_run(members, volume, device, tta, args) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    predict_volume(members, volume, tile_zyx=tuple(args.tile), overlap=args.overlap, blend=args.blend,
                   batch_size=args.batch_size, tta=tta, device=device, amp=AMP[args.amp],
                   channels_last=args.runtime != "onnx", progress=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak_bytes = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"seconds": seconds, "peak_MB": peak_bytes / 2**20,
            "peak_RSS_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tta = resolve_tta(args.tta if "," not in args.tta else args.tta.split(","))
    folder = tempfile.TemporaryDirectory()
    members = build_members(args.model_cfg, max(args.members, 1), args.runtime, Path(folder.name), device)
    volume = np.random.default_rng(0).normal(size=(1, *args.shape)).astype(np.float32)
    plan = plan_tiles(tuple(args.shape), tuple(args.tile), args.overlap, members[0].stride)
    # counted on a torch module of the same network: onnxruntime's and compiled graphs hide their ops from torch
    flops = flops_per_pass(build_model(args.model_cfg, 1, len(PARTICLE_NAMES)), plan.tile_zyx, device)
    peak_flops, peak_source = device_peak(args, device)
    tz, ty, tx = plan.tile_zyx
    warm_up = np.zeros((1, tz, ty, tx * args.batch_size), np.float32)  # exactly one full batch of tiles
    predict_volume(members[:1], warm_up, tile_zyx=plan.tile_zyx, overlap=0.0, batch_size=args.batch_size,
                   device=device, amp=AMP[args.amp])
    baseline_rss_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    single = timed_run(members[:1], volume, device, ("identity",), args)
    ensemble = timed_run(members, volume, device, tta, args) if args.members else None
    voxels = int(np.prod(args.shape))
    runs = [(single, plan.n_tiles)] + ([(ensemble, plan.n_tiles * len(members) * len(tta))] if ensemble else [])
    for run, passes in runs:
        run["passes"] = passes
        run["voxels_per_s"] = voxels / run["seconds"]
        run["flops"] = flops * passes
        run["flop_floor_s"] = run["flops"] / peak_flops
        run["ratio_to_floor"] = run["seconds"] / run["flop_floor_s"]

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu {platform.processor() or platform.machine()} × {torch.get_num_threads()} threads")
    record = {
        "date_utc": stamp, "device": device_name, "torch": torch.__version__, "shape_zyx": args.shape,
        "encoder": args.encoder, "depth": args.depth, "runtime": args.runtime,
        "output_stride": args.model_cfg.output_stride, "tile_zyx": list(plan.tile_zyx),
        "overlap": args.overlap,
        "batch_size": args.batch_size, "blend": args.blend, "amp": args.amp, "members": args.members,
        "tta": list(tta), "tiles": plan.n_tiles, "flops_per_pass": flops, "peak_flops": peak_flops,
        "peak_source": peak_source, "baseline_rss_MB": baseline_rss_MB, "single": single, "ensemble": ensemble,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / f"inference_{stamp}.json"
    atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
    md_path = args.out_dir / "inference.md"
    ens = ensemble or {"seconds": float("nan"), "peak_MB": float("nan"), "ratio_to_floor": float("nan")}
    row = (
        f"| {stamp} | {device_name} | {'×'.join(map(str, args.shape))} | {args.encoder} d{args.depth}"
        f"{'' if args.model_cfg.output_stride == 1 else f' os{args.model_cfg.output_stride}'}"
        f"{'' if args.runtime == 'torch' else f' ({args.runtime})'} "
        f"| {'×'.join(map(str, plan.tile_zyx))} / {args.overlap} / {args.batch_size} | {args.amp} "
        f"| {args.members} × {len(tta)} | {single['seconds']:.1f} | {ens['seconds']:.1f} "
        f"| {single['voxels_per_s'] / 1e6:.2f} | {single['peak_MB']:.0f} / {ens['peak_MB']:.0f} "
        f"| {flops / 1e9:.1f} | {peak_flops / 1e12:.2f} ({peak_source}) "
        f"| {single['ratio_to_floor']:.1f} / {ens['ratio_to_floor']:.1f} |\n"
    )
    with md_path.open("a") as md:
        if md_path.stat().st_size == 0:
            md.write(MD_HEADER)
        md.write(row)
    print(json.dumps(record, indent=2))
    print(f"wrote {json_path} and a row in {md_path}")


if __name__ == "__main__":
    main()
