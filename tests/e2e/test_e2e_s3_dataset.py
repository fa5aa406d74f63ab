"""A Train whose dataset lives in S3 as TAO lays it out (issue 13): `.tar.gz` archives and jsons in a bucket.

moto's S3 server runs in this process on 127.0.0.1; the dev cluster's pods are local processes, so they reach
it at that address as a pod reaches an in-cluster MinIO. The endpoint and the (dummy) keys are in a Secret that
the Train hands to its trainer container with `envFrom` through `spec.podTemplate`, as docs/data.md tells users
to. The trainer stages each object into `M2F_DATA_CACHE` (an `emptyDir`) and trains from there.
"""

from __future__ import annotations

import logging
import re
import tarfile
import time
from pathlib import Path

import pytest
from e2e_helpers import (
    THREADS_ENV,
    TRAINS,
    VOLUMES,
    ClusterEnv,
    pod_exit_code,
    read_metrics,
    tiny_experiment,
    train_manifest,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(900)]

BUCKET = "m2f-e2e"
PREFIX = f"s3://{BUCKET}/synth"
SECRET = "s3-credentials"
# moto accepts any keys; the secret one is distinctive so the test can prove no log line carries it.
ACCESS_KEY, SECRET_KEY = "e2e-access-key", "e2e-secret-key-not-for-logs"
JOB_TIMEOUT = 420  # generous for a loaded 2-core machine
ARCHIVES = {"images": "images.tar.gz", "panoptic": "images_panoptic.tar.gz"}  # local folder -> object name
JSONS = ("annotations/panoptic.json", "label_map.json")


@pytest.fixture(scope="module")
def s3_endpoint(synthetic_dataset_dir: Path, tmp_path_factory) -> str:
    """moto's S3 server on a free 127.0.0.1 port, holding the e2e synthetic dataset: the image and panoptic PNG
    folders as .tar.gz archives, the panoptic json and the label map as they are. Returns its URL."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Explicit settings: the uploads must not depend on this machine's AWS variables or profiles.
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    client.create_bucket(Bucket=BUCKET)
    archives = tmp_path_factory.mktemp("s3-archives")
    for folder, name in ARCHIVES.items():
        with tarfile.open(archives / name, "w:gz") as tar:
            tar.add(synthetic_dataset_dir / folder, arcname=name.removesuffix(".tar.gz"))
        client.upload_file(str(archives / name), BUCKET, f"synth/{name}")
    for key in JSONS:
        client.upload_file(str(synthetic_dataset_dir / key), BUCKET, f"synth/{key}")
    yield endpoint
    server.stop()


def s3_experiment(dataset_on_pvc: str) -> dict:
    """The e2e tiny experiment, 1 epoch, with its train and val splits and label map read from the bucket (the
    test split, unused by training, stays on the datasets volume)."""
    experiment = tiny_experiment(dataset_on_pvc, epochs=1)
    data = experiment["dataset"]
    data["label_map"] = f"{PREFIX}/label_map.json"
    for split in ("train", "val"):
        data[split].pop("root_dir", None)
        data[split].update(img_dir=f"{PREFIX}/images.tar.gz", panoptic_dir=f"{PREFIX}/images_panoptic.tar.gz",
                           panoptic_json=f"{PREFIX}/annotations/panoptic.json")
    return experiment


def test_train_reads_its_dataset_from_s3_archives_with_credentials_from_a_secret(
        cluster_env: ClusterEnv, s3_endpoint: str):
    env, name = cluster_env, "from-s3"
    started = time.monotonic()
    env.kubectl.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "type": "Opaque",
                       "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                                      "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}})
    env.kubectl.apply(train_manifest(
        name, s3_experiment(env.dataset), nodes=1,
        env=[*THREADS_ENV, {"name": "M2F_DATA_CACHE", "value": "/data-cache"}],
        volumes=[*VOLUMES["volumes"], {"name": "data-cache", "emptyDir": {}}],
        volumeMounts=[*VOLUMES["volumeMounts"], {"name": "data-cache", "mountPath": "/data-cache"}],
        podTemplate={"spec": {"containers": [{"name": "m2f", "envFrom": [{"secretRef": {"name": SECRET}}]}]}}))
    status = env.wait_phase(TRAINS, name, "Succeeded", JOB_TIMEOUT)
    assert status["restarts"] == 0, status

    # The credentials reached the pod by reference only: envFrom on the trainer container, no AWS_* value
    # copied into the pod spec.
    pod = env.recorder.latest("pods", f"{name}-worker-0")
    assert pod is not None and pod_exit_code(pod) == 0, env.report(name)
    [container] = [c for c in pod["spec"]["containers"] if c["name"] == "m2f"]
    assert {"secretRef": {"name": SECRET}} in container.get("envFrom", []), container
    assert not [e for e in container.get("env", []) if e["name"].startswith("AWS_")], container["env"]

    # Each object was downloaded once (train and val name the same ones), the archives extracted, all into the
    # pod's emptyDir cache, and no log line carries the secret key.
    log = env.kubectl("logs", f"{name}-worker-0").stdout
    cache = env.data_dir / "pods"
    for key in [*ARCHIVES.values(), *JSONS]:
        url = f"{PREFIX}/{key}"
        assert len(re.findall(rf"downloading {re.escape(url)} \(", log)) == 1, log[-4000:]
        staged = re.findall(rf"staged {re.escape(url)} at (\S+)", log)
        assert len(staged) == 1 and staged[0].startswith(f"{cache}/") and "/volumes/data-cache/" in staged[0], staged
        assert (f"extracting {url}" in log) == key.endswith(".tar.gz"), log[-4000:]
    assert SECRET_KEY not in log

    # It trained and validated on the staged data: all 8 images.
    records = read_metrics(env.train_dir(name))
    [validation] = [r for r in records if r["event"] == "validation"]
    assert validation["val/num_images"] == 8 and 0.0 <= validation["val/PQ"] <= 1.0, validation
    assert records[-1]["event"] == "end" and records[-1]["epoch"] == 1, records[-1]
    print(f"\n{env.cluster.control_plane}: Train from S3 succeeded in {time.monotonic() - started:.0f} s")
