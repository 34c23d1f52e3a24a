"""``czii train`` on the tiny simulated dataset: run directory, loss, checkpoints, resume equality, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from czii.cli import main
from czii.config import load_config, with_data_paths
from czii.errors import ConfigError, CziiError
from czii.models import build_model, load_checkpoint, output_channels, read_checkpoint
from czii.training.data import PatchDataset, load_runs, open_sources, split_fold
from czii.training.losses import HeatmapLoss
from czii.training.loop import Trainer, autocast_dtype, train

CPU_TINY = Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml"


def _config(tiny_sim, *overrides):
    sets = ["patch.size_zyx=[16,32,32]", "train.val_every=1", "val.tile_zyx=[16,48,48]", *overrides]
    return with_data_paths(load_config(CPU_TINY, sets), [tiny_sim.copick_config])


def _fixed_batch_loss(config, state_dict, tiny_sim) -> float:
    datasets = open_sources(config)
    runs = load_runs(config, datasets, split_fold(config, datasets, 0).train, progress=False)
    data = PatchDataset(config, runs)
    data.set_epoch(1000)
    x, y = (torch.stack(t) for t in zip(*(data[i] for i in range(6))))
    model = build_model(config.model, 1, output_channels(config.data.classes, "sigmoid"))
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        return float(HeatmapLoss(config.loss, len(config.data.classes))(model(x), y))


def test_cli_train_writes_the_run_directory_and_lowers_the_loss(tiny_sim, tmp_path, capsys):
    out = tmp_path / "runs" / "tiny"
    rc = main(["train", "--config", str(CPU_TINY), "--data", str(tiny_sim.copick_config), "--out", str(out),
               "--fold", "1", "--device", "cpu", "--set", "train.epochs=1", "train.steps_per_epoch=12",
               "patch.size_zyx=[16,32,32]", "val.tile_zyx=[16,48,48]"])
    assert rc == 0
    fold = out / "fold1"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(fold)
    for name in ("config.yaml", "seed.json", "history.csv", "checkpoints/last.pt", "checkpoints/best.pt",
                 "oof/candidates.csv", "oof/truth.csv"):
        assert (fold / name).is_file(), name
    config = load_config(fold / "config.yaml")
    assert config == load_config(out / "config.yaml")
    assert config.train.steps_per_epoch == 12 and config.data.sources[0].path == str(tiny_sim.copick_config)

    history = pd.read_csv(fold / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_score", "lr", "seconds"]
    assert len(history) == 1 and 0 <= history.val_score[0] <= 1

    held_out = sorted(tiny_sim.train_runs)[1]
    truth = pd.read_csv(fold / "oof" / "truth.csv")
    expected = tiny_sim.picks[tiny_sim.picks.experiment == held_out]
    assert set(truth.experiment) == {held_out} and len(truth) == len(expected)
    candidates = pd.read_csv(fold / "oof" / "candidates.csv")
    assert list(candidates.columns) == ["experiment", "particle_type", "x", "y", "z", "score"]
    assert set(candidates.experiment) <= {held_out}
    assert (candidates.score >= config.val.oof_threshold).all()

    model, meta = load_checkpoint(fold / "checkpoints" / "best.pt")
    assert meta["classes"] == config.data.classes and meta["activation"] == "sigmoid"
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 32, 24)).shape == (1, 6, 16, 32, 24)

    torch.manual_seed(config.train.seed)
    initial = build_model(config.model, 1, 6).state_dict()
    trained = read_checkpoint(fold / "checkpoints" / "last.pt")["state_dict"]
    assert _fixed_batch_loss(config, trained, tiny_sim) < 0.8 * _fixed_batch_loss(config, initial, tiny_sim)


def test_resume_reaches_bit_identical_weights(tiny_sim, tmp_path):
    config = _config(tiny_sim, "train.epochs=2", "train.steps_per_epoch=4", "augment.small_rotation_deg=10",
                     "augment.mixup_prob=0.5")
    straight = train(config, fold=0, out_dir=tmp_path / "straight")
    train(config, fold=0, out_dir=tmp_path / "resumed", max_epochs=1)
    first_half = read_checkpoint(tmp_path / "resumed" / "fold0" / "checkpoints" / "last.pt")
    assert first_half["epoch"] == 1
    resumed = train(config, fold=0, out_dir=tmp_path / "resumed", resume=True)

    a = read_checkpoint(straight / "checkpoints" / "last.pt")
    b = read_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 8
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert not torch.equal(first_half["state_dict"]["segmentation_head.0.weight"],
                           b["state_dict"]["segmentation_head.0.weight"])
    moments_a = a["resume"]["optimizer"]["state"]
    moments_b = b["resume"]["optimizer"]["state"]
    assert all(torch.equal(moments_a[k]["exp_avg"], moments_b[k]["exp_avg"]) for k in moments_a)
    ha, hb = pd.read_csv(straight / "history.csv"), pd.read_csv(resumed / "history.csv")
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))


def test_a_training_step_in_channels_last_memory_computes_the_ncdhw_step(tiny_sim):
    config = _config(tiny_sim, "optim.grad_clip=0")
    torch.manual_seed(0)
    trainer = Trainer(config, torch.device("cpu"))
    reference = build_model(config.model, 1, 6)
    reference.load_state_dict(trainer.model.state_dict())
    conv = trainer.model.encoder.layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert reference.encoder.layer1[0].conv1.weight.is_contiguous()
    x = torch.randn(2, 1, 16, 32, 32)
    y = torch.rand(2, 6, 16, 32, 32)
    loss = trainer.step(x, y)
    ref_loss = HeatmapLoss(config.loss, 6)(reference(x), y)
    ref_loss.backward()
    assert loss == pytest.approx(float(ref_loss), rel=1e-5)
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        # float32 sums in another order per layout; batch-2 BN amplifies that to ~1e-3 in the deepest layers
        error = float((p.grad - q.grad).norm() / q.grad.norm())
        assert error < 1e-2, f"{name}: gradient differs by {error:.1e} of its norm"


def test_bf16_autocast_on_a_cpu_that_computes_it_natively_follows_the_fp32_step(tiny_sim):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    config = _config(tiny_sim, "optim.grad_clip=0", "train.amp=bf16", "patch.size_zyx=[24,48,48]")
    assert autocast_dtype(cuda, config) == torch.bfloat16
    assert autocast_dtype(cuda, _config(tiny_sim, "train.amp=fp16")) == torch.float16
    assert autocast_dtype(cpu, _config(tiny_sim, "train.amp=fp16")) is None
    assert autocast_dtype(cpu, _config(tiny_sim, "train.amp='off'")) is None
    # 16×32×32 patches leave a 2×4×4 deepest map, where oneDNN's bf16 weight gradients go wrong
    assert autocast_dtype(cpu, _config(tiny_sim, "train.amp=bf16")) is None
    torch.manual_seed(0)
    trainer = Trainer(config, cpu)
    assert trainer.amp_dtype == (torch.bfloat16 if native else None)
    reference = build_model(config.model, 1, 6)
    reference.load_state_dict(trainer.model.state_dict())
    x = torch.randn(2, 1, 24, 48, 48)
    y = torch.rand(2, 6, 24, 48, 48)
    loss = trainer.step(x, y)
    ref_loss = HeatmapLoss(config.loss, 6)(reference(x), y)
    ref_loss.backward()
    assert loss == pytest.approx(float(ref_loss.detach()), rel=0.02)
    for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
        assert p.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        cosine = float(torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0))
        assert cosine > 0.9, f"{name}: bf16 gradient points elsewhere (cosine {cosine:.3f})"


def test_an_amp_that_cannot_run_here_is_named_not_dropped_silently(tiny_sim, tmp_path, capsys):
    # 16×32×32 patches leave a 2-voxel-deep feature map: fp32 on every CPU, and the log says so
    config = _config(tiny_sim, "train.amp=bf16", "train.epochs=1", "train.steps_per_epoch=1")
    train(config, fold=0, out_dir=tmp_path / "a")
    out = capsys.readouterr().out
    assert "train.amp=bf16 is not used on cpu" in out and "deepest feature map 2 voxels" in out


def test_refuses_unknown_fold_existing_run_and_changed_config(tiny_sim, tmp_path):
    config = _config(tiny_sim, "train.epochs=1", "train.steps_per_epoch=1")
    with pytest.raises(ConfigError, match="fold 7 does not exist"):
        train(config, fold=7, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(config, fold=0, out_dir=tmp_path / "a", resume=True)
    train(config, fold=0, out_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="--resume"):
        train(config, fold=0, out_dir=tmp_path / "a")
    changed = _config(tiny_sim, "train.epochs=2", "train.steps_per_epoch=1")
    with pytest.raises(ConfigError, match="another config"):
        train(changed, fold=0, out_dir=tmp_path / "a", resume=True)
    assert np.isfinite(pd.read_csv(tmp_path / "a" / "fold0" / "history.csv").train_loss).all()


def test_init_from_starts_from_another_runs_weights(tiny_sim, tmp_path):
    source = train(_config(tiny_sim, "train.epochs=1", "train.steps_per_epoch=2"), fold=0, out_dir=tmp_path / "pre")
    best = source / "checkpoints" / "best.pt"
    frozen = _config(tiny_sim, "train.epochs=1", "train.steps_per_epoch=2", "optim.lr=0.0", f"train.init_from={best}")
    fold = train(frozen, fold=1, out_dir=tmp_path / "fine")
    start, after = read_checkpoint(best)["ema_state_dict"], read_checkpoint(fold / "checkpoints" / "last.pt")
    trained_names = {name for name, _ in build_model(frozen.model, 1, 6).named_parameters()}
    for name in trained_names:
        assert torch.equal(after["state_dict"][name], start[name]), name
    other = _config(tiny_sim, "model.decoder_channels=[16,16,8]", f"train.init_from={best}")
    with pytest.raises(ConfigError, match="init_from"):
        train(other, fold=1, out_dir=tmp_path / "other")


def test_a_wall_clock_budget_stops_cleanly_with_a_best_checkpoint_and_oof(tiny_sim, tmp_path):
    config = _config(tiny_sim, "train.epochs=50", "train.steps_per_epoch=2", "train.max_minutes=0.05",
                     "infer.tile_zyx=[16,48,48]")
    fold = Path(train(config, fold=0, out_dir=tmp_path / "budget"))
    history = pd.read_csv(fold / "history.csv")
    status = json.loads((fold / "status.json").read_text())
    assert 1 <= len(history) < 50 and status == {"planned_epochs": len(history), "done_epochs": len(history),
                                                  "finished": True}
    assert history["val_score"].notna().iloc[-1], "the last epoch of a budgeted run is validated"
    assert (fold / "checkpoints" / "best.pt").is_file() and (fold / "oof" / "spec.json").is_file()
    assert history["seconds"].sum() < 0.05 * 60 + 2 * history["seconds"].max(), "stopped within about an epoch"


def test_deep_supervision_trains_its_coarse_heads_and_ships_a_plain_predictor(tiny_sim, tmp_path):
    config = _config(tiny_sim, "model.deep_supervision=true", "loss.name=ce", "targets.kind=sphere",
                     "augment.mixup_prob=1.0", "train.epochs=1", "train.steps_per_epoch=4")
    torch.manual_seed(config.train.seed)
    initial = build_model(config.model, 1, output_channels(config.data.classes, "softmax")).state_dict()
    fold = train(config, fold=0, out_dir=tmp_path / "run", device="cpu")
    trained = read_checkpoint(fold / "checkpoints" / "last.pt")["state_dict"]
    heads = [k for k in trained if k.startswith("aux_heads.")]
    assert len(heads) == 2 * (config.model.encoder_depth - 1)  # weight and bias per coarse level
    assert all(not torch.equal(trained[k], initial[k]) for k in heads)
    assert np.isfinite(pd.read_csv(fold / "history.csv")["train_loss"]).all()
    oof_spec = json.loads((fold / "oof" / "spec.json").read_text())  # the OOF pass ran the model in eval mode
    assert oof_spec["predict_seconds"] > 0 and (fold / "oof" / "candidates.csv").is_file()
    model, _ = load_checkpoint(fold / "checkpoints" / "best.pt")
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 32, 32)).shape == (1, 7, 16, 32, 32)


def test_extra_train_types_add_other_reconstructions_of_training_runs_only(tiny_sim, tmp_path):
    config = _config(tiny_sim, "data.extra_train_types=[ctfdeconvolved, isonetcorrected]")
    datasets = open_sources(config)
    split = split_fold(config, datasets, 0)
    runs = load_runs(config, datasets, split.train, progress=False)
    assert [r.run for r in runs] == [run for _, run in split.train for _ in range(3)]
    held_out = {run for _, run in split.val}
    assert held_out and not held_out & {r.run for r in runs}
    for k in range(0, len(runs), 3):
        first, *others = runs[k:k + 3]
        for other in others:
            assert other.volume.shape == first.volume.shape and not np.allclose(other.volume, first.volume)
            assert np.array_equal(other.centers_zyx_vox, first.centers_zyx_vox)
            assert np.array_equal(other.class_index, first.class_index)
            assert abs(float(np.median(other.volume))) < 0.5  # normalised on its own
    drawn = {PatchDataset(config, runs).sampler.draw(np.random.default_rng(i)).run_index % 3 for i in range(60)}
    assert drawn == {0, 1, 2}, "patches come from every reconstruction"

    missing = _config(tiny_sim, "data.extra_train_types=[cryocare]")
    with pytest.raises(CziiError, match=r"data\.extra_train_types: source 'sim': run '\w+' has no 'cryocare' tomogram"):
        train(missing, fold=0, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
