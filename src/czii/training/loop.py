"""The training loop: ``train(config, fold=K, out_dir=...)`` → ``out_dir/fold<K>/``.

Per step: AdamW, learning rate by linear warm-up then cosine decay (per step), channels_last_3d
model and inputs (on 2 CPU cores 1.5× the epochs per minute of NCDHW), autocast
(bf16/fp16 on CUDA, bf16 on CPUs that compute it natively: :func:`autocast_dtype`) and a GradScaler
for fp16 on CUDA, gradient-norm clipping, and an EMA of
the weights with decay ``min(ema_decay, (1 + step) / (10 + step))`` (BN statistics are
copied). Every ``val_every`` epochs and after the last one, rank 0 predicts each held-out
run with the EMA model at the validation settings (:func:`czii.training.oof.validate`), detects
peaks at ``val.thresholds`` and scores them with :func:`czii.metric.score`; the best score keeps
``best.pt``. When the last epoch is done, ``best.pt`` predicts the held-out runs once more with
the shipped predictor spec (:func:`czii.training.oof.shipped_oof`): ``oof/candidates.csv`` (peaks
at ``val.oof_threshold``), ``oof/truth.csv`` and ``oof/spec.json``, what ``czii tune`` reads.

:class:`Trainer` holds the model, EMA, optimiser, schedule and scaler and takes one step
(``benchmarks/bench_train.py`` times it). Every epoch ends with ``checkpoints/last.pt``
holding the model, EMA, optimiser, scheduler, scaler, all RNG states, the epoch, the global
step, the history and the best score; ``resume=True`` continues from it. Patches and
augmentations depend only on ``(seed, epoch, rank, index)`` (:mod:`czii.training.data`), so
on one CPU process a resumed run reaches weights bit-identical to an uninterrupted one (on
CUDA, cuDNN autotuning makes it close but not bitwise). ``train.init_from`` starts a new run
from another run's weights (e.g. simulated-data pretraining).

Layout: :mod:`czii.rundir`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from czii import distributed as ddp
from czii import locks
from czii.config import Config, config_hash, config_to_dict, save_resolved
from czii.errors import ConfigError
from czii.io import atomic_write_text, check_output
from czii.models import build_model, output_channels, read_checkpoint, save_checkpoint, stride
from czii.particles import particle_records
from czii.rundir import RunDir, write_status
from czii.training.augment import mixup
from czii.training.data import FoldSplit, PatchDataset, check_training_inputs, load_runs, open_sources, split_fold
from czii.training.oof import ValRun, load_val_runs, shipped_oof, validate
from czii.training.losses import DeepSupervision, HeatmapLoss, activation_for
from czii.training.optim import copy_buffers, ema_update, ema_warmup_decay, lr_factor, plan_epochs

HISTORY_COLUMNS = ("epoch", "train_loss", "val_score", "lr", "seconds")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def state_sha256(*modules: torch.nn.Module) -> str:
    """SHA-256 of the state_dicts of ``modules`` (names, shapes and exact bytes)."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_run_files(config: Config, run_dir: RunDir, fold: int, ctx: ddp.DistContext, split: FoldSplit) -> None:
    """Resolved configs and seed.json, written once at the start of a run."""
    tcfg = config.train
    save_resolved(config, run_dir.config)
    save_resolved(config, run_dir.fold(fold).config)
    atomic_write_text(run_dir.fold(fold).seed, json.dumps(
        {"seed": tcfg.seed, "fold": fold, "world_size": ctx.world_size, "config_hash": config_hash(config),
         "train_runs": [f"{s}/{r}" for s, r in split.train], "val_runs": [r for _, r in split.val]}, indent=2))


