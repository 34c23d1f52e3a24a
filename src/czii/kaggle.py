"""Offline Kaggle submission: the dataset folder a notebook without internet installs and runs from.

Contract of :func:`build_kaggle_dataset` ``(models, out, ...)`` (what ``czii kaggle-build`` calls):

```
out/
  wheels/          czii (built from the source tree) + every dependency in its resolved closure except
                   the packages Kaggle's image provides (PROVIDED_PATTERNS: a CUDA torch, torchvision,
                   triton, nvidia-*, cuda-*), as wheels for the target Python and platforms
  models/          the ensemble's checkpoints (copied)
  thresholds.json  the models' thresholds file (absent when they have none: defaults, with a note)
  inference.yaml   the predictor spec (czii.predictor) with paths relative to out/: members,
                   input recipe, tiling, TTA, peaks, thresholds; its score hash equals the one the
                   thresholds were tuned under
  manifest.json    package version, git commit, target, provided packages, wheels, sha256 + size per file
```

A ``dataset-metadata.json`` (the Kaggle CLI's) found in a previous build is carried over.

Dependency versions come from ``constraints.txt``; the closure is walked over each wheel's own
``Requires-Dist`` with markers evaluated for the target (Linux, CPython). Wheels are looked up
in ``wheels_from`` and in a per-target cache (``$CZII_CACHE`` or ``~/.cache/czii``, then
``wheels/<target key>``), else fetched with ``pip download --only-binary=:all:`` into the cache;
a package with only a source distribution is built with ``pip wheel`` and must give a wheel the
target accepts. The folder is built under a temporary name beside ``out`` and renamed when
complete; an existing ``out`` is replaced only when it is a previous build (has our manifest).

:func:`project_runtime` turns the per-run timings of an inference manifest into a projection
for Kaggle's hidden test set (the notebook prints it).
"""

from __future__ import annotations

import dataclasses
import email.parser
import fnmatch
import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from tqdm import tqdm

from czii import locks
from czii.geometry import CZII_SHAPE_ZYX
from czii.errors import BuildError, ConfigError, DataError
from czii.io import check_output, git_commit, git_dirty, sha256_file, temp_sibling
from czii.predictor import MemberSpec, load_spec, save_spec

# Kaggle's notebook image: Python 3.11 on Ubuntu 22.04 (glibc 2.35) with a CUDA build of torch.
KAGGLE_PYTHON_VERSION = "3.11"
KAGGLE_PLATFORMS: tuple[str, ...] = ("manylinux_2_35_x86_64",)
PROVIDED_PATTERNS: tuple[str, ...] = ("torch", "torchvision", "triton", "nvidia-*", "cuda-*")
PROVIDED_NOTE = (
    "Kaggle's GPU image is assumed to provide a CUDA build of torch and torchvision (with triton, "
    "nvidia-* and cuda-* libraries) at the versions czii pins; these are not bundled. Everything "
    "else czii needs is in wheels/."
)
HIDDEN_TEST_TOMOGRAMS = 500
KAGGLE_LIMIT_HOURS = 12.0

MANIFEST_NAME = "manifest.json"
KAGGLE_METADATA_NAME = "dataset-metadata.json"  # the Kaggle CLI's own file; kept across rebuilds, not listed
ENSEMBLE_NAME = "inference.yaml"
THRESHOLDS_NAME = "thresholds.json"
PACKAGE_NAME = "czii"
_MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_(\w+)")
_LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


# --------------------------------------------------------------------------- target


