"""Dataset paths in S3 (moto's server on 127.0.0.1) and archives: the node cache, its safety, and a training run."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import tarfile
import zipfile
from pathlib import Path

import pytest

from m2f_spec import load_spec
from m2f_trainer.cli import main
from m2f_trainer.data import build_dataset, ground_truth, staging, synthesize
from m2f_trainer.data.io import resolve
from m2f_trainer.errors import DataError

BUCKET = "m2f-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free port, reached through the standard AWS variables, as a pod's Secret sets them."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    patch = pytest.MonkeyPatch()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        patch.delenv(name, raising=False)
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    patch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    patch.setenv("AWS_CONFIG_FILE", str(tmp_path_factory.mktemp("aws") / "none"))  # no developer profile
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    patch.undo()
    server.stop()


def _tar_gz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return out


@pytest.fixture(scope="module")
def remote_data(s3, tmp_path_factory) -> tuple[Path, str]:
    """(spec, s3://.../data): the synthetic COCO panoptic set as TAO lays it out in a bucket."""
    out = tmp_path_factory.mktemp("synth")
    spec = synthesize("coco_panoptic", out, num_images=4, size=64)
    archives = tmp_path_factory.mktemp("archives")
    uploads = {
        "data/images.tar.gz": _tar_gz(out / "images", archives / "images.tar.gz"),
        "data/panoptic.tar.gz": _tar_gz(out / "panoptic", archives / "panoptic.tar.gz"),
        "data/annotations/panoptic.json": out / "annotations" / "panoptic.json",
        "data/label_map.json": out / "label_map.json",
    }
    for key, path in uploads.items():
        s3.upload_file(str(path), BUCKET, key)
    return spec, f"s3://{BUCKET}/data"


@pytest.fixture
def downloads(monkeypatch, tmp_path) -> list[str]:
    """The locations downloaded or extracted in this process, with a fresh per-process memo and node cache."""
    monkeypatch.setattr(staging, "_STAGED", {})
    monkeypatch.setenv(staging.CACHE_ENV, str(tmp_path / "node-cache"))
    calls: list[str] = []
    download, extract = staging._download, staging._extract

    def counted_download(fs, fs_path, location, info, dest):
        calls.append(location)
        return download(fs, fs_path, location, info, dest)

    def counted_extract(archive, location, work):
        calls.append(f"extract {location}")
        return extract(archive, location, work)

    monkeypatch.setattr(staging, "_download", counted_download)
    monkeypatch.setattr(staging, "_extract", counted_extract)
    return calls


def _remote_overrides(base: str) -> list[str]:
    overrides = [f"dataset.label_map={base}/label_map.json"]
    for split in ("train", "val"):
        overrides += [f"dataset.{split}.img_dir={base}/images.tar.gz",
                      f"dataset.{split}.panoptic_dir={base}/panoptic.tar.gz",
                      f"dataset.{split}.panoptic_json={base}/annotations/panoptic.json"]
    return overrides


def test_training_reads_its_dataset_from_s3_archives_once(remote_data, downloads, tmp_path, monkeypatch):
    spec, base = remote_data
    cache = tmp_path / "cache"
    monkeypatch.setenv(staging.CACHE_ENV, str(cache))
    results = tmp_path / "results"
    assert main(["train", "-e", str(spec), f"results_dir={results}", "train.num_epochs=1", "train.metrics_port=0",
                 *_remote_overrides(base)]) == 0
    # Train and val name the same objects: each is downloaded (and extracted) once.
    assert sorted(downloads) == sorted([f"{base}/images.tar.gz", f"extract {base}/images.tar.gz",
                                        f"{base}/panoptic.tar.gz", f"extract {base}/panoptic.tar.gz",
                                        f"{base}/annotations/panoptic.json", f"{base}/label_map.json"])
    records = [json.loads(line) for line in (results / "train" / "metrics.jsonl").read_text().splitlines()]
    [validation] = [r for r in records if r["event"] == "validation"]
    assert 0.0 <= validation["val/PQ"] <= 1.0 and validation["val/num_images"] == 4
    entries = sorted(p.name for p in cache.iterdir())
    assert len([e for e in entries if e.endswith(".lock")]) == 4 and not [e for e in entries if "partial" in e]
    assert not list(cache.glob("*/*.tar.gz"))  # the extracted tree is kept, not the archive too

    # A later process (fresh memo) reuses the node's cache: nothing is downloaded again.
    downloads.clear()
    monkeypatch.setattr(staging, "_STAGED", {})
    cfg = load_spec(spec, _remote_overrides(base))
    dataset = build_dataset(cfg, "train")
    truth = ground_truth(cfg, "val")
    assert downloads == []
    assert len(dataset) == 4 and truth.panoptic_dir.is_dir() and truth.img_dir.is_dir()
    assert cache in truth.panoptic_json.parents and (truth.img_dir / "000001.jpg").is_file()


def test_resolve_joins_relative_paths_under_a_remote_root_dir(remote_data, downloads, tmp_path):
    _, base = remote_data
    assert staging.join("annotations/panoptic.json", base) == f"{base}/annotations/panoptic.json"
    assert staging.join("./label_map.json", base + "/") == f"{base}/label_map.json"
    local = resolve("annotations/panoptic.json", base)
    assert json.loads(local.read_text())["categories"] and tmp_path / "node-cache" in local.parents
    assert staging.stage(f"{base}/annotations/panoptic.json") == local  # once per path per process


def test_a_remote_folder_is_downloaded_recursively(s3, downloads, tmp_path):
    for key in ("folder/a.jpg", "folder/sub/b.jpg"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
    local = staging.stage(f"s3://{BUCKET}/folder", tmp_path)
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.jpg")) == ["a.jpg", "sub/b.jpg"]


def _stage_in_child(url: str, cache: str, barrier, results) -> None:
    extractions = []
    extract = staging._extract
    staging._extract = lambda *args: extractions.append(1) or extract(*args)
    staging._STAGED.clear()
    barrier.wait()
    results.put((str(staging.stage(url, Path(cache))), len(extractions)))


def test_concurrent_processes_of_a_node_share_one_extraction(s3, tmp_path):
    url = f"s3://{BUCKET}/concurrent/images.tar.gz"
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(20):
        (folder / f"{index:03d}.jpg").write_bytes(bytes(range(256)) * 64)
    s3.upload_file(str(_tar_gz(folder, tmp_path / "images.tar.gz")), BUCKET, "concurrent/images.tar.gz")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    children = [context.Process(target=_stage_in_child, args=(url, str(tmp_path / "cache"), barrier, results))
                for _ in range(3)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert len({path for path, _ in outcomes}) == 1 and sum(count for _, count in outcomes) == 1
    staged = Path(outcomes[0][0])
    assert staged.name == "images" and len(list(staged.glob("*.jpg"))) == 20
    assert (staged.parent.parent / staging.COMPLETE).is_file()


def test_an_interrupted_download_resumes_from_its_part_file(s3, downloads, tmp_path, caplog, monkeypatch):
    url = f"s3://{BUCKET}/resume/blob.bin"
    content = bytes(range(256)) * 4096  # 1 MiB
    s3.put_object(Bucket=BUCKET, Key="resume/blob.bin", Body=content)
    monkeypatch.setattr(staging, "CHUNK", 64 << 10)
    progress = staging._progress

    @contextlib.contextmanager
    def connection_lost_halfway(location, size, done):
        def advance(count):
            nonlocal done
            done += count
            if done >= size // 2:
                raise ConnectionResetError("connection reset by peer")
        yield advance

    monkeypatch.setattr(staging, "_progress", connection_lost_halfway)
    with pytest.raises(DataError, match=rf"download of {url} failed: ConnectionResetError"):
        staging.stage(url, tmp_path)
    work = tmp_path / f"{staging.cache_key(url)}.partial"
    assert (work / "blob.bin.part").stat().st_size == len(content) // 2
    monkeypatch.setattr(staging, "_progress", progress)
    with caplog.at_level(logging.INFO, logger=staging.__name__):
        local = staging.stage(url, tmp_path)
    assert local.read_bytes() == content and not work.exists()
    assert f"resuming {url} from byte {len(content) // 2}" in caplog.text


def test_a_changed_object_is_staged_again(s3, downloads, tmp_path):
    url = f"s3://{BUCKET}/changed/label_map.json"
    s3.put_object(Bucket=BUCKET, Key="changed/label_map.json", Body=b"[1]")
    assert staging.stage(url, tmp_path).read_bytes() == b"[1]"
    s3.put_object(Bucket=BUCKET, Key="changed/label_map.json", Body=b"[2]")  # same size, new ETag
    staging._STAGED.clear()  # a later process
    assert staging.stage(url, tmp_path).read_bytes() == b"[2]"
    assert downloads == [url, url]


def test_a_tar_member_escaping_the_folder_is_refused(tmp_path, downloads):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        member = tarfile.TarInfo("../evil")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match=r"evil\.tar has a member outside its folder"):
        staging.stage(archive, tmp_path / "cache")
    assert not (tmp_path / "cache" / "evil").exists() and not (tmp_path / "evil").exists()


def test_a_zip_member_escaping_the_folder_is_refused(tmp_path, downloads):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../evil", b"evil")
    with pytest.raises(DataError, match=r"evil\.zip has a member outside its folder: '\.\./evil'"):
        staging.stage(archive, tmp_path / "cache")


def test_a_corrupt_archive_is_a_data_error_naming_it(tmp_path, downloads):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"archive {archive} is corrupt"):
        staging.stage(archive, tmp_path / "cache")


def test_a_missing_object_is_a_data_error_naming_the_url(s3, downloads, tmp_path):
    url = f"s3://{BUCKET}/data/missing.tar.gz"
    with pytest.raises(DataError, match=rf"^{url} does not exist$"):
        staging.stage(url, tmp_path)


def test_a_local_zip_of_a_folder_is_extracted_once(tmp_path, downloads):
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("images/000001.jpg", b"jpeg")
        handle.writestr("images/sub/000002.jpg", b"jpeg")
    local = staging.stage(archive, tmp_path / "cache")
    assert local.name == "images" and (local / "sub" / "000002.jpg").read_bytes() == b"jpeg"
    staging._STAGED.clear()
    assert staging.stage(str(archive), tmp_path / "cache") == local
    assert downloads == [f"extract {archive}"]


def test_plain_local_paths_are_returned_unchanged(tmp_path, downloads):
    assert staging.stage(tmp_path / "images") == tmp_path / "images"
    assert staging.stage("relative/panoptic.json") == Path("relative/panoptic.json")
    assert resolve("images", tmp_path) == tmp_path / "images"
    assert not staging.is_remote("/data/x.tar.gz") and staging.is_remote("s3://b/x")
    assert staging.is_archive("s3://b/x.tgz") and not staging.is_archive("/data/images")
    assert downloads == []


def test_signed_urls_keep_their_query_out_of_names_and_messages():
    url = "s3://bucket/data/images.tar.gz?X-Amz-Signature=secret&X-Amz-Credential=key"
    assert staging.is_archive(url)
    assert "secret" not in staging.display(url) and staging.display(url) == "s3://bucket/data/images.tar.gz"
    assert staging.display("https://user:pass@host/x.zip?sig=1") == "https://***@host/x.zip"