def train(config: Config, *, fold: int, out_dir: str | Path, resume: bool = False, device: str = "cpu",
          workdir: str | Path | None = None, max_epochs: int | None = None, force: bool = False) -> Path:
    """Train ``fold`` of ``config`` into ``out_dir/fold<fold>``; returns that folder.

    ``max_epochs`` stops this call after that many epochs (the run continues with ``resume``).
    Each rank prints the SHA-256 of its final weights (equal on every rank). Rank 0 holds the fold's lock
    (:mod:`czii.locks`; ``force`` takes over a stale one) and refuses while another process holds the run
    directory's (a tuning or an experiment), so two trainings of one fold never mix their files, while
    folds may train side by side.
    """
    run_dir = RunDir(check_output(out_dir, "--out", kind="dir", overwrite=True))
    ctx = ddp.init_distributed(device)
    try:
        with contextlib.ExitStack() as stack:
            if ctx.is_main:
                fold_dir = run_dir.fold(fold).path
                stack.enter_context(locks.hold(locks.folder_lock(fold_dir), "fold", fold_dir, force=force))
                locks.check_free(locks.folder_lock(run_dir.path), "run directory", run_dir.path)
            return _train(config, fold, run_dir, resume, ctx, workdir, max_epochs)
    finally:
        ddp.shutdown(ctx)


def autocast_dtype(device: torch.device, config: Config) -> torch.dtype | None:
    """The autocast dtype of training steps under ``train.amp`` on ``device``, None for fp32.

    CUDA: bf16 or fp16 as asked. CPU: bf16 only where the CPU computes it natively (AVX512-BF16 or
    AMX, as oneDNN reports) and the deepest feature map of a patch is at least 3 voxels on every
    side; elsewhere, and for fp16, fp32. On a 2-core AMD EPYC with AVX512-BF16 a ``cpu_15min`` step
    took 115 ms instead of 177 ms (without native support bf16 is emulated and slow), but oneDNN's bf16
    3-D convolution returned weight gradients of ~1e32 in 2–72 % of steps where a feature map was 2
    voxels deep (torch 2.14 with 128 channels; sides of 1, 3, 4 and 8 were exact).
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.amp)
    if device.type == "cuda" or dtype is None:
        return dtype
    native = device.type == "cpu" and dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype if native and _deepest_side(config) >= 3 else None


def _deepest_side(config: Config) -> int:
    """Voxels along the shortest side of a training patch's deepest feature map."""
    return min(config.patch.size_zyx) // stride(config.model)


