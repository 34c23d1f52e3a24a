"""Training throughput of a config: patches/s, step time, time per epoch and peak memory.

Runs the real training pieces (:class:`czii.training.data.PatchDataset` through a DataLoader,
:class:`czii.training.loop.Trainer` steps) on the training runs of one fold, after a few
warm-up steps, and writes a Markdown report naming the device:

    .venv/bin/python benchmarks/bench_train.py --config configs/cpu_tiny.yaml \
        --data work/sim/copick_config.json --out benchmarks/train_cpu.md

Validation is not timed (see history.csv ``seconds`` for whole epochs).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from czii import distributed as ddp
from czii.config import config_hash, load_config, with_data_paths
from czii.io import atomic_write_text
from czii.training.augment import mixup
from czii.training.data import PatchDataset, load_runs, open_sources, split_fold
from czii.training.loop import Trainer


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return platform.processor() or "unknown CPU"


def _batches(dataset: PatchDataset, config, n: int):
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.train.batch_size,
                                         num_workers=config.train.num_workers, drop_last=True)
    for step, batch in enumerate(loader):
        if step == n:
            return
        yield step, batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", nargs="+", metavar="PATH")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--out", help="write the Markdown report here (also printed)")
    args = parser.parse_args(argv)

    config = load_config(args.config, args.overrides)
    if args.data:
        config = with_data_paths(config, args.data)
    device = ddp.resolve_device(args.device)
    torch.manual_seed(config.train.seed)
    datasets = open_sources(config)
    runs = load_runs(config, datasets, split_fold(config, datasets, args.fold).train, progress=False)
    dataset = PatchDataset(config, runs)
    trainer = Trainer(config, device)
    trainer.net.train()
    total = args.warmup + args.steps
    if len(dataset) < total * config.train.batch_size:
        parser.error(f"an epoch has {config.train.steps_per_epoch} steps, fewer than --warmup + --steps = {total}")

    t_data = time.perf_counter()
    for _ in _batches(dataset, config, total):
        pass
    data_s = time.perf_counter() - t_data

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, t_start = [], 0.0
    for step, (x, y) in _batches(dataset, config, total):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t_start = time.perf_counter()
        rng = np.random.default_rng([config.train.seed, 1, 0, 0, step])
        losses.append(trainer.step(*mixup(x, y, rng, config.augment.mixup_prob, config.augment.mixup_alpha)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - t_start

    batch = config.train.batch_size
    step_s = train_s / args.steps
    if device.type == "cuda":
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU (max allocated)"
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
        memory = f"{peak_gib:.2f} GiB RSS (whole process, data included)"
    params = sum(p.numel() for p in trainer.model.parameters())
    report = "\n".join([
        f"# Training throughput: {Path(args.config).name}",
        "",
        f"- device: {device_name(device)}",
        f"- torch {torch.__version__}, amp {trainer.amp_dtype or 'off'}, config hash {config_hash(config)}",
        f"- model: {config.model.encoder_name}, depth {config.model.encoder_depth}, decoder "
        f"{config.model.decoder_channels}, {params / 1e6:.2f} M parameters",
        f"- patches {config.patch.size_zyx} (z, y, x), batch {batch}, {len(runs)} training runs of "
        f"{'; '.join(sorted({'x'.join(map(str, r.volume.shape[1:])) for r in runs}))} voxels "
        f"(pyramid level {config.data.level})",
        f"- {args.steps} timed steps after {args.warmup} warm-up steps; data loader workers {config.train.num_workers}",
        "",
        "| measure | value |",
        "|---|---|",
        f"| training throughput | {args.steps * batch / train_s:.2f} patches/s |",
        f"| time per step (data + forward + backward + optimiser + EMA) | {step_s:.3f} s |",
        f"| time per epoch ({config.train.steps_per_epoch} steps, without validation) | "
        f"{step_s * config.train.steps_per_epoch:.1f} s |",
        f"| patch generation alone | {total * batch / data_s:.1f} patches/s |",
        f"| peak memory | {memory} |",
        f"| loss, first → last timed step | {losses[args.warmup]:.4f} → {losses[-1]:.4f} |",
        "",
    ])
    print(report)
    if args.out:
        atomic_write_text(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
