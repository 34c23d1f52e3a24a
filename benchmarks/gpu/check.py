"""One short GPU check: training speed, seconds per tomogram and memory, each against the bf16 FLOP floor.

    python benchmarks/gpu/check.py --out DIR            # on the GPU machine (see benchmarks/gpu/README.md)
    python benchmarks/gpu/check.py --dry-run --out DIR  # the same steps, tiny, on CPU (tested in the suite)

Steps, each skipped (and said so) when less than its share of ``--budget-s`` is left:

1. the machine: device, torch, CUDA, onnxruntime and its execution providers;
2. training steps/s of ``configs/resnet34.yaml``'s network (its patch and batch size, bf16 autocast, AdamW,
   the config's loss) on random patches, with peak memory and the ratio to the floor of 3 × forward FLOPs;
3. seconds per full 184×630×630 tomogram at the config's level and tiling for 1 model and for 4 models × 8-way
   TTA: torch (eager), torch.compile, and onnxruntime (TensorRT, else CUDA provider) from the model's own ONNX
   export; peak GPU memory (torch's allocator; onnxruntime's own arena is not seen by it) and the ratio of each
   time to the bf16 FLOP floor (FLOPs counted on one tile × tiles × members × TTA ÷ the device's dense peak).

Writes ``gpu_<device>.md`` and ``gpu_<device>.json`` to ``--out`` and prints the table. Only the prediction core
is imported (no copick), so the device needs just the wheels benchmarks/gpu/wheels.py collects.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_inference import build_members, device_peak, flops_per_pass, timed_run  # noqa: E402

from czii.config import load_config  # noqa: E402
from czii.geometry import CZII_SHAPE_ZYX  # noqa: E402
from czii.inference import plan_tiles  # noqa: E402
from czii.io import atomic_write_text  # noqa: E402
from czii.models import build_model, stride  # noqa: E402
from czii.particles import PARTICLE_NAMES  # noqa: E402
from czii.registry import resolve_tta  # noqa: E402
from czii.training.losses import HeatmapLoss  # noqa: E402

D4_XY = resolve_tta("full16")[:8]  # the y–x plane's 4 quarter turns and 4 flips, the 8-way TTA of the field
# share of the budget each step needs before it starts (training, then the inference variants in order)
STEP_SHARE = {"train": 0.15, "torch": 0.15, "compiled": 0.30, "onnx": 0.25}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "resnet34.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for all steps (default 480)")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--tta", default=None, help="TTA preset or comma-separated transforms of the ensemble runs "
                   "(default: the 8 quarter turns and flips of the y–x plane)")
    p.add_argument("--train-steps", type=int, default=30, help="timed training steps (after 5 warm-up steps)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, configs/cpu_tiny.yaml, a 32×96×96 volume, 2 members × 2 TTA, 2 training steps")
    args = p.parse_args()
    if args.dry_run:
        args.config, args.members, args.tta, args.train_steps = ROOT / "configs" / "cpu_tiny.yaml", 2, "flips", 2
    args.tta = resolve_tta(args.tta.split(",") if args.tta and "," in args.tta else args.tta) if args.tta else D4_XY
    return args


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.start, self.budget_s, self.skipped = time.perf_counter(), budget_s, []

    def allows(self, step: str) -> bool:
        left = self.budget_s - (time.perf_counter() - self.start)
        if left < STEP_SHARE[step] * self.budget_s:
            self.skipped.append(f"{step} ({left:.0f} s left)")
            return False
        return True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": "cpu"}
    if device.type == "cuda":
        facts.update(device=torch.cuda.get_device_name(device), bf16=torch.cuda.is_bf16_supported(),
                     memory_GiB=torch.cuda.get_device_properties(device).total_memory / 2**30)
    try:
        import onnxruntime as ort

        facts.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError:
        facts.update(onnxruntime=None, providers=[])
    return facts


def train_speed(config, device: torch.device, steps: int, peak_flops: float) -> dict:
    model = build_model(config.model, 1, len(PARTICLE_NAMES)).to(device).train()
    loss_fn = HeatmapLoss(config.loss, len(PARTICLE_NAMES)).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = config.train.batch_size
    x = torch.randn(batch, 1, *config.patch.size_zyx, device=device)
    y = torch.rand(batch, len(PARTICLE_NAMES), *config.patch.size_zyx, device=device)
    amp = device.type == "cuda"

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss_fn(out[0] if isinstance(out, tuple) else out, y).backward()
        optimiser.step()

    for _ in range(5):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    forward = flops_per_pass(model, tuple(config.patch.size_zyx), device) * batch
    floor = 3 * forward / peak_flops
    return {"precision": "bf16" if amp else "fp32", "steps_per_s": 1 / seconds, "patches_per_s": batch / seconds,
            "batch": batch,
            "patch_zyx": list(config.patch.size_zyx), "ratio_to_floor": seconds / floor,
            "peak_MB": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def infer_speed(config, args, device, runtime, peak_flops, volume, folder) -> dict:
    tta = args.tta
    plan = plan_tiles(volume.shape[1:], tuple(config.infer.tile_zyx), config.infer.overlap,
                      stride(config.model))
    knobs = argparse.Namespace(tile=config.infer.tile_zyx, overlap=config.infer.overlap, blend=config.infer.blend,
                               batch_size=config.infer.batch_size, amp="auto" if runtime != "onnx" else "off",
                               runtime=runtime)
    ensemble = build_members(config.model, args.members, runtime, folder, device)
    flops = flops_per_pass(build_model(config.model, 1, len(PARTICLE_NAMES)), plan.tile_zyx, device)
    rows = {}
    for label, chosen, names in (("1 model", ensemble[:1], ("identity",)),
                                 (f"{args.members} models × {len(tta)} TTA", ensemble, tta)):
        tz, ty, tx = plan.tile_zyx
        warm_up = np.zeros((1, tz, ty, tx * knobs.batch_size), np.float32)  # one full batch of tiles; compiles
        timed_run(chosen, warm_up, device, ("identity",), knobs)
        run = timed_run(chosen, volume, device, names, knobs)
        passes = plan.n_tiles * len(chosen) * len(names)
        run.update(passes=passes, voxels_per_s=volume[0].size / run["seconds"],
                   ratio_to_floor=run["seconds"] / (flops * passes / peak_flops))
        if device.type != "cuda" or runtime == "onnx":
            run["peak_MB"] = None  # CPU RSS is the process's, onnxruntime's arena is not torch's
        rows[label] = run
    return {"tiles": plan.n_tiles, "tile_zyx": list(plan.tile_zyx), "gflops_per_pass": flops / 1e9,
            "providers": ensemble[0].model.providers if runtime == "onnx" else None, "runs": rows}


def report(record: dict) -> str:
    m = record["machine"]
    lines = [f"# GPU check: {m['device']}", "",
             f"{record['date_utc']}; torch {m['torch']} (CUDA {m['cuda']}), onnxruntime {m['onnxruntime']} "
             f"({', '.join(m['providers']) or 'none'}); config `{record['config']}`; volume "
             f"{'×'.join(map(str, record['shape_zyx']))}; bf16 floor from {record['peak_source']} "
             f"({record['peak_tflops']:.3g} TFLOP/s){' — DRY RUN on CPU' if record['dry_run'] else ''}.", ""]
    t = record.get("train")
    if t:
        peak = "n/a" if t["peak_MB"] is None else f"{t['peak_MB']:.0f}"
        lines += ["| training | steps/s | patches/s | batch × patch | peak MB | time ÷ floor |",
                  "|---|---|---|---|---|---|",
                  f"| {t['precision']} AdamW | {t['steps_per_s']:.2f} | {t['patches_per_s']:.1f} | {t['batch']} × "
                  f"{'×'.join(map(str, t['patch_zyx']))} | {peak} | {t['ratio_to_floor']:.1f} |", ""]
    lines += ["| inference | run | s per tomogram | Mvox/s | peak MB | time ÷ floor |", "|---|---|---|---|---|---|"]
    for runtime, result in record["infer"].items():
        for label, run in result["runs"].items():
            peak = f"{run['peak_MB']:.0f}" if run["peak_MB"] is not None else "n/a"
            lines.append(f"| {runtime} | {label} | {run['seconds']:.1f} | {run['voxels_per_s'] / 1e6:.1f} | {peak} "
                         f"| {run['ratio_to_floor']:.1f} |")
    if record["skipped"]:
        lines += ["", f"Skipped for time: {', '.join(record['skipped'])}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --dry-run on CPU")
    clock = Clock(args.budget_s)
    config = load_config(args.config)
    shape = (32, 96, 96) if args.dry_run else tuple(-(-s // 2**config.data.level) for s in CZII_SHAPE_ZYX)
    peak_flops, peak_source = device_peak(argparse.Namespace(peak_tflops=None), device)
    record = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "dry_run": args.dry_run,
              "config": str(args.config.relative_to(ROOT)), "shape_zyx": list(shape), "machine": machine(device),
              "peak_tflops": peak_flops / 1e12, "peak_source": peak_source, "infer": {}, "skipped": clock.skipped}
    if clock.allows("train"):
        record["train"] = train_speed(config, device, args.train_steps, peak_flops)
    volume = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    runtimes = ["torch", "compiled", "onnx"] if not args.dry_run else ["torch", "onnx"]
    with tempfile.TemporaryDirectory() as folder:
        for runtime in runtimes:
            if runtime == "onnx" and not record["machine"]["onnxruntime"]:
                clock.skipped.append("onnx (no onnxruntime)")
            elif clock.allows(runtime):
                record["infer"][runtime] = infer_speed(config, args, device, runtime, peak_flops, volume,
                                                       Path(folder))
    slug = re.sub(r"[^a-z0-9]+", "_", record["machine"]["device"].lower()).strip("_")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"gpu_{slug}.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(args.out / f"gpu_{slug}.md", report(record))
    print(report(record))
    print(f"wrote {args.out / f'gpu_{slug}.md'} and .json in {time.perf_counter() - clock.start:.0f} s")


if __name__ == "__main__":
    main()