class Trainer:
    """Model, EMA, loss, optimiser, schedule and scaler of one run, and one optimisation step."""

    def __init__(self, config: Config, device: torch.device, ddp_enabled: bool = False,
                 spacing_zyx_A: Sequence[float] | None = None) -> None:
        self.config = config
        self.spacing_zyx_A = None if spacing_zyx_A is None else [float(s) for s in spacing_zyx_A]
        self.device = device
        tcfg = config.train
        self.activation = activation_for(config.loss.name)
        self.model = build_model(config.model, len(config.data.input_channels),
                                 output_channels(config.data.classes, self.activation)
                                 ).to(device, memory_format=torch.channels_last_3d)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if tcfg.ema_decay > 0 else None
        device_ids = [device.index] if device.type == "cuda" else None
        self.net = (DistributedDataParallel(self.model, device_ids=device_ids, broadcast_buffers=False)
                    if ddp_enabled else self.model)
        loss = HeatmapLoss(config.loss, len(config.data.classes))
        self.loss_fn = (DeepSupervision(loss) if config.model.deep_supervision else loss).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.optim.lr,
                                           weight_decay=config.optim.weight_decay)
        self.planned_epochs = tcfg.epochs  # lowered by a train.max_minutes budget (plan_epochs)
        warmup_steps = round(config.optim.warmup_epochs * tcfg.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(
            step, self.planned_epochs * tcfg.steps_per_epoch, warmup_steps, config.optim.schedule,
            config.optim.min_lr_factor))
        self.amp_dtype = autocast_dtype(device, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.global_step = 0

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model that is validated and shipped: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimisation step on a batch; returns its loss."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
        y = y.to(self.device, non_blocking=True)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        with autocast:
            logits = self.net(x)
        loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            ema_update(self.ema, self.model, ema_warmup_decay(self.config.train.ema_decay, self.global_step))
        return float(loss.detach())

    def sync_buffers(self, ctx: ddp.DistContext) -> None:
        """Average BN statistics over ranks and hand them to the EMA model."""
        ddp.average_buffers(self.model, ctx)
        if self.ema is not None:
            copy_buffers(self.ema, self.model)

    def checkpoint(self, epoch: int, val_score: float | None) -> dict:
        """Everything :func:`czii.models.load_checkpoint` needs (no resume state)."""
        config = self.config
        return {
            "model_config": dataclasses.asdict(config.model),
            "classes": list(config.data.classes),
            "input_channels": list(config.data.input_channels),
            "activation": self.activation,
            "normalisation": dataclasses.asdict(config.data.normalisation),
            "level": config.data.level,
            "spacing_zyx_A": self.spacing_zyx_A,
            "particles": particle_records(self.config.data.classes),
            "stride": stride(config.model),
            "state_dict": self.model.state_dict(),
            "ema_state_dict": self.ema.state_dict() if self.ema is not None else None,
            "epoch": epoch,
            "global_step": self.global_step,
            "val_score": val_score,
            "config": config_to_dict(config),
            "config_hash": config_hash(config),
        }

    def resume_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state()}

    def load(self, ckpt: dict) -> None:
        """Restore weights, EMA, optimiser, schedule, scaler, step count and RNG states from ``last.pt``."""
        self.model.load_state_dict(ckpt["state_dict"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema_state_dict"])
        state = ckpt["resume"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.global_step = ckpt["global_step"]
        _set_rng_state(state["rng"])

    def init_from(self, path: str) -> None:
        """Start from another run's weights (EMA when present); model, classes and inputs must match."""
        config = self.config
        ckpt = read_checkpoint(path)
        expected = (dataclasses.asdict(config.model), list(config.data.classes), list(config.data.input_channels))
        found = (ckpt["model_config"], ckpt["classes"], ckpt["input_channels"])
        if found != expected:
            raise ConfigError(f"train.init_from {path}: its model/classes/input channels {found} differ from this "
                              f"config's {expected}")
        self.model.load_state_dict(ckpt.get("ema_state_dict") or ckpt["state_dict"])
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())


def _train(config: Config, fold: int, run_dir: RunDir, resume: bool, ctx: ddp.DistContext, workdir,
           max_epochs: int | None) -> Path:
    fold_dir = run_dir.fold(fold)
    last_path, best_path = fold_dir.last, fold_dir.best
    if resume and not last_path.is_file():
        raise ConfigError(f"--resume: {last_path} does not exist; nothing to resume")
    if not resume and last_path.exists():
        raise ConfigError(f"{fold_dir.path} already holds a training run; pass --resume to continue it "
                          "or choose another --out")
    ckpt = read_checkpoint(last_path) if resume else None
    if ckpt is not None and ckpt["config_hash"] != config_hash(config):
        raise ConfigError(f"--resume: {last_path} was trained with another config (hash {ckpt['config_hash']}, "
                          f"now {config_hash(config)}); see {fold_dir.config}")
    tcfg = config.train
    _seed_everything(tcfg.seed)
    torch.backends.cudnn.benchmark = ctx.device.type == "cuda"  # fixed patch shape: let cuDNN pick kernels once
    datasets = open_sources(config, workdir)
    split = split_fold(config, datasets, fold)
    check_training_inputs(config, datasets, split)
    runs = load_runs(config, datasets, split.train, progress=ctx.is_main)
    val_runs: list[ValRun] = load_val_runs(config, datasets, fold) if ctx.is_main else []

    trainer = Trainer(config, ctx.device, ddp_enabled=ctx.enabled,
                      spacing_zyx_A=runs[0].spacing_zyx_A if runs else None)
    if ctx.is_main and tcfg.amp != "off" and trainer.amp_dtype is None:
        print(f"note: train.amp={tcfg.amp} is not used on {ctx.device.type} here (native bf16: "
              f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, deepest feature map {_deepest_side(config)} voxels, "
              "bf16 needs both and 3 or more; fp16 needs CUDA): training steps run in fp32", flush=True)
    start_epoch, history, best_score = 0, [], -math.inf
    if ckpt is not None:
        trainer.load(ckpt)
        start_epoch, history, best_score = ckpt["epoch"], ckpt["resume"]["history"], ckpt["resume"]["best_score"]
        trainer.planned_epochs = ckpt["resume"].get("planned_epochs", tcfg.epochs)
    else:
        if tcfg.init_from:
            trainer.init_from(tcfg.init_from)
        if ctx.is_main:
            _write_run_files(config, run_dir, fold, ctx, split)

    dataset = PatchDataset(config, runs, rank=ctx.rank)
    call_started = time.time()
    spent_before = sum(h["seconds"] for h in history)  # a budget counts the epochs of earlier calls too
    stop_after = trainer.planned_epochs if max_epochs is None else min(trainer.planned_epochs, start_epoch + max_epochs)
    epoch = start_epoch
    while epoch < min(stop_after, trainer.planned_epochs):
        t0 = time.time()
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=tcfg.batch_size, shuffle=False,
                                             num_workers=tcfg.num_workers, pin_memory=ctx.device.type == "cuda",
                                             drop_last=True)
        trainer.net.train()
        loss_sum = 0.0
        bar = tqdm(loader, desc=f"fold {fold} epoch {epoch + 1}/{trainer.planned_epochs}",
                   disable=None if ctx.is_main else True, leave=False)
        for step, (x, y) in enumerate(bar):
            mix_rng = np.random.default_rng([tcfg.seed, 1, epoch, ctx.rank, step])
            loss_sum += trainer.step(*mixup(x, y, mix_rng, config.augment.mixup_prob, config.augment.mixup_alpha))
            bar.set_postfix(loss=f"{loss_sum / (step + 1):.4f}")
        trainer.sync_buffers(ctx)
        train_loss = ddp.mean_across_ranks(loss_sum / tcfg.steps_per_epoch, ctx)

        val_score, improved = None, False
        if tcfg.max_minutes is not None:
            per_epoch = ddp.mean_across_ranks((time.time() - call_started) / (epoch + 1 - start_epoch), ctx)
            left = tcfg.max_minutes * 60 - spent_before - ddp.mean_across_ranks(time.time() - call_started, ctx)
            trainer.planned_epochs = plan_epochs(epoch + 1, tcfg.epochs, left, per_epoch)
        is_last = epoch + 1 == trainer.planned_epochs
        if ctx.is_main and val_runs and ((epoch + 1) % tcfg.val_every == 0 or is_last):
            val_score = validate(trainer.eval_model, val_runs, config, ctx.device)
            if val_score > best_score:
                best_score, improved = val_score, True
                save_checkpoint(best_path, trainer.checkpoint(epoch + 1, val_score))
        if ctx.is_main:
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_score": val_score,
                            "lr": trainer.optimizer.param_groups[0]["lr"], "seconds": time.time() - t0})
            state = trainer.checkpoint(epoch + 1, val_score)
            state["resume"] = {**trainer.resume_state(), "history": history, "best_score": best_score,
                               "planned_epochs": trainer.planned_epochs}
            save_checkpoint(last_path, state)
            write_status(fold_dir, epoch + 1, trainer.planned_epochs)
            _write_csv(fold_dir.history, pd.DataFrame(history, columns=list(HISTORY_COLUMNS)))
            val_text = "" if val_score is None else f", val_score {val_score:.4f}{' (best)' if improved else ''}"
            tqdm.write(f"fold {fold} epoch {epoch + 1}/{trainer.planned_epochs}: train_loss {train_loss:.4f}{val_text}")
        ddp.barrier(ctx)
        epoch += 1
    if ctx.is_main and val_runs and epoch >= trainer.planned_epochs and best_path.is_file():
        shipped_oof(config, fold_dir, val_runs, ctx.device)
    ddp.barrier(ctx)
    digest = state_sha256(trainer.model, *([trainer.ema] if trainer.ema is not None else []))
    print(f"rank {ctx.rank}/{ctx.world_size}: final weights sha256 {digest}", flush=True)
    return fold_dir.path
