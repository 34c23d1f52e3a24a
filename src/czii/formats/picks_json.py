"""Picks JSON files in the exact format the competition ships (``Picks/<particle>.json``).

The document is ``json.dumps`` of ``pickable_object_name, user_id, session_id, run_name,
voxel_spacing (null), unit ("angstrom"), points [{location {x, y, z}, transformation_
(4×4 identity), instance_id}], trust_orientation`` with no trailing newline (as five
of the six real TS_5_4 files; readers accept either).
Coordinates are x, y, z in Ångström.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from czii.errors import DataError
from czii.io import atomic_write_text

_IDENTITY = [[1.0 if i == j else 0.0 for j in range(4)] for i in range(4)]


def picks_document(
    particle_type: str, run_name: str, xyz_A: np.ndarray, user_id: str = "curation", session_id: str = "0",
    *, scores: np.ndarray | None = None, trust_orientation: bool = True,
) -> dict:
    """The picks document for one particle type of one run (``xyz_A``: (N, 3) x, y, z Å).

    ``trust_orientation`` stays true as in the competition files; picks without real orientations
    made elsewhere (``czii import``) pass false. ``scores`` (finite values) go to each point's ``score``.
    """
    pts = np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3)
    points = [
        {
            "location": {"x": float(x), "y": float(y), "z": float(z)},
            "transformation_": [row[:] for row in _IDENTITY],
            "instance_id": 0,
        }
        for x, y, z in pts
    ]
    if scores is not None:
        for point, score in zip(points, np.asarray(scores, dtype=np.float64)):
            if np.isfinite(score):
                point["score"] = float(score)
    return {
        "pickable_object_name": particle_type,
        "user_id": user_id,
        "session_id": session_id,
        "run_name": run_name,
        "voxel_spacing": None,
        "unit": "angstrom",
        "points": points,
        "trust_orientation": trust_orientation,
    }


def write_picks_json(path: str | Path, document: dict) -> None:
    """Write a picks document atomically (temporary name, then rename)."""
    atomic_write_text(path, json.dumps(document))


def read_picks_json(path: str | Path) -> tuple[str, np.ndarray]:
    """Read and validate a picks file: returns (object name, (N, 3) x, y, z Å).

    Raises DataError naming the file for empty, non-JSON or malformed documents and for
    non-finite coordinates. A file with an empty ``points`` list is valid (N = 0).
    """
    path = Path(path)
    text = path.read_text() if path.is_file() else None
    if text is None:
        raise DataError(f"{path}: picks file does not exist")
    if not text.strip():
        raise DataError(f"{path}: picks file is empty (expected a JSON object with 'points')")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
        raise DataError(f"{path}: malformed picks file: expected an object with a 'points' list")
    name = doc.get("pickable_object_name")
    if not isinstance(name, str) or not name:
        raise DataError(f"{path}: malformed picks file: missing 'pickable_object_name'")
    xyz = np.empty((len(doc["points"]), 3), dtype=np.float64)
    for i, point in enumerate(doc["points"]):
        try:
            loc = point["location"]
            xyz[i] = [float(loc["x"]), float(loc["y"]), float(loc["z"])]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: point {i} has no numeric location x, y, z") from None
    if not np.all(np.isfinite(xyz)):
        bad = int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
        raise DataError(f"{path}: point {bad} has a non-finite coordinate")
    return name, xyz
