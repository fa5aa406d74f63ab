"""Dataset paths in object storage (``s3://``, any fsspec URL) and archives: staged once per node into a local cache."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from m2f_trainer.errors import DataError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
CACHE_ENV = "M2F_DATA_CACHE"
COMPLETE = ".complete"
SOURCE = ".source"  # the fingerprint of what a .partial folder holds a part of
CHUNK = 8 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
# One stage() per location per process: spec adapters ask for the same path many times.
_STAGED: dict[tuple[str, str], Path] = {}


def is_remote(path: str | os.PathLike) -> bool:
    return bool(_SCHEME.match(str(path)))


def _without_query(location: str) -> str:
    """A URL's path part: a signed URL's query (`?X-Amz-Signature=...`) is neither a name nor printable."""
    return location.split("?", 1)[0] if is_remote(location) else location


def is_archive(path: str | os.PathLike) -> bool:
    return _without_query(str(path)).lower().rstrip("/").endswith(ARCHIVE_SUFFIXES)


def join(path: str | os.PathLike, root_dir: str | os.PathLike | None) -> str | Path:
    """A spec path under root_dir: URLs and absolute paths as they are; a remote root joins with '/'."""
    text = str(path)
    if is_remote(text):
        return text
    if root_dir and is_remote(root_dir):
        if text.startswith("/"):
            return Path(text)
        relative = PurePosixPath(text).as_posix().removeprefix("./")
        return str(root_dir).rstrip("/") + "/" + relative
    # pathlib would fold the '//' of a URL; only local paths go through it.
    local = Path(path)
    return local if local.is_absolute() or not root_dir else Path(root_dir) / local


def cache_root() -> Path:
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "m2f" / "datasets"


def cache_key(location: str) -> str:
    return hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]


def display(location: str) -> str:
    """The location for messages: never the user:password or the (signed) query of a URL."""
    return _USERINFO.sub(r"\1***@", _without_query(location))


def stage(path: str | os.PathLike, cache_dir: Path | None = None) -> Path:
    """A local path for a dataset path: plain local paths as they are, URLs downloaded, archives extracted.

    The node's processes share ``<cache>/<sha256(location)[:16]>/``: the first one stages under a file
    lock into a temporary folder renamed into place, with a ``.complete`` marker written last; the others
    wait for it and reuse the result. A remote object changed since (size, ETag) is staged again.
    """
    location = str(path)
    remote = is_remote(location)
    if not remote and not is_archive(location):
        return Path(path)
    if not remote:
        location = str(Path(location).absolute())
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    key = (location, str(cache))
    if key not in _STAGED:
        _STAGED[key] = _stage(location, remote, cache)
    return _STAGED[key]


def _stage(location: str, remote: bool, cache: Path) -> Path:
    digest = cache_key(location)
    final, work = cache / digest, cache / f"{digest}.partial"
    fs, fs_path, info = _source(location) if remote else (None, location, _local_info(location))
    fingerprint = _fingerprint(info)
    done = _completed(final, fingerprint)
    if done is not None:
        return done
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"data cache {cache} is not writable ({CACHE_ENV} sets it): {exc}") from None
    with _locked(cache / f"{digest}.lock", location):
        done = _completed(final, fingerprint)  # another process of the node finished while this one waited
        if done is not None:
            return done
        if final.exists():  # stale (the source changed) or cut short between rename and marker
            shutil.rmtree(final)
        _prepare_work(work, fingerprint)
        name = _basename(location)
        if remote and info.get("type") == "directory":
            tree = work / f"{name}.tmp"
            shutil.rmtree(tree, ignore_errors=True)
            log.info("downloading folder %s to %s", display(location), final)
            try:
                fs.get(fs_path.rstrip("/") + "/", str(tree) + "/", recursive=True)
            except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors have no common base; name the URL
                raise DataError(f"download of {display(location)} failed: {type(exc).__name__}: {exc}") from None
            os.replace(tree, work / name)
            result = name
        else:
            source = _download(fs, fs_path, location, info, work / name) if remote else Path(location)
            result = name
            if is_archive(location):
                try:
                    result = _extract(source, location, work)
                finally:
                    if remote:  # the extracted tree is what is read; keeping the archive doubles the disk use
                        source.unlink()
        for leftover in [*work.glob("*.part"), work / SOURCE]:
            leftover.unlink(missing_ok=True)
        os.replace(work, final)
        _write_marker(final, {"source": display(location), "fingerprint": fingerprint, "result": result})
        log.info("staged %s at %s", display(location), final / result)
        return final / result


def _prepare_work(work: Path, fingerprint: dict) -> None:
    """The work folder, kept across interruptions for its .part file unless the source has changed since."""
    try:
        resumable = json.loads((work / SOURCE).read_text(encoding="utf-8")) == fingerprint
    except (OSError, ValueError):
        resumable = False
    if not resumable:  # a part of another version of the object must not be continued
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        (work / SOURCE).write_text(json.dumps(fingerprint), encoding="utf-8")


def _completed(final: Path, fingerprint: dict) -> Path | None:
    try:
        marker = json.loads((final / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("fingerprint") != fingerprint:
        return None
    result = final / marker["result"]
    return result if result.exists() else None


def _write_marker(final: Path, content: dict) -> None:
    temporary = final / f"{COMPLETE}.tmp"
    temporary.write_text(json.dumps(content), encoding="utf-8")
    os.replace(temporary, final / COMPLETE)


@contextlib.contextmanager
def _locked(lock_path: Path, location: str):
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process of this node to stage %s", display(location))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _basename(location: str) -> str:
    name = _without_query(location).rstrip("/").rsplit("/", 1)[-1]
    return name or "data"


# ------------------------------------------------------------------------------------------- sources


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options from the environment: credentials and region stay with botocore's own lookup."""
    if protocol not in ("s3", "s3a"):
        return {}
    # botocore >= 1.31 reads AWS_ENDPOINT_URL(_S3) itself; stating it keeps older botocore pins working.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def _source(location: str) -> tuple[Any, str, dict]:
    try:
        import fsspec
        from fsspec.core import split_protocol
    except ImportError:
        raise DataError(f"{display(location)}: remote dataset paths need fsspec (and s3fs for s3://)") from None
    protocol, _ = split_protocol(location)
    try:
        fs, fs_path = fsspec.core.url_to_fs(location, **storage_options(protocol))
    except (ImportError, ValueError) as exc:
        raise DataError(f"{display(location)}: no filesystem for {protocol}:// ({exc})") from None
    try:
        info = fs.info(fs_path)
    except FileNotFoundError:
        raise DataError(f"{display(location)} does not exist") from None
    except PermissionError as exc:
        raise DataError(f"{display(location)} is not readable with the configured credentials: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors have no common base; name the URL
        raise DataError(f"{display(location)} could not be read: {type(exc).__name__}: {exc}") from None
    return fs, fs_path, info


def _local_info(location: str) -> dict:
    try:
        stat = os.stat(location)
    except FileNotFoundError:
        raise DataError(f"archive {location} does not exist") from None
    return {"type": "file", "size": stat.st_size, "mtime": stat.st_mtime_ns}


def _fingerprint(info: dict) -> dict:
    """What tells a changed source from the staged one; folders are staged once (no cheap fingerprint)."""
    if info.get("type") == "directory":
        return {"type": "directory"}
    fields = {"size": info.get("size")}
    for name in ("ETag", "etag", "mtime", "LastModified", "last_modified"):
        if info.get(name) is not None:
            fields[name.lower()] = str(info[name])
    return fields


def _download(fs: Any, fs_path: str, location: str, info: dict, dest: Path) -> Path:
    """Download to ``<dest>.part``, resuming a part left by an interrupted run when the source can seek."""
    size = info.get("size")
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        offset = 0
    try:
        with fs.open(fs_path, "rb") as source:
            if offset:
                try:
                    source.seek(offset)
                    log.info("resuming %s from byte %d of %s", display(location), offset, size)
                except (OSError, ValueError) as exc:  # a stream without ranged reads: start over
                    log.info("restarting %s: the source cannot resume (%s)", display(location), exc)
                    offset = 0
            if not offset:
                log.info("downloading %s (%s) to %s", display(location), _size_text(size), dest.parent)
            with open(part, "ab" if offset else "wb") as target, _progress(location, size, offset) as advance:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
                    advance(len(chunk))
    except FileNotFoundError:
        raise DataError(f"{display(location)} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - the .part file stays for the next run to resume
        raise DataError(f"download of {display(location)} failed: {type(exc).__name__}: {exc}") from None
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DataError(f"download of {display(location)} has {got} bytes, expected {size}")
    os.replace(part, dest)
    return dest


@contextlib.contextmanager
def _progress(location: str, size: int | None, done: int):
    """A tqdm bar on a terminal; otherwise a log line at most every 30 s (pod logs stay readable)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=size, initial=done, unit="B", unit_scale=True, desc=_basename(location)) as bar:
            yield bar.update
        return
    state = {"done": done, "logged": time.monotonic()}

    def advance(count: int) -> None:
        state["done"] += count
        if time.monotonic() - state["logged"] >= 30:
            state["logged"] = time.monotonic()
            log.info("%s: %s of %s", display(location), _size_text(state["done"]), _size_text(size))

    yield advance


def _size_text(size: int | None) -> str:
    if size is None:
        return "unknown size"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# ------------------------------------------------------------------------------------------ archives


def _extract(archive: Path, location: str, work: Path) -> str:
    """Extract into ``work/extracted``; the folder to read, relative to work (a lone top folder itself)."""
    target = work / "extracted.tmp"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    log.info("extracting %s", display(location))
    try:
        if location.lower().rstrip("/").endswith(".zip"):
            _extract_zip(archive, target, location)
        else:
            with tarfile.open(archive, "r:*") as tar:
                # "data" refuses absolute names, '..', links leaving the target and device files.
                tar.extractall(target, filter="data")
    except tarfile.FilterError as exc:
        raise DataError(f"archive {display(location)} has a member outside its folder: {exc}") from None
    except OSError as exc:
        if exc.errno is not None:  # a full or read-only disk: not the archive's fault (bz2/gzip errors have none)
            raise DataError(f"extracting archive {display(location)} into {target} failed: {exc}") from None
        raise DataError(f"archive {display(location)} is corrupt or not a tar/zip archive: {exc}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"archive {display(location)} is corrupt or not a tar/zip archive: {exc}") from None
    extracted = work / "extracted"
    shutil.rmtree(extracted, ignore_errors=True)
    os.replace(target, extracted)
    entries = list(extracted.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return f"extracted/{entries[0].name}"
    return "extracted"


def _extract_zip(archive: Path, target: Path, location: str) -> None:
    root = target.resolve()
    with zipfile.ZipFile(archive) as handle:
        for member in handle.infolist():
            name = member.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            destination = (root / name).resolve()
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or (
                destination != root and root not in destination.parents
            ):
                raise DataError(f"archive {display(location)} has a member outside its folder: {name!r}")
        # zipfile writes symlink members as plain files, so no link can point outside either; a CRC
        # mismatch raises BadZipFile while extracting.
        handle.extractall(target)