def _glibc_platforms(platform: str) -> tuple[list[str], str]:
    """(``platform`` and every older manylinux platform its systems run, architecture)."""
    if m := _MANYLINUX.fullmatch(platform):
        major, minor, arch = int(m[1]), int(m[2]), m[3]
    else:
        prefix, _, arch = platform.partition("_")
        if prefix not in _LEGACY_MANYLINUX or not arch:
            raise ConfigError(
                f"platform {platform!r}: expected a manylinux tag such as manylinux_2_35_x86_64 or "
                "manylinux2014_x86_64 (Kaggle runs Linux)"
            )
        major, minor = 2, _LEGACY_MANYLINUX[prefix]
    if major != 2 or minor < 5:
        raise ConfigError(f"platform {platform!r}: only glibc 2.x manylinux tags (2_5 and newer) are supported")
    aliases = {m: legacy for legacy, m in _LEGACY_MANYLINUX.items()}
    out = []
    for m in range(minor, 4, -1):
        out.append(f"manylinux_2_{m}_{arch}")
        if m in aliases:
            out.append(f"{aliases[m]}_{arch}")
    return out, arch


@dataclass(frozen=True)
class WheelTarget:
    """The interpreter and platforms the wheels are for (CPython on manylinux)."""

    python_version: str = KAGGLE_PYTHON_VERSION
    platforms: tuple[str, ...] = KAGGLE_PLATFORMS

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d+", self.python_version):
            raise ConfigError(f"python version {self.python_version!r}: expected MAJOR.MINOR such as 3.11")
        if not self.platforms:
            raise ConfigError("no target platform given")
        arches = {_glibc_platforms(p)[1] for p in self.platforms}
        if len(arches) > 1:
            raise ConfigError(f"platforms {list(self.platforms)} mix architectures {sorted(arches)}")

    @property
    def python_nodot(self) -> str:
        return self.python_version.replace(".", "")

    @property
    def key(self) -> str:
        """Cache folder name, e.g. ``cp311-manylinux_2_35_x86_64``."""
        return f"cp{self.python_nodot}-" + "+".join(self.platforms)

    @property
    def expanded_platforms(self) -> list[str]:
        """Every platform tag the target accepts, newest first (older glibc manylinux tags included)."""
        return list(dict.fromkeys(p for given in self.platforms for p in _glibc_platforms(given)[0]))

    def pip_args(self) -> list[str]:
        """The pip options that select wheels for this target."""
        args = ["--python-version", self.python_version, "--implementation", "cp"]
        for platform in self.expanded_platforms:
            args += ["--platform", platform]
        return args

    def supported_tags(self) -> frozenset:
        version = tuple(int(v) for v in self.python_version.split("."))
        platforms = self.expanded_platforms
        return frozenset([*cpython_tags(version, platforms=platforms),
                          *compatible_tags(version, f"cp{self.python_nodot}", platforms)])

    def accepts(self, wheel: str | Path) -> bool:
        """True when the wheel file name carries a tag this target installs."""
        return not self.supported_tags().isdisjoint(parse_wheel_filename(Path(wheel).name)[3])

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the target (patch level unknown: ``.0``)."""
        arch = _glibc_platforms(self.platforms[0])[1]
        return {
            "python_version": self.python_version, "python_full_version": f"{self.python_version}.0",
            "implementation_name": "cpython", "implementation_version": f"{self.python_version}.0",
            "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "platform_machine": arch, "platform_release": "", "platform_version": "",
        }


def is_provided(name: str) -> bool:
    """True for packages Kaggle's image provides (:data:`PROVIDED_PATTERNS`), which are never bundled."""
    return any(fnmatch.fnmatchcase(canonicalize_name(name), p) for p in PROVIDED_PATTERNS)


def default_cache_dir(target: WheelTarget) -> Path:
    """Wheel cache of ``target``: ``$CZII_CACHE`` (or ``~/.cache/czii``) / ``wheels`` / ``target.key``."""
    return Path(os.environ.get("CZII_CACHE") or Path.home() / ".cache" / "czii") / "wheels" / target.key


def read_pins(constraints: str | Path) -> dict[str, str]:
    """``name == version`` lines of a pip constraints file, keyed by canonical name."""
    path = Path(constraints)
    if not path.is_file():
        raise ConfigError(f"constraints file {path} does not exist")
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ConfigError(f"{path}:{number}: not a requirement ({exc})") from None
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            pins[canonicalize_name(req.name)] = specs[0].version
    return pins


