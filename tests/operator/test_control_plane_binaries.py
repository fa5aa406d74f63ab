"""Where the real control plane's binaries come from: M2F_KUBE_BIN_DIR, else the release tarball checked
against its SHA256SUMS and unpacked once into the cache, else (not run here) a build from Debian's source."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from m2f_devcluster.controlplane import binaries
from m2f_devcluster.controlplane.binaries import KUBE_BINARIES, TARBALL, BinariesError, find_binaries


def _fake_etcd(tmp_path):
    etcd = tmp_path / "etcd"
    etcd.write_text("#!/bin/sh\n")
    etcd.chmod(0o755)
    return str(etcd)


def _tarball(folder, sums: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TARBALL
    with tarfile.open(path, "w:xz") as archive:
        for name in KUBE_BINARIES:
            data = f"#!/bin/sh\necho {name}\n".encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    digest = sums or hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  {TARBALL}\n")
    return path


def test_bin_dir_wins(tmp_path):
    for name in KUBE_BINARIES:
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    found = find_binaries({"M2F_KUBE_BIN_DIR": str(tmp_path), "M2F_ETCD": _fake_etcd(tmp_path)}, build=False)
    assert found.kube_apiserver == tmp_path / "kube-apiserver" and found.source.startswith("M2F_KUBE_BIN_DIR")


def test_an_incomplete_bin_dir_names_what_is_missing(tmp_path):
    with pytest.raises(BinariesError, match="lacks one of kube-apiserver"):
        find_binaries({"M2F_KUBE_BIN_DIR": str(tmp_path), "M2F_ETCD": _fake_etcd(tmp_path)}, build=False)


def test_the_tarball_is_verified_then_unpacked_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tarball = _tarball(tmp_path / "kube")
    env = {"M2F_KUBE_TARBALL": str(tarball), "M2F_ETCD": _fake_etcd(tmp_path)}
    first = find_binaries(env, build=False)
    assert first.kube_scheduler.read_text() == "#!/bin/sh\necho kube-scheduler\n"
    assert first.kube_scheduler.parent == binaries.cache_dir() / "from-tarball"
    tarball.unlink()  # the cache serves from now on
    assert find_binaries(env, build=False).kube_apiserver == first.kube_apiserver


def test_a_tarball_that_does_not_match_its_sum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tarball = _tarball(tmp_path / "kube", sums="0" * 64)
    with pytest.raises(BinariesError, match="does not match SHA256SUMS"):
        find_binaries({"M2F_KUBE_TARBALL": str(tarball), "M2F_ETCD": _fake_etcd(tmp_path)}, build=False)


def test_nothing_to_be_had_says_every_way(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = {"M2F_KUBE_TARBALL": str(tmp_path / "absent.tar.xz"), "M2F_ETCD": _fake_etcd(tmp_path)}
    with pytest.raises(BinariesError, match="set M2F_KUBE_BIN_DIR, or put .* or run .*build-kube-from-debian.sh"):
        find_binaries(env, build=False)
    with pytest.raises(BinariesError, match="etcd is not installed: apt-get install etcd-server"):
        find_binaries({"PATH": str(tmp_path / "empty")}, build=False)
