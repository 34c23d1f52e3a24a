"""Ensemble members run by onnxruntime instead of torch.

:func:`export_onnx` writes a checkpoint's network (its EMA weights when present, as :func:`czii.models.load_checkpoint`
loads it) to ``<checkpoint stem>.onnx`` beside it, with dynamic batch and tile axes, and a sidecar
``<onnx>.json`` (:class:`OnnxExport`) recording the SHA-256 of the checkpoint it came from and how far
onnxruntime's logits were from torch's on a random tile. :func:`load_onnx_member` refuses an ONNX file that is
missing, unreadable, or was exported from another version of its checkpoint (retrained since): it would
predict with other weights than the spec names. Everything else a member needs (classes, input, stride, voxel
size) still comes from the checkpoint, so a predictor spec means the same members under either runtime.

Providers: the CPU execution provider on ``cpu``; on CUDA, TensorRT and CUDA when this onnxruntime build has
them (CPU as the fallback), in that order.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from czii.errors import ConfigError, DataError
from czii.io import atomic_path, atomic_write_text, sha256_file
from czii.models import checkpoint_meta, load_checkpoint, read_checkpoint

OPSET = 18
ONNX_SCHEMA_VERSION = 1
# largest |onnxruntime − torch| of the logits on the export's check tile that an export may have (float32 sums
# of a 3-D U-Net agree to ~1e-5 at these sizes; 1e-3 leaves room for other CPUs without hiding a wrong graph)
MAX_LOGIT_DIFF = 1e-3


class OnnxExport(BaseModel):
    """The sidecar ``<model>.onnx.json`` of an exported member."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = ONNX_SCHEMA_VERSION
    checkpoint: str
    checkpoint_sha256: str
    opset: int
    torch_version: str
    check_tile_zyx: list[int]
    max_abs_logit_diff: float
    created: str


def onnx_path(checkpoint: str | Path) -> Path:
    """Where the ONNX export of ``checkpoint`` lives: beside it, ``<stem>.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def sidecar_path(onnx_file: str | Path) -> Path:
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(onnx_file.name + ".json")


def onnx_session(path: Path, device: torch.device):
    """An onnxruntime session of ``path`` on ``device``'s providers (module docstring); DataError naming a file it
    cannot load."""
    ort = _require("onnxruntime")
    wanted = ["CPUExecutionProvider"]
    if device.type == "cuda":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
    available = set(ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(str(path), options, providers=[p for p in wanted if p in available])
    except Exception as exc:  # onnxruntime raises its own exception types for broken or foreign files
        raise DataError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None


class OnnxModel(torch.nn.Module):
    """An ONNX network behind the ``nn.Module`` interface the ensemble calls: float32 [B, C, z, y, x] in, logits
    out on the input's device."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.providers = session.get_providers()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        volume = x.detach().to("cpu", torch.float32).contiguous().numpy()
        logits = self.session.run(None, {self.input_name: volume})[0]
        return torch.from_numpy(logits).to(x.device)


def _require(module: str):
    """``module``, or ConfigError saying how to install it: the ONNX packages are the optional ``onnx`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"the ONNX runtime needs the Python package {module!r}, which is not installed: "
                          "pip install 'czii[onnx]' (onnxruntime, onnx, onnxscript)") from None


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's graph optimiser logs every pass at INFO level: keep that out of the command's output."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(checkpoint: str | Path, *, overwrite: bool = False) -> tuple[Path, OnnxExport]:
    """Export ``checkpoint`` to :func:`onnx_path` (atomically, with its sidecar); ConfigError when onnxruntime's
    logits differ from torch's by more than :data:`MAX_LOGIT_DIFF` on a random tile."""
    checkpoint = Path(checkpoint)
    out = onnx_path(checkpoint)
    if not overwrite and (out.exists() or sidecar_path(out).exists()):
        raise DataError(f"{out}: exists; pass --overwrite to export {checkpoint} again")
    for module in ("onnx", "onnxscript", "onnxruntime"):  # torch's exporter and the check need all three
        _require(module)
    model, meta = load_checkpoint(checkpoint, "cpu")
    side = 2 * int(meta["stride"])
    tile = [side, side, side]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((2, len(meta["input_channels"]), *tile), generator=generator)
    auto = torch.export.Dim.AUTO  # batch and tile sides stay free: any tile of multiples of the stride runs
    with atomic_path(out) as tmp, torch.no_grad(), _quiet_exporter():
        torch.onnx.export(model, (x[:1],), str(tmp), dynamo=True, opset_version=OPSET, input_names=["volume"],
                          output_names=["logits"], dynamic_shapes=({0: auto, 2: auto, 3: auto, 4: auto},),
                          external_data=False, verbose=False)
        reference = model(x).float().numpy()
        # the check runs at another batch than the trace, so a graph that froze the traced size fails here
        got = OnnxModel(onnx_session(Path(tmp), torch.device("cpu")))(x).numpy()
        diff = float(np.abs(got - reference).max()) if got.shape == reference.shape else float("inf")
        if not diff <= MAX_LOGIT_DIFF:
            raise ConfigError(f"{checkpoint}: onnxruntime's logits differ from torch's by {diff:.3g} (shapes "
                              f"{got.shape} vs {reference.shape}); the export is not written")
    record = OnnxExport(checkpoint=str(checkpoint), checkpoint_sha256=sha256_file(checkpoint), opset=OPSET,
                        torch_version=torch.__version__, check_tile_zyx=tile, max_abs_logit_diff=diff,
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        atomic_write_text(sidecar_path(out), record.model_dump_json(indent=2) + "\n")
    except BaseException:
        out.unlink(missing_ok=True)  # an export without its record cannot be checked against its checkpoint
        raise
    return out, record


def read_export(onnx_file: str | Path) -> OnnxExport:
    """The sidecar of ``onnx_file``; DataError naming the file when it is missing, unreadable or of an unknown
    schema version."""
    path = sidecar_path(onnx_file)
    if not path.is_file():
        raise DataError(f"{path}: missing; export the member again with `czii export-model --format onnx`")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ONNX export record ({exc})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != ONNX_SCHEMA_VERSION:
        raise DataError(f"{path}: schema_version {version!r} is not one this czii reads ({ONNX_SCHEMA_VERSION})")
    try:
        return OnnxExport.model_validate(doc)
    except ValidationError as exc:
        raise DataError(f"{path}: not an ONNX export record ({exc.errors()[0]['loc']}: "
                        f"{exc.errors()[0]['msg']})") from None


def load_onnx_member(checkpoint: str | Path, device: str | torch.device) -> tuple[OnnxModel, dict[str, Any]]:
    """(the ONNX network of ``checkpoint`` on onnxruntime, the checkpoint's metadata as
    :func:`czii.models.load_checkpoint` gives it)."""
    checkpoint = Path(checkpoint)
    out = onnx_path(checkpoint)
    if not out.is_file():
        raise DataError(f"{out}: no ONNX export of {checkpoint}; run `czii export-model --format onnx --models "
                        f"{checkpoint}` first")
    record = read_export(out)
    actual = sha256_file(checkpoint)
    if actual != record.checkpoint_sha256:
        raise ConfigError(f"{out} was exported from another version of {checkpoint} (sha256 "
                          f"{record.checkpoint_sha256[:12]}, now {actual[:12]}): export it again")
    return OnnxModel(onnx_session(out, torch.device(device))), checkpoint_meta(read_checkpoint(checkpoint))
