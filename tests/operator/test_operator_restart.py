"""An operator restart mid-job adopts the running gang: no duplicate, no recreated pod."""

from __future__ import annotations

import pytest
from operator_harness import BACKENDS, cluster_on, running_operator
from reconcile_factories import TINY_EXPERIMENT

from m2f_operator import metrics

TRAIN = "Mask2FormerTrain"
# Same xdist worker as test_operator.py: one in-process kopf operator at a time, less CPU contention.
pytestmark = pytest.mark.xdist_group("m2f-operator-cluster")


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_restart_creates_no_duplicate_pods(backend, tmp_path):
    names = ["run-worker-0", "run-worker-1", "run-worker-2"]
    with cluster_on(backend, tmp_path / "cluster") as (cluster, _):
        ns = cluster.namespace()
        with running_operator() as first:
            cluster.create(ns, TRAIN, "run", {"experiment": TINY_EXPERIMENT, "nodes": 3, "gpusPerNode": 0})
            pods = cluster.wait_pods(ns, names)
            cluster.set_pod(ns, "run-worker-0", "Running")
            cluster.set_pod(ns, "run-worker-1", "Running")
            cluster.wait_phase(ns, TRAIN, "run", "Created")
        assert first.exception is None
        uids = {p.metadata.name: p.metadata.uid for p in pods}
        created = metrics.REGISTRY.get_sample_value("m2f_operator_pods_created_total", {"kind": TRAIN, "namespace": ns})

        with running_operator() as second:
            # The new operator is live (it sees the last worker start) ...
            cluster.set_pod(ns, "run-worker-2", "Running")
            cluster.wait_phase(ns, TRAIN, "run", "Running")
            # ... and kept the very same pods.
            after = cluster.pods(ns)
        assert second.exception is None
        assert {p.metadata.name: p.metadata.uid for p in after} == uids
        assert metrics.REGISTRY.get_sample_value("m2f_operator_pods_created_total", {"kind": TRAIN, "namespace": ns}) == created
        assert cluster.status(ns, TRAIN, "run")["restarts"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_entry_point_serves_liveness_and_metrics_and_reconciles(tmp_path, backend):
    """`python -m m2f_operator` as the chart runs it (on `real`: with its own ServiceAccount token, the
    KUBECONFIG the harness sets): /healthz for the kubelet, /metrics for Prometheus."""
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    from operator_harness import OPERATOR_ENV, REPO_ROOT, wait_for

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    liveness, metrics_port = free_port(), free_port()

    def get(port: int, path: str) -> str | None:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
        except OSError:
            return None

    with cluster_on(backend, tmp_path / "cluster") as (cluster, _):
        env = {**os.environ, **OPERATOR_ENV, "KUBECONFIG": os.environ["KUBECONFIG"], "M2F_WATCH_NAMESPACE": "",
               "M2F_LIVENESS_PORT": str(liveness), "M2F_OPERATOR_METRICS_PORT": str(metrics_port),
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer")])}
        log = tmp_path / "operator.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "m2f_operator"], env=env, stdout=out, stderr=out)
        try:
            wait_for(lambda: get(liveness, "/healthz") is not None or process.poll() is not None, 90, "/healthz")
            assert process.poll() is None, log.read_text()[-3000:]
            ns = cluster.namespace()
            cluster.create(ns, TRAIN, "run", {"experiment": TINY_EXPERIMENT, "nodes": 1, "gpusPerNode": 0})
            cluster.wait_pods(ns, ["run-worker-0"], timeout=60)
            # The duration is observed when the reconcile that created the pod returns: wait for both.
            text = wait_for(lambda: (t := get(metrics_port, "/metrics")) and "m2f_operator_pods_created_total{" in t
                            and "m2f_operator_reconcile_duration_seconds_bucket" in t and t, 30, "operator metrics")
            assert f'm2f_operator_pods_created_total{{kind="Mask2FormerTrain",namespace="{ns}"}} 1.0' in text
            assert "m2f_operator_reconcile_duration_seconds_bucket" in text
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
