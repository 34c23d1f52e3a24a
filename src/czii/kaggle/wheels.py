"""Wheels for the offline Kaggle dataset: the target (Python, platforms), the packages Kaggle's image provides,
and the dependency closure of czii's wheel.

Dependency versions come from ``constraints.txt``; the closure is walked over each wheel's own
``Requires-Dist`` with markers evaluated for the target (Linux, CPython). Wheels are looked up
in ``wheels_from`` and in a per-target cache (``$CZII_CACHE`` or ``~/.cache/czii``, then
``wheels/<target key>``), else fetched with ``pip download --only-binary=:all:`` into the cache;
a package with only a source distribution is built with ``pip wheel`` and must give a wheel the
target accepts.
"""

from __future__ import annotations

import email.parser
import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version
from tqdm import tqdm

from czii.errors import BuildError, ConfigError

# Kaggle's notebook image: Python 3.11 on Ubuntu 22.04 (glibc 2.35) with a CUDA build of torch.
KAGGLE_PYTHON_VERSION = "3.11"
KAGGLE_PLATFORMS: tuple[str, ...] = ("manylinux_2_35_x86_64",)
PROVIDED_PATTERNS: tuple[str, ...] = ("torch", "torchvision", "triton", "nvidia-*", "cuda-*")
PROVIDED_NOTE = (
    "Kaggle's GPU image is assumed to provide a CUDA build of torch and torchvision (with triton, "
    "nvidia-* and cuda-* libraries) at the versions czii pins; these are not bundled. Everything "
    "else czii needs is in wheels/."
)

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


WHEEL_SOURCES = ("src", "pyproject.toml", "README.md")


def build_package_wheel(project_dir: Path, dest: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the source tree (pyproject.toml, README.md, src/) into ``dest``."""
    pyproject = project_dir / "pyproject.toml"
    if not pyproject.is_file() or not (project_dir / "src" / PACKAGE_NAME).is_dir():
        raise ConfigError(f"{project_dir}: not the czii source tree (needs pyproject.toml and src/czii/)")
    with tempfile.TemporaryDirectory(prefix="czii-wheel-") as tmp:
        tree = Path(tmp) / "czii"
        shutil.copytree(project_dir / "src", tree / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        for name in WHEEL_SOURCES[1:]:
            if (project_dir / name).is_file():
                shutil.copy2(project_dir / name, tree / name)
        built = _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(Path(tmp) / "out"),
                     str(tree))
        wheels = sorted((Path(tmp) / "out").glob(f"{PACKAGE_NAME}-*.whl"))
        if built.returncode != 0 or len(wheels) != 1:
            raise BuildError(f"package {PACKAGE_NAME}: building its wheel from {project_dir} failed: {_tail(built)}")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], dest / wheels[0].name))