# --------------------------------------------------------------------------- wheels


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], check=False, capture_output=True, text=True)


def _tail(proc: subprocess.CompletedProcess, n: int = 4) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
    return " | ".join(lines[-n:]) or f"exit status {proc.returncode}"


def wheel_requirements(wheel: str | Path) -> list[str]:
    """``Requires-Dist`` entries of a wheel's METADATA."""
    wheel = Path(wheel)
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise BuildError(f"{wheel}: expected one *.dist-info/METADATA, found {names}")
        meta = email.parser.Parser().parsestr(zf.read(names[0]).decode("utf-8"))
    return meta.get_all("Requires-Dist") or []


class WheelSource:
    """Wheels for one target: from ``wheels_from``, the cache, or pip (downloaded or built into the cache)."""

    def __init__(self, target: WheelTarget, cache_dir: Path, wheels_from: Path | None = None) -> None:
        if wheels_from is not None and not wheels_from.is_dir():
            raise ConfigError(f"--wheels-from {wheels_from}: not a directory")
        self.target = target
        self.cache_dir = cache_dir
        self.dirs = [d for d in (wheels_from, cache_dir) if d is not None]
        self._tags = target.supported_tags()

    def _local(self, name: str, accept: Callable[[Version], bool]) -> Path | None:
        found: list[tuple[Version, int, Path]] = []
        for rank, folder in enumerate(self.dirs):
            for path in folder.glob("*.whl") if folder.is_dir() else ():
                try:
                    wname, version, _, tags = parse_wheel_filename(path.name)
                except InvalidWheelFilename:
                    continue
                if wname == name and accept(version) and not self._tags.isdisjoint(tags):
                    found.append((version, -rank, path))
        return max(found)[2] if found else None

    def _fetch(self, name: str, requirement: str) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix=".fetch-") as tmp:
            got = _pip("download", "--no-deps", "--only-binary=:all:", *self.target.pip_args(), "-d", tmp,
                       requirement)
            if got.returncode != 0:
                built = _pip("wheel", "--no-deps", f"--no-binary={name}", "-w", tmp, requirement)
                if built.returncode != 0:
                    raise BuildError(
                        f"package {name}: no wheel of {requirement} for {self.target.key} "
                        f"(pip download: {_tail(got)}) and building one from source failed (pip wheel: {_tail(built)})"
                    )
            wheels = sorted(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise BuildError(f"package {name}: pip produced {[w.name for w in wheels]} for {requirement}")
            if not self.target.accepts(wheels[0]):
                raise BuildError(
                    f"package {name}: {requirement} has no wheel for {self.target.key} and its source builds "
                    f"{wheels[0].name}, which that target cannot install"
                )
            dest = self.cache_dir / wheels[0].name
            os.replace(wheels[0], dest)
        return dest

    def wheel(self, name: str, requirement: Requirement, pin: str | None) -> Path:
        """The wheel of ``name`` at ``pin`` (or the newest satisfying ``requirement``), fetched when absent."""
        if pin is not None:
            local = self._local(name, lambda v: v == Version(pin))
            return local or self._fetch(name, f"{name}=={pin}")
        local = self._local(name, lambda v: requirement.specifier.contains(v, prereleases=True))
        return local or self._fetch(name, f"{name}{requirement.specifier}")


@dataclass
class Closure:
    """Resolved dependencies: bundled wheels and provided packages (canonical name → requirement text)."""

    wheels: dict[str, Path] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    provided: dict[str, str] = field(default_factory=dict)


def resolve_closure(
    requirements: Iterable[str],
    target: WheelTarget,
    pins: Mapping[str, str],
    source: WheelSource,
    *,
    workers: int = 4,
    progress: bool = True,
) -> Closure:
    """Walk ``requirements`` and their wheels' own requirements (markers and extras for ``target``).

    Versions are the ``pins`` (constraints) where given, else the newest wheel satisfying the first
    requirement seen. Provided packages are not bundled; their requirements are read from this
    environment's installed copy when there is one. BuildError when a version contradicts a requirement.
    """
    env = target.marker_environment()
    closure = Closure()
    raw: dict[str, list[Requirement]] = {}
    extras: dict[str, set[str]] = {}

    def applies(req: Requirement, parent_extras: Iterable[str]) -> bool:
        return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *parent_extras))

    def check(name: str, req: Requirement, parent: str) -> None:
        version = closure.versions[name]
        if version and not req.specifier.contains(Version(version), prereleases=True):
            pinned = " (pinned by the constraints file)" if name in pins else ""
            raise BuildError(f"{parent} requires {req}, but {name} resolves to {version}{pinned}")

    def metadata(name: str, req: Requirement) -> tuple[str, Path | None, list[str]]:
        if is_provided(name):
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                return pins.get(name, ""), None, []
            return pins.get(name, dist.version), None, dist.requires or []
        wheel = source.wheel(name, req, pins.get(name))
        return str(parse_wheel_filename(wheel.name)[1]), wheel, wheel_requirements(wheel)

    pending = [(Requirement(r), PACKAGE_NAME, ()) for r in requirements]
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(desc="wheels", unit="pkg", disable=None if progress else True) as bar:
        while pending:
            asked: dict[str, list[tuple[Requirement, str]]] = {}
            added_extras: dict[str, set[str]] = {}
            for req, parent, parent_extras in pending:
                if not applies(req, parent_extras):
                    continue
                name = canonicalize_name(req.name)
                asked.setdefault(name, []).append((req, parent))
                added = set(req.extras) - extras.setdefault(name, set())
                extras[name] |= added
                if name in raw and added:
                    added_extras.setdefault(name, set()).update(added)
            new = [name for name in asked if name not in raw]
            for name in new:
                for req, parent in asked[name]:
                    if name in pins and not req.specifier.contains(Version(pins[name]), prereleases=True):
                        raise BuildError(f"{parent} requires {req}, but the constraints file pins {name}=={pins[name]}")
            futures = {name: pool.submit(metadata, name, asked[name][0][0]) for name in new}
            pending = []
            for name, future in futures.items():
                version, wheel, requires = future.result()
                closure.versions[name] = version
                if wheel is None:
                    closure.provided[name] = f"{name}=={version}" if version else str(asked[name][0][0])
                else:
                    closure.wheels[name] = wheel
                raw[name] = [Requirement(r) for r in requires]
                pending += [(r, name, tuple(extras[name])) for r in raw[name]]
                bar.update(1)
            for name, added in added_extras.items():
                pending += [(r, name, tuple(added)) for r in raw[name] if r.marker is not None
                            and any(r.marker.evaluate({**env, "extra": e}) for e in added)]
            for name, reqs in asked.items():
                for req, parent in reqs:
                    check(name, req, parent)
    return closure


