"""Typed experiment configs: YAML with ``base:`` inheritance, dotted overrides, strict validation.

An experiment file is a small diff: ``base: base.yaml`` (resolved next to the file, chains
allowed) is deep-merged first (mappings merge key by key, every other value replaces), then
``--set a.b=value`` overrides (the value is parsed as YAML). ``configs/base.yaml`` holds every
default: the dataclasses below have no defaults except the optional fields of a data source,
so a key missing from the resolved config is an error, as is an unknown key or a wrong type;
each :class:`~czii.errors.ConfigError` names the dotted key and the file it came from.
Relative paths (``data.sources[].path``, ``data.split_file``) are taken relative to the
working directory when the config is used.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from czii.errors import ConfigError
from czii.io import atomic_write_text
from czii.particles import BY_NAME, PARTICLE_NAMES
from czii.registry import BLEND_MODES, ENCODERS, PEAK_METHODS, network_stride, resolve_tta

DEFAULT_VAL_THRESHOLD = 0.2  # per-epoch validation threshold of a class val.thresholds does not name


@dataclass
class SourceConfig:
    """One dataset (copick config, Kaggle directory or simulator output) and its sampling weight."""

    name: str
    path: str
    split: Optional[str] = None
    aliases: dict[str, Optional[str]] = field(default_factory=dict)
    tomo_type: Optional[str] = None
    weight: float = 1.0


@dataclass
class NormalisationConfig:
    clip_percentiles: list[float]


@dataclass
class DataConfig:
    sources: list[SourceConfig]
    input_channels: list[str]
    extra_train_types: list[str]
    classes: list[str]
    level: int
    spacing_A: Optional[float]
    folds: Optional[list[list[str]]]
    split_file: Optional[str]
    normalisation: NormalisationConfig
    nan_policy: Literal["error", "repair"]
    out_of_volume: Literal["error", "drop"]


@dataclass
class TargetsConfig:
    kind: Literal["gaussian", "sphere", "point"]
    sigma_factor: float
    sphere_factor: float


@dataclass
class LossConfig:
    name: Literal["bce", "focal", "mse", "ce"]
    class_weights: Optional[list[float]]
    pos_weight: float
    background_weight: float
    focal_gamma: float


@dataclass
class PatchConfig:
    size_zyx: list[int]
    positive_fraction: float
    class_balanced: bool
    jitter_fraction: float


@dataclass
class AugmentConfig:
    flips: bool
    rot90_xy: bool
    small_rotation_deg: float
    intensity_scale: float
    intensity_shift: float
    intensity_ramp: float
    noise_std: float
    mixup_prob: float
    mixup_alpha: float
    invert_prob: float = 0.0  # share of patches with the intensity sign flipped (data whose protein may be bright)
    blur_sigma: float = 0.0  # Gaussian blur of σ ~ U(0, blur_sigma) voxels (stronger reconstruction filters)


@dataclass
class ModelConfig:
    encoder_name: str
    encoder_depth: int
    decoder_channels: list[int]
    decoder_attention_type: Optional[Literal["scse"]]
    input_stride: Literal[1, 2] = 1  # 2: 2×2×2 voxel blocks become channels (see czii.models)
    deep_supervision: bool = False  # 1×1×1 heads on the coarser decoder levels, trained only (see czii.models)
    output_stride: Literal[1, 2] = 1  # 2: no full-resolution decoder block, logits upsampled ×2 (see czii.models)


def decoder_blocks(model: ModelConfig) -> int:
    """U-Net decoder blocks: one per encoder stage, less the full-resolution one at output stride 2."""
    return model.encoder_depth - (model.output_stride == 2)


@dataclass
class OptimConfig:
    lr: float
    weight_decay: float
    warmup_epochs: float
    schedule: Literal["cosine", "constant"]
    min_lr_factor: float
    grad_clip: float


@dataclass
class TrainConfig:
    epochs: int
    steps_per_epoch: int
    batch_size: int
    num_workers: int
    ema_decay: float
    amp: Literal["bf16", "fp16", "off"]
    seed: int
    val_every: int
    init_from: Optional[str]
    max_minutes: Optional[float]


@dataclass
class ValConfig:
    thresholds: dict[str, float]
    tta: str
    tile_zyx: list[int]
    overlap: float
    batch_size: int
    oof_threshold: float


@dataclass
class InferConfig:
    tta: str
    tile_zyx: list[int]
    overlap: float
    blend: str
    batch_size: int


@dataclass
class PostprocessConfig:
    method: str
    nms_radius_factor: float
    min_size_vox: int
    merge_factor: Optional[float]
    subvoxel: bool


@dataclass
class Config:
    data: DataConfig
    targets: TargetsConfig
    loss: LossConfig
    patch: PatchConfig
    augment: AugmentConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    val: ValConfig
    infer: InferConfig
    postprocess: PostprocessConfig


# --------------------------------------------------------------------------- type checking


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of str to {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return "null" if tp is type(None) else tp.__name__


class _Origins:
    """Which file (or ``--set``) each dotted key of the merged document came from."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}

    def record(self, doc: Any, origin: str, prefix: str = "") -> None:
        """``doc`` (merged at ``prefix``) came from ``origin``: mappings merge, other values replace."""
        if isinstance(doc, dict):
            if prefix:
                self._by_key.setdefault(prefix, origin)
            for key, value in doc.items():
                self.record(value, origin, f"{prefix}.{key}" if prefix else str(key))
            return
        for key in [k for k in self._by_key if k.startswith(prefix + ".")]:
            del self._by_key[key]
        self._by_key[prefix] = origin

    def of(self, key: str) -> str:
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        for n in range(len(parts), 0, -1):
            found = self._by_key.get(".".join(parts[:n]))
            if found:
                return found
        return next(iter(self._by_key.values()), "config")


