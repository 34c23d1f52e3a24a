"""Names a config or a predictor spec may use, without importing torch or copick.

- TTA: primitives and presets (:func:`resolve_tta` checks names; the tensor code is
  :mod:`czii.inference.tta`).
- Tile blending modes (:mod:`czii.inference.tiling`), peak methods (:mod:`czii.postprocess.peaks`),
  output activations (:mod:`czii.inference.ensemble`).
- Encoders that build as a 3D U-Net (:func:`czii.models.supported_encoders` computes the same list
  from segmentation-models-pytorch-3d; a test keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Sequence

from czii.errors import ConfigError

TTA_PRIMITIVES: tuple[str, ...] = (
    "identity",
    "flip_z",
    "flip_y",
    "flip_x",
    "rot90_xy_1",
    "rot90_xy_2",
    "rot90_xy_3",
)
_D4_XY = ("identity", "rot90_xy_1", "rot90_xy_2", "rot90_xy_3",
          "flip_x", "flip_x+rot90_xy_1", "flip_x+rot90_xy_2", "flip_x+rot90_xy_3")
TTA_PRESETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "flip_z", "flip_y", "flip_x"),
    "flips_rot90": ("identity", "flip_z", "flip_y", "flip_x", "rot90_xy_1", "rot90_xy_2", "rot90_xy_3"),
    "full16": _D4_XY + tuple(f"flip_z+{name}" if name != "identity" else "flip_z" for name in _D4_XY),
}

BLEND_MODES: tuple[str, ...] = ("gaussian", "linear", "constant")
RUNTIMES: tuple[str, ...] = ("torch", "compiled", "onnx")  # how members run: eager, torch.compile, onnxruntime
PEAK_METHODS: tuple[str, ...] = ("maxpool", "cc3d")
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "softmax")
ENCODERS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d",
    "resnext101_32x48d",
    "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "densenet121", "densenet169", "densenet201", "densenet161",
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3", "efficientnet-b4",
    "efficientnet-b5", "efficientnet-b6", "efficientnet-b7",
    "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
    "mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
)


def network_stride(encoder_depth: int, input_stride: int = 1) -> int:
    """Every input side must be a multiple of this (input_stride * 2**encoder_depth)."""
    return input_stride * 2**encoder_depth


def tta_steps(name: str) -> tuple[str, ...]:
    """The primitives of one transform name (``a+b`` applies a, then b); ConfigError for unknown ones."""
    steps = tuple(name.split("+")) if isinstance(name, str) else ()
    unknown = [s for s in steps if s not in TTA_PRIMITIVES]
    if not name or not steps or unknown:
        raise ConfigError(
            f"unknown TTA transform {name!r}; valid transforms: {', '.join(TTA_PRIMITIVES)} "
            f"(or several joined by '+', e.g. 'flip_z+rot90_xy_1'); "
            f"presets: {', '.join(TTA_PRESETS)}"
        )
    return steps


def resolve_tta(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Transform names for ``spec``: a preset name, one transform name, or a list of names.

    Raises ConfigError listing the valid names when one is unknown or the list is empty.
    """
    names = TTA_PRESETS.get(spec, (spec,)) if isinstance(spec, str) else tuple(spec)
    if not names:
        raise ConfigError(f"empty TTA list; use ('identity',) or a preset: {', '.join(TTA_PRESETS)}")
    for name in names:
        tta_steps(name)
    return names