_WHEEL_SOURCES = ("src", "pyproject.toml", "README.md")


def build_package_wheel(project_dir: Path, dest: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the source tree (pyproject.toml, README.md, src/) into ``dest``."""
    pyproject = project_dir / "pyproject.toml"
    if not pyproject.is_file() or not (project_dir / "src" / PACKAGE_NAME).is_dir():
        raise ConfigError(f"{project_dir}: not the czii source tree (needs pyproject.toml and src/czii/)")
    with tempfile.TemporaryDirectory(prefix="czii-wheel-") as tmp:
        tree = Path(tmp) / "czii"
        shutil.copytree(project_dir / "src", tree / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        for name in _WHEEL_SOURCES[1:]:
            if (project_dir / name).is_file():
                shutil.copy2(project_dir / name, tree / name)
        built = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(Path(tmp) / "out"),
                     str(tree))
        wheels = sorted((Path(tmp) / "out").glob(f"{PACKAGE_NAME}-*.whl"))
        if built.returncode != 0 or len(wheels) != 1:
            raise BuildError(f"package {PACKAGE_NAME}: building its wheel from {project_dir} failed: {_tail(built)}")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest / wheels[0].name))


# --------------------------------------------------------------------------- models, thresholds, ensemble YAML


def _member_file_name(index: int, checkpoint: Path) -> str:
    parts = [checkpoint.parent.parent.name] if checkpoint.parent.name == "checkpoints" else []
    return "-".join([f"m{index}", *parts, checkpoint.stem]) + ".pt"


def _write_models(models: str | Path | Sequence[str | Path], out: Path, *, tta: str | Sequence[str] | None,
                  thresholds: str | Path | None, allow_spec_mismatch: bool, allow_unfinished: bool) -> dict[str, Any]:
    """Copy checkpoints and thresholds, write the predictor spec ``inference.yaml`` into ``out``; returns the
    manifest's models part.

    The spec is resolved, checked against its thresholds and loaded as
    :func:`czii.inference.pipeline.run_inference` does, so a predictor it would refuse fails here
    rather than on Kaggle.
    """
    from czii.inference import Predictor, resolve_predictor  # torch: only when building

    spec, check, unfinished = resolve_predictor(models, tta=tta, thresholds=thresholds,
                                                allow_spec_mismatch=allow_spec_mismatch,
                                                allow_unfinished=allow_unfinished)
    spec = Predictor.load(spec, "cpu").spec  # with the members' voxel size recorded
    if check.thresholds is None:
        print(f"note: no thresholds file with {models}; shipping the defaults (tune them with `czii tune`, "
              "or pass --thresholds)", file=sys.stderr)
        shipped_thresholds = None
    else:
        shutil.copy2(check.source, out / THRESHOLDS_NAME)
        shipped_thresholds = str(out / THRESHOLDS_NAME)
    (out / "models").mkdir()
    members, listed = [], []
    for i, m in enumerate(spec.members):
        rel = f"models/{_member_file_name(i, Path(m.checkpoint))}"
        shutil.copy2(m.checkpoint, out / rel)
        members.append(MemberSpec(str(out / rel), m.weight))
        listed.append({"file": rel, "source": str(Path(m.checkpoint).resolve()), "weight": m.weight})
    shipped = dataclasses.replace(spec, members=members, thresholds=shipped_thresholds)
    save_spec(shipped, out / ENSEMBLE_NAME)
    load_spec(out / ENSEMBLE_NAME)
    return {"description": str(models), "members": listed, "classes": list(spec.classes),
            "thresholds_source": check.source, "spec_hash": spec.hash, "spec_check": check.status,
            "unfinished_members": unfinished,
            "tta": list(spec.tta)}


# --------------------------------------------------------------------------- manifest and build


_UNLISTED = (MANIFEST_NAME, KAGGLE_METADATA_NAME)


def _file_table(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in _UNLISTED
    }


def _check_out(out: Path, project_dir: Path, models: str | Path | Sequence[str | Path]) -> None:
    notebooks = (project_dir / "kaggle_notebooks").resolve()
    if out.resolve().is_relative_to(notebooks):
        raise ConfigError(f"--out {out} lies inside {notebooks}; the dataset folder never goes into kaggle_notebooks/")
    inputs = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    for run_dir in (p for p in inputs if p.is_dir()):
        if out.resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(f"--out {out} lies inside the run directory {run_dir}; czii never writes into its input")
    if out.exists() and not (out / MANIFEST_NAME).is_file():
        raise ConfigError(f"--out {out} exists and is not a czii Kaggle dataset folder (no {MANIFEST_NAME}); "
                          "remove it or choose another folder")


@dataclass
class BuildResult:
    """The folder written, its manifest and the build's wall time."""

    out: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def wheels_bytes(self) -> int:
        return sum(f["size"] for name, f in self.manifest["files"].items() if name.startswith("wheels/"))


def build_kaggle_dataset(
    models: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    target: WheelTarget = WheelTarget(),
    wheels_from: str | Path | None = None,
    cache_dir: str | Path | None = None,
    project_dir: str | Path | None = None,
    constraints: str | Path | None = None,
    tta: str | Sequence[str] | None = None,
    thresholds: str | Path | None = None,
    allow_spec_mismatch: bool = False,
    allow_unfinished: bool = False,
    progress: bool = True,
    force: bool = False,
) -> BuildResult:
    """Write the offline Kaggle dataset folder for ``models`` to ``out`` (layout in the module docstring).

    ``models``: a training run directory, checkpoint files or a predictor spec YAML
    (:func:`czii.inference.pipeline.resolve_predictor`). ``project_dir`` (default: the checkout
    holding this module) gives the source tree and ``constraints.txt``. ``tta`` and
    ``thresholds`` override what comes with the models; thresholds tuned under another spec are
    refused unless ``allow_spec_mismatch``, unfinished training unless ``allow_unfinished``. Holds the
    lock ``<out>.lock`` while it builds (:mod:`czii.locks`; ``force`` takes over a stale one).
    """
    started = time.perf_counter()
    out = Path(out)
    project_dir = Path(project_dir) if project_dir is not None else Path(__file__).resolve().parents[2]
    _check_out(out, project_dir, models)
    check_output(out, "--out", kind="dir", overwrite=True)
    with locks.hold(locks.sibling_lock(out), "Kaggle dataset folder", out, force=force):
        pins = read_pins(constraints if constraints is not None else project_dir / "constraints.txt")
        source = WheelSource(target, Path(cache_dir) if cache_dir is not None else default_cache_dir(target),
                             Path(wheels_from) if wheels_from is not None else None)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(out)
        tmp.mkdir()
        try:
            models_part = _write_models(models, tmp, tta=tta, thresholds=thresholds,
                                        allow_spec_mismatch=allow_spec_mismatch, allow_unfinished=allow_unfinished)
            own = build_package_wheel(project_dir, tmp / "wheels")
            closure = resolve_closure(wheel_requirements(own), target, pins, source, progress=progress)
            for wheel in closure.wheels.values():
                shutil.copy2(wheel, tmp / "wheels" / wheel.name)
            version = str(parse_wheel_filename(own.name)[1])
            manifest = {
                "package": PACKAGE_NAME,
                "version": version,
                # dirty: the packaged sources (src/, pyproject.toml, README.md) differ from the commit or have new files
                "git": {"commit": git_commit(project_dir), "dirty": git_dirty(project_dir, _WHEEL_SOURCES)},
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "target": {"python_version": target.python_version, "implementation": "cp",
                           "platforms": list(target.platforms), "accepted_platforms": target.expanded_platforms},
                "provided": {"patterns": list(PROVIDED_PATTERNS), "requirements": sorted(closure.provided.values()),
                             "note": PROVIDED_NOTE},
                "install": f"pip install --no-index --find-links <dataset>/wheels {PACKAGE_NAME}",
                "wheels": sorted(p.name for p in (tmp / "wheels").glob("*.whl")),
                "unpinned": sorted(name for name in closure.wheels if name not in pins),
                "models": models_part,
                "files": _file_table(tmp),
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            if out.exists():
                if (out / KAGGLE_METADATA_NAME).is_file():
                    shutil.copy2(out / KAGGLE_METADATA_NAME, tmp / KAGGLE_METADATA_NAME)
                old = temp_sibling(out, "old")
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old)
            else:
                os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return BuildResult(out=out, manifest=manifest, seconds=time.perf_counter() - started)


def verify_dataset(folder: str | Path) -> dict[str, Any]:
    """The manifest of a built folder after checking every listed file's size and sha256 (DataError if not)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}: no readable {MANIFEST_NAME} ({exc})") from None
    actual = _file_table(folder)
    if actual.keys() != manifest["files"].keys():
        missing, extra = manifest["files"].keys() - actual.keys(), actual.keys() - manifest["files"].keys()
        raise DataError(f"{folder}: files differ from the manifest: missing {sorted(missing)}, extra {sorted(extra)}")
    changed = sorted(name for name, facts in actual.items() if facts != manifest["files"][name])
    if changed:
        raise DataError(f"{folder}: files changed since the build (size or sha256): {changed}")
    return manifest


# --------------------------------------------------------------------------- runtime projection


@dataclass(frozen=True)
class RuntimeProjection:
    """Inference time projected to the hidden test set from measured per-run seconds.

    Each run's seconds are scaled by (voxels of a real tomogram at the models' level) / (voxels
    measured), so timings on small volumes still project to full-size ones; fixed costs (model
    loading, everything outside the runs) count once.
    """

    run_seconds: dict[str, float]
    run_shapes_zyx: dict[str, tuple[int, int, int]]
    seconds_per_tomogram: float
    fixed_seconds: float
    n_tomograms: int
    limit_seconds: float

    @property
    def projected_seconds(self) -> float:
        return self.fixed_seconds + self.seconds_per_tomogram * self.n_tomograms

    @property
    def ok(self) -> bool:
        return self.projected_seconds <= self.limit_seconds

    def report(self) -> str:
        """Per-run table, the projection and one ``OK``/``OVER`` line."""
        lines = [f"{'run':<24} {'shape z,y,x':>16} {'seconds':>9}"]
        for run, seconds in self.run_seconds.items():
            lines.append(f"{run:<24} {'x'.join(map(str, self.run_shapes_zyx[run])):>16} {seconds:>9.2f}")
        hours, limit_hours = self.projected_seconds / 3600, self.limit_seconds / 3600
        lines += [
            f"per full-size tomogram: {self.seconds_per_tomogram:.2f} s; fixed: {self.fixed_seconds:.1f} s",
            (f"projected for {self.n_tomograms} tomograms: {hours:.2f} h of the {limit_hours:g} h limit "
             f"({100 * hours / limit_hours:.0f}%)"),
            f"{'OK' if self.ok else 'OVER'}: projected {hours:.2f} h {'<=' if self.ok else '>'} {limit_hours:g} h",
        ]
        return "\n".join(lines)


def project_runtime(
    manifest: Mapping[str, Any],
    *,
    n_tomograms: int = HIDDEN_TEST_TOMOGRAMS,
    limit_hours: float = KAGGLE_LIMIT_HOURS,
    full_shape_zyx: Sequence[int] | None = None,
) -> RuntimeProjection:
    """Project an inference manifest's ``timings`` (and ``total_seconds``) to ``n_tomograms`` runs.

    ``full_shape_zyx`` defaults to a real CZII tomogram (184×630×630 at level 0) at the manifest's
    pyramid ``level``.
    """
    timings = manifest.get("timings") or {}
    if not timings:
        raise DataError("the inference manifest has no per-run timings to project from")
    level = int(manifest.get("level", 0))
    full = tuple(full_shape_zyx) if full_shape_zyx is not None else tuple(
        math.ceil(s / 2**level) for s in CZII_SHAPE_ZYX)
    run_seconds = {run: float(sum(info["seconds"].values())) for run, info in timings.items()}
    shapes = {run: tuple(int(s) for s in info["shape_zyx"]) for run, info in timings.items()}
    scaled = [run_seconds[run] * math.prod(full) / math.prod(shapes[run]) for run in timings]
    total = float(manifest.get("total_seconds", sum(run_seconds.values())))
    return RuntimeProjection(
        run_seconds=run_seconds,
        run_shapes_zyx=shapes,
        seconds_per_tomogram=sum(scaled) / len(scaled),
        fixed_seconds=max(0.0, total - sum(run_seconds.values())),
        n_tomograms=n_tomograms,
        limit_seconds=limit_hours * 3600,
    )