def _convert(value: Any, tp: Any, key: str, origins: _Origins) -> Any:
    """``value`` checked against type ``tp`` (dataclasses built recursively); ConfigError otherwise."""

    def fail() -> ConfigError:
        return ConfigError(
            f"{origins.of(key)}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail()
        return _build(tp, value, key, origins)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, origins)
            except ConfigError:
                if len(args) == 2:
                    raise
        raise fail()
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise fail()
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]", origins) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise fail()
        _, item_tp = typing.get_args(tp)
        return {k: _convert(v, item_tp, f"{key}.{k}", origins) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is int or tp is str or tp is bool:
        if type(value) is not tp:
            raise fail()
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key}")


def _build(cls, doc: dict, prefix: str, origins: _Origins):
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"{origins.of(key)}: unknown key {key!r}; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in doc:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{origins.of(prefix) if prefix else origins.of(key)}: missing key {key!r}")
            continue
        kwargs[name] = _convert(doc[name], hints[name], key, origins)
    return cls(**kwargs)


def _check_keys(cls, doc: Any, prefix: str, origin: str) -> None:
    """Unknown keys of one file's document, named with that file (before merging hides where they came from)."""
    if not isinstance(doc, dict):
        return
    hints = _hints(cls)
    for key, value in doc.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            raise ConfigError(f"{origin}: unknown key {dotted!r}; valid keys here: {', '.join(hints)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check_keys(tp, value, dotted, origin)
        elif typing.get_origin(tp) is list and isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            if dataclasses.is_dataclass(item_tp):
                for i, item in enumerate(value):
                    _check_keys(item_tp, item, f"{dotted}[{i}]", origin)


def build_typed(cls, doc: dict, origin: str):
    """``doc`` (read from ``origin``) as the dataclass ``cls``, with the strict rules of configs: an
    unknown or missing key, or a wrong type, is a ConfigError naming the dotted key and ``origin``."""
    _check_keys(cls, doc, "", origin)
    origins = _Origins()
    origins.record(doc, origin)
    return _build(cls, doc, "", origins)


# --------------------------------------------------------------------------- loading


def _deep_merge(base: dict, diff: dict) -> dict:
    out = dict(base)
    for key, value in diff.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path, what: str = "config") -> dict:
    """The mapping in the YAML file ``path`` (empty for an empty file); ConfigError naming ``what`` otherwise."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable {what} file ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping of sections, got {type(doc).__name__}")
    return doc


def _load_chain(path: Path, origins: _Origins, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' inheritance loops: {' -> '.join(str(p) for p in (*seen, path))}")
    doc = read_yaml(path)
    base_name = doc.pop("base", None)
    _check_keys(Config, doc, "", str(path))
    merged: dict = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{path}: base: expected a file name, got {base_name!r}")
        merged = _load_chain(path.parent / base_name, origins, (*seen, path))
    origins.record(doc, str(path))
    return _deep_merge(merged, doc)


def _apply_override(doc: dict, override: str, origins: _Origins) -> dict:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {override!r}: value is not valid YAML ({exc})") from None
    cls: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        hints = _hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            where = ".".join(parts[:depth]) or "the top level"
            valid = ", ".join(hints) if hints else "none (not a section)"
            raise ConfigError(f"--set {override!r}: unknown key {key!r}; valid keys under {where}: {valid}")
        cls = hints[part]
    diff: Any = value
    for part in reversed(parts):
        diff = {part: diff}
    origins.record(value, "--set", key)
    return _deep_merge(doc, diff)


def _validate(config: Config, origins: _Origins) -> None:
    """Cross-field rules that types cannot express."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{origins.of(key)}: {key}: {message}")

    if config.model.encoder_name not in ENCODERS:
        raise fail("model.encoder_name", f"unknown encoder {config.model.encoder_name!r}; "
                   f"supported: {', '.join(ENCODERS)}")
    if not 1 <= config.model.encoder_depth <= 5:
        raise fail("model.encoder_depth", f"must be 1..5, got {config.model.encoder_depth}")
    if config.model.output_stride == 2 and (config.model.input_stride != 1 or config.model.encoder_depth < 2):
        raise fail("model.output_stride", "2 needs model.input_stride 1 and model.encoder_depth ≥ 2, got "
                   f"{config.model.input_stride} and {config.model.encoder_depth}")
    n_blocks = decoder_blocks(config.model)
    if len(config.model.decoder_channels) != n_blocks:
        raise fail("model.decoder_channels", f"needs one entry per decoder block ({n_blocks}: model.encoder_depth "
                   f"{config.model.encoder_depth}, output stride {config.model.output_stride}), "
                   f"got {len(config.model.decoder_channels)}")
    net_stride = network_stride(config.model.encoder_depth, config.model.input_stride)
    for key, sides in (("patch.size_zyx", config.patch.size_zyx), ("val.tile_zyx", config.val.tile_zyx),
                       ("infer.tile_zyx", config.infer.tile_zyx)):
        if len(sides) != 3 or any(s <= 0 or s % net_stride for s in sides):
            raise fail(key, f"expected 3 positive sides (z, y, x), each a multiple of the network stride "
                       f"{net_stride} (model.input_stride * 2**model.encoder_depth), got {sides}")
    # names only: a class that is not CZII's is defined by the copick projects the sources open
    # (czii.training.data.check_classes), which --data may still replace
    if not config.data.classes or len(set(config.data.classes)) != len(config.data.classes) or not all(
            isinstance(c, str) and c and " " not in c for c in config.data.classes):
        raise fail("data.classes", f"expected distinct class names (e.g. {', '.join(PARTICLE_NAMES)}), "
                   f"got {config.data.classes}")
    if config.data.spacing_A is not None and not (math.isfinite(config.data.spacing_A) and config.data.spacing_A > 0):
        raise fail("data.spacing_A", f"must be a positive voxel size in Å or null, got {config.data.spacing_A}")
    if not config.data.input_channels:
        raise fail("data.input_channels", "needs at least one tomogram type")
    extra = config.data.extra_train_types
    if extra and len(config.data.input_channels) != 1:
        raise fail("data.extra_train_types", f"each extra type stands in for the one input channel; with "
                   f"{len(config.data.input_channels)} input channels {config.data.input_channels} leave it empty")
    if len(set(extra)) != len(extra) or set(extra) & set(config.data.input_channels):
        raise fail("data.extra_train_types", f"expected distinct tomogram types other than the input channel "
                   f"{config.data.input_channels}, got {extra}")
    if len(config.data.normalisation.clip_percentiles) != 2 or not (
        0 <= config.data.normalisation.clip_percentiles[0] < config.data.normalisation.clip_percentiles[1] <= 100
    ):
        raise fail("data.normalisation.clip_percentiles", f"expected [low, high] with 0 <= low < high <= 100, "
                   f"got {config.data.normalisation.clip_percentiles}")
    if config.data.folds is not None and config.data.split_file is not None:
        raise fail("data.folds", "set either data.folds or data.split_file, not both")
    for i, source in enumerate(config.data.sources):
        if source.weight <= 0:
            raise fail(f"data.sources[{i}].weight", f"must be > 0, got {source.weight}")
    if len({s.name for s in config.data.sources}) != len(config.data.sources):
        raise fail("data.sources", "source names must be distinct")
    if config.loss.class_weights is not None and len(config.loss.class_weights) != len(config.data.classes):
        raise fail("loss.class_weights", f"needs one weight per class in data.classes ({len(config.data.classes)}), "
                   f"got {len(config.loss.class_weights)}")
    if config.loss.name == "ce" and config.targets.kind == "gaussian":
        raise fail("loss.name", "softmax 'ce' needs label targets: set targets.kind to 'sphere' or 'point'")
    for key, value in (("patch.positive_fraction", config.patch.positive_fraction),
                       ("patch.jitter_fraction", config.patch.jitter_fraction),
                       ("augment.mixup_prob", config.augment.mixup_prob),
                       ("augment.invert_prob", config.augment.invert_prob)):
        if not 0 <= value <= 1:
            raise fail(key, f"must be in [0, 1], got {value}")
    if config.augment.rot90_xy and config.patch.size_zyx[1] != config.patch.size_zyx[2]:
        raise fail("augment.rot90_xy", f"quarter turns in y-x need square y-x patches; patch.size_zyx is "
                   f"{config.patch.size_zyx}")
    if not config.augment.blur_sigma >= 0:
        raise fail("augment.blur_sigma", f"must be ≥ 0 voxels, got {config.augment.blur_sigma}")
    if config.augment.mixup_prob > 0 and config.augment.mixup_alpha <= 0:
        raise fail("augment.mixup_alpha", f"must be > 0 when mixup is on, got {config.augment.mixup_alpha}")
    if not 0 <= config.val.overlap < 1 or not 0 <= config.infer.overlap < 1:
        raise fail("val.overlap", "val.overlap and infer.overlap must be in [0, 1)")
    if config.postprocess.method not in PEAK_METHODS:
        raise fail("postprocess.method", f"unknown peak method {config.postprocess.method!r}; "
                   f"valid: {', '.join(PEAK_METHODS)}")
    if config.infer.blend not in BLEND_MODES:
        raise fail("infer.blend", f"unknown blend {config.infer.blend!r}; valid: {', '.join(BLEND_MODES)}")
    for key, tta in (("val.tta", config.val.tta), ("infer.tta", config.infer.tta)):
        try:
            resolve_tta(tta)
        except ConfigError as exc:
            raise fail(key, str(exc)) from None
    if config.train.seed < 0 or config.train.num_workers < 0:
        raise fail("train.seed", "train.seed and train.num_workers must be >= 0")
    if config.train.max_minutes is not None and not config.train.max_minutes > 0:
        raise fail("train.max_minutes", f"must be > 0 or null, got {config.train.max_minutes}")
    if not 0 <= config.train.ema_decay < 1:
        raise fail("train.ema_decay", f"must be in [0, 1) (0 = off), got {config.train.ema_decay}")
    for key, value in (("train.epochs", config.train.epochs), ("train.steps_per_epoch", config.train.steps_per_epoch),
                       ("train.batch_size", config.train.batch_size), ("train.val_every", config.train.val_every)):
        if value < 1:
            raise fail(key, f"must be >= 1, got {value}")
    missing_thr = [c for c in config.data.classes if c in PARTICLE_NAMES and c not in config.val.thresholds]
    unknown_thr = sorted(set(config.val.thresholds) - set(BY_NAME) - set(config.data.classes))
    if missing_thr or unknown_thr:
        raise fail("val.thresholds", f"expected a threshold for each CZII class of data.classes (other classes "
                   f"default to {DEFAULT_VAL_THRESHOLD}); missing {missing_thr}, unknown {unknown_thr}")


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Load ``path`` with its ``base`` chain, apply ``key=value`` overrides, validate."""
    origins = _Origins()
    doc = _load_chain(Path(path), origins)
    for override in overrides:
        doc = _apply_override(doc, override, origins)
    config = _build(Config, doc, "", origins)
    _validate(config, origins)
    return config


def with_data_paths(config: Config, paths: typing.Sequence[str | Path]) -> Config:
    """``config`` with the dataset paths replaced in source order (``--data``); a config without
    sources gets one source per path, named ``data0``, ``data1``, …"""
    sources = config.data.sources
    if sources and len(paths) != len(sources):
        raise ConfigError(f"--data: {len(paths)} path(s) given but the config has {len(sources)} source(s) "
                          f"({', '.join(s.name for s in sources)}); give one path per source, in order")
    if sources:
        new = [dataclasses.replace(s, path=str(p)) for s, p in zip(sources, paths)]
    else:
        new = [SourceConfig(name=f"data{i}", path=str(p)) for i, p in enumerate(paths)]
    return dataclasses.replace(config, data=dataclasses.replace(config.data, sources=new))


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def config_hash(config: Config) -> str:
    """First 12 hex digits of the SHA-256 of the canonical JSON of the resolved config."""
    text = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_resolved(config: Config, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically); it loads back to an equal config."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def resolve_folds(config: Config) -> list[list[str]] | None:
    """Folds as lists of run names: ``data.folds``, or the ``experiment``/``fold`` columns of
    ``data.split_file`` (fold ids sorted); None when neither is set (leave-one-run-out)."""
    if config.data.folds is not None:
        return [list(f) for f in config.data.folds]
    if config.data.split_file is None:
        return None
    path = Path(config.data.split_file)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"data.split_file {path}: unreadable ({exc})") from None
    if not rows or not {"experiment", "fold"} <= set(rows[0]):
        raise ConfigError(f"data.split_file {path}: expected a CSV with columns 'experiment' and 'fold'")
    by_fold: dict[str, set[str]] = {}
    for row in rows:
        by_fold.setdefault(row["fold"], set()).add(row["experiment"])
    keys = sorted(by_fold, key=lambda k: (int(k) if k.lstrip("-").isdigit() else float("inf"), k))
    return [sorted(by_fold[k]) for k in keys]
