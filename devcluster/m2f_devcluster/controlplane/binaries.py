"""Where the real control plane's binaries come from, in this order:

1. ``M2F_KUBE_BIN_DIR``: a folder with kube-apiserver, kube-controller-manager and kube-scheduler;
2. the release tarball in ``shared/kube/`` beside the checkout (or ``M2F_KUBE_TARBALL``), checked against its
   SHA256SUMS and unpacked once into the cache;
3. a build from Debian's ``kubernetes`` source package into the cache (``hack/build-kube-from-debian.sh``,
   about 5 minutes on 2 cores; needs root for apt).

etcd is Debian's ``etcd-server`` (``etcd`` on PATH or ``M2F_ETCD``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "1.20.2"
TARBALL = f"kube-control-plane-{KUBE_VERSION}-linux-amd64.tar.xz"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "hack" / "build-kube-from-debian.sh"


class BinariesError(RuntimeError):
    """No way to obtain a binary; the message says which ways were tried and what to do."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    source: str  # where the kube binaries came from, for the log


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "m2f" / f"kube-{KUBE_VERSION}"


def find_binaries(env: dict[str, str] | None = None, build: bool = True) -> Binaries:
    env = dict(os.environ if env is None else env)
    etcd = env.get("M2F_ETCD") or shutil.which("etcd", path=env.get("PATH"))
    if not etcd:
        raise BinariesError("etcd is not installed: apt-get install etcd-server (or set M2F_ETCD)")
    kube_dir, source = _kube_dir(env, build)
    return Binaries(Path(etcd), *(kube_dir / name for name in KUBE_BINARIES), source=source)


def _complete(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in KUBE_BINARIES)


def _kube_dir(env: dict[str, str], build: bool) -> tuple[Path, str]:
    if env.get("M2F_KUBE_BIN_DIR"):
        folder = Path(env["M2F_KUBE_BIN_DIR"])
        if not _complete(folder):
            raise BinariesError(f"M2F_KUBE_BIN_DIR={folder} lacks one of {', '.join(KUBE_BINARIES)}")
        return folder, f"M2F_KUBE_BIN_DIR {folder}"
    cache = cache_dir()
    tarball = Path(env["M2F_KUBE_TARBALL"]) if env.get("M2F_KUBE_TARBALL") else REPO.parent / "shared" / "kube" / TARBALL
    unpacked = cache / "from-tarball"
    if _complete(unpacked):
        return unpacked, f"{tarball.name} (cached in {unpacked})"
    if tarball.is_file():
        _verify(tarball)
        _unpack(tarball, unpacked)
        return unpacked, f"{tarball} (unpacked into {unpacked})"
    built = cache / "built"
    if _complete(built):
        return built, f"a build from Debian's source package (cached in {built})"
    if not build:
        raise BinariesError(f"no kube binaries: set M2F_KUBE_BIN_DIR, or put {TARBALL} at {tarball}, "
                            f"or run {BUILD_SCRIPT} {built}")
    result = subprocess.run(["bash", str(BUILD_SCRIPT), str(built)], check=False)
    if result.returncode or not _complete(built):
        raise BinariesError(f"building the kube binaries from Debian's source package failed ({BUILD_SCRIPT})")
    return built, f"a build from Debian's source package ({built})"


def _verify(tarball: Path) -> None:
    sums = tarball.parent / "SHA256SUMS"
    if not sums.is_file():
        raise BinariesError(f"{tarball} has no SHA256SUMS beside it to check it against")
    expected = next((line.split()[0] for line in sums.read_text().splitlines()
                     if line.strip().endswith(tarball.name)), None)
    digest = hashlib.sha256()
    with tarball.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    if expected != digest.hexdigest():
        raise BinariesError(f"{tarball}: SHA256 {digest.hexdigest()} does not match SHA256SUMS ({expected})")


def _unpack(tarball: Path, destination: Path) -> None:
    """Unpack into a sibling temporary folder, then rename: a concurrent or interrupted unpack leaves no half."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".unpack-"))
    with tarfile.open(tarball) as archive:
        members = [m for m in archive.getmembers() if Path(m.name).name in KUBE_BINARIES and m.isfile()]
        for member in members:
            member.name = Path(member.name).name
        archive.extractall(staging, members=members, filter="data")
    for name in KUBE_BINARIES:
        (staging / name).chmod(0o755)
    try:
        staging.rename(destination)
    except OSError:  # another process won the race: theirs is as good
        shutil.rmtree(staging, ignore_errors=True)
