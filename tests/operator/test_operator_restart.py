"""An operator restart or a leader failover mid-job adopts the running gang: no duplicate, no recreated pod."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException
from operator_harness import BACKENDS, OPERATOR_ENV, cluster_on, running_operator, wait_for
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(port: int, path: str) -> str | None:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read().decode()
    except OSError:
        return None


@contextlib.contextmanager
def operator_process(log: Path, **env: str) -> Iterator[subprocess.Popen]:
    """`python -m m2f_operator` as the chart runs it (on `real`: with its own ServiceAccount token, the
    KUBECONFIG the harness set)."""
    environ = {**os.environ, **OPERATOR_ENV, "KUBECONFIG": os.environ["KUBECONFIG"], "M2F_WATCH_NAMESPACE": "", **env}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "m2f_operator"], env=environ, stdout=out, stderr=out)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.parametrize("backend", BACKENDS)
def test_entry_point_serves_liveness_and_metrics_and_reconciles(tmp_path, backend):
    """/healthz for the kubelet, /metrics for Prometheus."""
    liveness, metrics_port = _free_port(), _free_port()
    with cluster_on(backend, tmp_path / "cluster") as (cluster, _), \
            operator_process(tmp_path / "operator.log", M2F_LIVENESS_PORT=str(liveness),
                             M2F_OPERATOR_METRICS_PORT=str(metrics_port)) as process:
        wait_for(lambda: _get(liveness, "/healthz") is not None or process.poll() is not None, 90, "/healthz")
        assert process.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
        ns = cluster.namespace()
        cluster.create(ns, TRAIN, "run", {"experiment": TINY_EXPERIMENT, "nodes": 1, "gpusPerNode": 0})
        cluster.wait_pods(ns, ["run-worker-0"], timeout=60)
        # The duration is observed when the reconcile that created the pod returns: wait for both.
        text = wait_for(lambda: (t := _get(metrics_port, "/metrics")) and "m2f_operator_pods_created_total{" in t
                        and "m2f_operator_reconcile_duration_seconds_bucket" in t and t, 30, "operator metrics")
        assert f'm2f_operator_pods_created_total{{kind="Mask2FormerTrain",namespace="{ns}"}} 1.0' in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_standby_takes_over_when_the_leader_is_killed_mid_job(tmp_path, backend):
    """Two replicas with leader election (the chart's default): the leader is SIGKILLed while a gang runs; the
    standby takes the Lease within its duration, adopts the gang (no duplicate pod) and finishes the job."""
    from m2f_operator.leader import LEASE_SECONDS, RETRY_SECONDS

    lease_ns, lease = "m2f-system", "m2f-mask2former-operator"  # the chart's release namespace and Lease (RBAC: only it)
    ports = {name: _free_port() for name in ("a", "b")}
    with cluster_on(backend, tmp_path / "cluster") as (cluster, _):
        if backend == "emulator":
            cluster.core.create_namespace({"metadata": {"name": lease_ns}})
        coordination = kubernetes.client.CoordinationV1Api(cluster.api)

        def holder() -> str | None:
            try:
                return coordination.read_namespaced_lease(lease, lease_ns).spec.holder_identity or None
            except ApiException:
                return None

        with contextlib.ExitStack() as stack:
            processes = {name: stack.enter_context(operator_process(
                tmp_path / f"operator-{name}.log", HOSTNAME=f"operator-{name}", M2F_LEADER_ELECTION_NAMESPACE=lease_ns,
                M2F_LEADER_ELECTION_NAME=lease, M2F_LIVENESS_PORT=str(port), M2F_OPERATOR_METRICS_PORT="0"))
                for name, port in ports.items()}
            leader = wait_for(holder, 90, "a leader").split("_")[0].removeprefix("operator-")
            standby = next(name for name in processes if name != leader)
            # Both are live for the kubelet: the leader through kopf, the standby by itself.
            wait_for(lambda: all(_get(port, "/healthz") is not None for port in ports.values()), 60, "both /healthz")
            ns = cluster.namespace()
            cluster.create(ns, TRAIN, "run", {"experiment": TINY_EXPERIMENT, "nodes": 2, "gpusPerNode": 0})
            pods = cluster.wait_pods(ns, ["run-worker-0", "run-worker-1"], timeout=60)
            for pod in pods:
                cluster.set_pod(ns, pod.metadata.name, "Running")
            cluster.wait_phase(ns, TRAIN, "run", "Running", timeout=60)

            processes[leader].send_signal(signal.SIGKILL)
            killed_at = time.time()
            new_holder = wait_for(lambda: (h := holder()) and h.startswith(f"operator-{standby}_") and h,
                                  LEASE_SECONDS + 4 * RETRY_SECONDS + 10, "the standby holding the Lease")
            taken_at = time.time()
            for pod in pods:
                cluster.set_pod(ns, pod.metadata.name, "Succeeded", exit_code=0)
            cluster.wait_phase(ns, TRAIN, "run", "Succeeded", timeout=60)
            assert processes[standby].poll() is None, (tmp_path / f"operator-{standby}.log").read_text()[-3000:]
        # Within the Lease's duration plus a retry or two (the issue asks for 15 s), measured as the test saw it.
        assert taken_at - killed_at <= LEASE_SECONDS + 2 * RETRY_SECONDS + 3, (taken_at - killed_at, new_holder)
        assert {p.metadata.name: p.metadata.uid for p in cluster.pods(ns)} == {p.metadata.name: p.metadata.uid
                                                                              for p in pods}
