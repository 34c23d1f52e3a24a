"""Config loading: base inheritance, overrides, strict validation, resolved round trip, hashing, folds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from czii.config import config_hash, load_config, resolve_folds, save_resolved
from czii.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = CONFIGS / "base.yaml"


def _experiment(tmp_path: Path, body: dict, name: str = "exp.yaml") -> Path:
    """An experiment file next to a copy of base.yaml, inheriting from it."""
    (tmp_path / "base.yaml").write_text(BASE.read_text())
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", **body}))
    return path


def test_experiment_diff_is_merged_onto_base(tmp_path):
    base = load_config(BASE)
    cfg = load_config(_experiment(tmp_path, {"train": {"epochs": 3}, "model": {"encoder_name": "resnet18"}}))
    assert cfg.train.epochs == 3
    assert cfg.model.encoder_name == "resnet18"
    # untouched keys of a merged section keep the base values
    assert cfg.train.batch_size == base.train.batch_size
    assert cfg.model.decoder_channels == base.model.decoder_channels


def test_inheritance_chains_and_loops(tmp_path):
    mid = _experiment(tmp_path, {"train": {"epochs": 7}}, "mid.yaml")
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({"base": mid.name, "train": {"seed": 5}}))
    cfg = load_config(top)
    assert (cfg.train.epochs, cfg.train.seed) == (7, 5)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)


def test_dotted_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(BASE, ["train.epochs=3", "patch.size_zyx=[32, 64, 64]", "loss.name=focal"])
    assert cfg.train.epochs == 3
    assert cfg.patch.size_zyx == [32, 64, 64]
    assert cfg.loss.name == "focal"


def test_unknown_key_names_key_and_file(tmp_path):
    path = _experiment(tmp_path, {"train": {"epocs": 3}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert "train.epocs" in str(exc.value) and str(path) in str(exc.value)
    with pytest.raises(ConfigError, match="train.epocs"):
        load_config(BASE, ["train.epocs=3"])
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        load_config(_experiment(tmp_path, {"nonsense": {}}, "other.yaml"))


def test_wrong_type_names_key_and_file(tmp_path):
    path = _experiment(tmp_path, {"train": {"epochs": "many"}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    message = str(exc.value)
    assert "train.epochs" in message and str(path) in message and "int" in message
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(BASE, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match="--set"):
        load_config(BASE, ["train.ema_decay=[1]"])
    # a bool is not an int
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(BASE, ["train.epochs=true"])


def test_error_names_the_file_that_set_the_value(tmp_path):
    path = _experiment(tmp_path, {"train": {"epochs": 3}})
    base = tmp_path / "base.yaml"
    base.write_text(BASE.read_text().replace("batch_size: 8", "batch_size: eight"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{base.resolve()}: train.batch_size")


def test_bad_source_entry_is_named(tmp_path):
    path = _experiment(tmp_path, {"data": {"sources": [{"name": "a", "path": "x", "wieght": 2}]}})
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.wieght"):
        load_config(path)


def test_patch_sides_must_be_multiples_of_the_stride():
    with pytest.raises(ConfigError) as exc:
        load_config(BASE, ["model.encoder_depth=4", "patch.size_zyx=[40, 64, 64]"])
    assert "patch.size_zyx" in str(exc.value) and "16" in str(exc.value)
    load_config(BASE, ["model.encoder_depth=3", "model.decoder_channels=[32, 16, 8]", "patch.size_zyx=[40, 64, 64]",
                       "val.tile_zyx=[40, 64, 64]", "infer.tile_zyx=[40, 64, 64]"])
    with pytest.raises(ConfigError, match=r"patch\.size_zyx.*multiple of the network stride 16 \(model\.input_stride"):
        load_config(BASE, ["model.encoder_depth=3", "model.decoder_channels=[32, 16, 8]", "model.input_stride=2",
                           "patch.size_zyx=[40, 64, 64]"])
    with pytest.raises(ConfigError, match="model.input_stride"):
        load_config(BASE, ["model.input_stride=3"])


def test_output_stride_2_takes_one_decoder_block_fewer_and_no_input_stride():
    half = ["model.encoder_depth=3", "model.output_stride=2", "patch.size_zyx=[40, 64, 64]",
            "val.tile_zyx=[40, 64, 64]", "infer.tile_zyx=[40, 64, 64]"]
    assert load_config(BASE, half + ["model.decoder_channels=[32, 16]"]).model.output_stride == 2
    with pytest.raises(ConfigError, match=r"model\.decoder_channels: needs one entry per decoder block \(2.*got 3"):
        load_config(BASE, half + ["model.decoder_channels=[32, 16, 8]"])
    with pytest.raises(ConfigError, match=r"model\.output_stride: 2 needs model\.input_stride 1"):
        load_config(BASE, half + ["model.decoder_channels=[32, 16]", "model.input_stride=2"])
    with pytest.raises(ConfigError, match="model.output_stride"):
        load_config(BASE, ["model.output_stride=4"])


def test_unknown_encoder_and_loss_are_rejected():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet9000'"):
        load_config(BASE, ["model.encoder_name=resnet9000"])
    with pytest.raises(ConfigError, match="loss.name"):
        load_config(BASE, ["loss.name=hinge"])
    with pytest.raises(ConfigError, match="targets.kind"):
        load_config(BASE, ["loss.name=ce", "targets.kind=gaussian"])


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="decoder_channels"):
        load_config(BASE, ["model.decoder_channels=[16, 8]"])
    with pytest.raises(ConfigError, match="class_weights"):
        load_config(BASE, ["loss.class_weights=[1, 2]"])
    with pytest.raises(ConfigError, match="data.classes"):
        load_config(BASE, ["data.classes=[apo-ferritin, apo-ferritin]"])
    with pytest.raises(ConfigError, match="rot90_xy"):
        load_config(BASE, ["patch.size_zyx=[64, 64, 128]"])
    with pytest.raises(ConfigError, match=r"data\.extra_train_types.*2 input channels"):
        load_config(BASE, ["data.input_channels=[denoised, wbp]", "data.extra_train_types=[isonetcorrected]"])
    for extra in ("[wbp, wbp]", "[denoised]"):
        with pytest.raises(ConfigError, match=r"data\.extra_train_types.*distinct tomogram types"):
            load_config(BASE, [f"data.extra_train_types={extra}"])


def test_invert_prob_is_a_share_and_older_configs_load_without_it(tmp_path):
    with pytest.raises(ConfigError, match=r"augment\.invert_prob.*must be in \[0, 1\]"):
        load_config(BASE, ["augment.invert_prob=1.5"])
    doc = yaml.safe_load(BASE.read_text())
    del doc["augment"]["invert_prob"]  # a resolved config written before the knob existed
    path = tmp_path / "older.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert load_config(path).augment.invert_prob == 0.0
    with pytest.raises(ConfigError, match=r"augment\.blur_sigma.*≥ 0"):
        load_config(BASE, ["augment.blur_sigma=-1"])


def test_missing_key_is_named(tmp_path):
    doc = yaml.safe_load(BASE.read_text())
    del doc["optim"]["grad_clip"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="missing key 'optim.grad_clip'"):
        load_config(path)


def test_save_resolved_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(BASE, ["train.epochs=3"])
    out = tmp_path / "out" / "config.yaml"
    save_resolved(cfg, out)
    again = load_config(out)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(BASE, ["train.epochs=4"])) != config_hash(cfg)
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]


def test_folds_from_split_file(tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("x,experiment,fold\n1,TS_b,1\n2,TS_a,0\n3,TS_c,1\n4,TS_b,1\n")
    cfg = load_config(BASE, [f"data.split_file={split}"])
    assert resolve_folds(cfg) == [["TS_a"], ["TS_b", "TS_c"]]
    assert resolve_folds(load_config(BASE)) is None
    with pytest.raises(ConfigError, match="either"):
        load_config(BASE, [f"data.split_file={split}", "data.folds=[[TS_a]]"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.data.classes
