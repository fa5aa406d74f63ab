"""End-to-end helpers: kubectl and a Kubernetes API watch recorder bound to a dev cluster, manifests of tiny
jobs, metrics.jsonl parsing and failure reports. (A uniquely named module: `conftest` is ambiguous across
test folders.)

Everything here acts through the Kubernetes API (kubectl or the `kubernetes` client with the dev cluster's
kubeconfig) and reads files the pods wrote on the cluster's local volumes; nothing calls operator or
trainer internals.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polling
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = str(Path(sys.executable).parent)
KUBECTL = shutil.which("kubectl", path=BIN_DIR) or shutil.which("kubectl")
NAMESPACE = "default"
GROUP, VERSION = "mask2former.io", "v1alpha1"
TRAINS, EXPORTS = "mask2formertrains", "mask2formerexports"
LABEL_JOB = f"{GROUP}/job-name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
# What the operator reads (docs/operator.md): a pod stuck Terminating this long past its deletion deadline
# is force-deleted; time-driven states are re-reconciled every M2F_RESYNC_SECONDS.
STUCK_TERMINATING_SECONDS = 5
RESYNC_SECONDS = 2
PROGRESS_SECONDS = 1  # rank 0's metrics read into status.progress this often
OPERATOR_ENV = {"M2F_STUCK_TERMINATING_SECONDS": str(STUCK_TERMINATING_SECONDS),
                "M2F_RESYNC_SECONDS": str(RESYNC_SECONDS), "M2F_PROGRESS_SECONDS": str(PROGRESS_SECONDS)}
# Grace period of every e2e pod: a worker blocked in a collective with a dead peer is SIGKILLed this soon.
GRACE_SECONDS = 3
BAD_PHASES = ("Failed", "InvalidSpec")


# Most e2e predicates run kubectl or read files: poll at half-second steps.
wait_for = functools.partial(polling.wait_for, interval=0.5)


class Kubectl:
    """Real kubectl against a dev cluster: ``kubectl("get", "pods")``, ``kubectl.json("get", "m2ft", "x")``."""

    def __init__(self, kubeconfig: Path):
        self.argv = [KUBECTL, "--kubeconfig", str(kubeconfig)]
        self.env = dict(os.environ, PATH=BIN_DIR + os.pathsep + os.environ.get("PATH", ""))

    def __call__(self, *args: str, check: bool = True, timeout: float = 60,
                 input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout,
                                input=input, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, manifest: dict) -> subprocess.CompletedProcess:
        return self("apply", "-f", "-", input=yaml.safe_dump(manifest))


@dataclass
class Change:
    """One watch event as the recorder saw it."""

    at: float  # time.monotonic()
    plural: str  # pods | mask2formertrains | mask2formerexports
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.obj["metadata"]["uid"]

    @property
    def labels(self) -> dict:
        return self.obj["metadata"].get("labels") or {}


class Recorder:
    """Watches pods and the Train/Export resources of one namespace through the Kubernetes API (python
    client, the dev cluster's kubeconfig) and keeps every event, so tests can assert on the whole history
    ("at all times") and poll in memory instead of hammering the API server."""

    PLURALS = ("pods", TRAINS, EXPORTS)

    def __init__(self, kubeconfig: Path, namespace: str = NAMESPACE):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.changes: list[Change] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(plural,), daemon=True,
                                          name=f"e2e-watch-{plural}") for plural in self.PLURALS]

    def start(self) -> Recorder:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _watch(self, plural: str) -> None:
        import kubernetes
        from kubernetes.client.exceptions import ApiException

        api_client = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        if plural == "pods":
            list_fn, args = kubernetes.client.CoreV1Api(api_client).list_namespaced_pod, (self.namespace,)
        else:
            list_fn = kubernetes.client.CustomObjectsApi(api_client).list_namespaced_custom_object
            args = (GROUP, VERSION, self.namespace, plural)
        version = None
        while not self._stop.is_set():
            watcher = kubernetes.watch.Watch()
            options = {"timeout_seconds": 5}
            if version:
                options["resource_version"] = version
            try:
                for event in watcher.stream(list_fn, *args, **options):
                    obj = event["object"]
                    if not isinstance(obj, dict):
                        obj = api_client.sanitize_for_serialization(obj)
                    if event["type"] == "ERROR":  # 410 Gone: relist (the replay comes as ADDED)
                        version = None
                        break
                    version = obj["metadata"].get("resourceVersion") or version
                    with self._lock:
                        self.changes.append(Change(time.monotonic(), plural, event["type"], obj))
                    if self._stop.is_set():
                        watcher.stop()
            except ApiException as exc:
                version = None if exc.status == 410 else version
                self._note(f"watch {plural}: {exc.status} {exc.reason}")
                time.sleep(0.5)
            except Exception as exc:  # connection refused while the API restarts, read timeouts
                self._note(f"watch {plural}: {type(exc).__name__}: {exc}")
                time.sleep(0.5)

    def _note(self, error: str) -> None:
        with self._lock:
            self.errors.append(error)

    # -- queries (in memory) ------------------------------------------------------------------------

    def history(self, plural: str, name: str | None = None, job: str | None = None) -> list[Change]:
        with self._lock:
            changes = list(self.changes)
        return [c for c in changes if c.plural == plural and (name is None or c.name == name)
                and (job is None or c.labels.get(LABEL_JOB) == job)]

    def latest(self, plural: str, name: str) -> dict | None:
        """The object as last seen, None when never seen or deleted."""
        changes = self.history(plural, name)
        if not changes or changes[-1].type == "DELETED":
            return None
        return changes[-1].obj

    def status(self, plural: str, name: str) -> dict:
        return (self.latest(plural, name) or {}).get("status") or {}

    def live_pods(self, job: str) -> dict[str, dict]:
        """name -> pod for the job's pods that exist now (Terminating ones included)."""
        pods: dict[str, Change] = {}
        for change in self.history("pods", job=job):
            pods[change.uid] = change
        return {c.name: c.obj for c in pods.values() if c.type != "DELETED"}

    def pod_uids(self, job: str) -> dict[str, dict]:
        """uid -> last seen pod, for every pod of the job that ever existed."""
        return {c.uid: c.obj for c in self.history("pods", job=job)}

    def max_concurrent_pods(self, job: str) -> int:
        """The most pods of the job that existed at the same time, replaying the whole watch history."""
        alive: set[str] = set()
        most = 0
        for change in self.history("pods", job=job):
            if change.type == "DELETED":
                alive.discard(change.uid)
            else:
                alive.add(change.uid)
            most = max(most, len(alive))
        return most

    def first_time(self, plural: str, name: str, predicate: Callable[[dict], bool]) -> float | None:
        return next((c.at for c in self.history(plural, name) if c.type != "DELETED" and predicate(c.obj)), None)


def phase_of(obj: dict | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def terminated_state(pod: dict) -> dict:
    """The first terminated container state of a pod ({} while none has terminated)."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return {}


def pod_exit_code(pod: dict) -> int | None:
    return terminated_state(pod).get("exitCode")


@dataclass
class ClusterEnv:
    """A running dev cluster with kubectl and a watch recorder bound to it."""

    cluster: Any  # m2f_devcluster.DevCluster (used only for its data dir and fault helpers)
    kubectl: Kubectl
    recorder: Recorder
    dataset: str  # the dataset folder as pods see it (on the `datasets` PVC)
    notes: dict = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.cluster.data_dir

    def volume_path(self, pod_path: str, claim: str = "results") -> Path:
        """The local folder of a path under /<claim> in a pod: <data_dir>/pvc/<ns>/<claim>/..."""
        prefix = f"/{claim}/"
        assert pod_path.startswith(prefix), pod_path
        return self.data_dir / "pvc" / NAMESPACE / claim / pod_path.removeprefix(prefix)

    def train_dir(self, name: str) -> Path:
        """<results_dir>/train of a Train the operator placed at /results/train/<name>."""
        return self.data_dir / "pvc" / NAMESPACE / "results" / "train" / name / "train"

    def report(self, *names: str) -> str:
        """Status, pods and log tails for a failure message."""
        lines = []
        for name in names:
            for plural in (TRAINS, EXPORTS):
                obj = self.recorder.latest(plural, name)
                if obj is not None:
                    lines.append(f"--- {plural}/{name} status: {json.dumps(obj.get('status'), sort_keys=True)}")
            for pod_name, pod in sorted(self.recorder.live_pods(name).items()):
                status = pod.get("status") or {}
                lines.append(f"--- pod {pod_name} attempt={pod['metadata'].get('labels', {}).get(LABEL_ATTEMPT)} "
                             f"phase={status.get('phase')} deleting={bool(pod['metadata'].get('deletionTimestamp'))} "
                             f"exit={pod_exit_code(pod)}")
            for log in sorted((self.data_dir / "logs" / NAMESPACE).glob(f"{name}-*/*.log")):
                tail = log.read_text(errors="replace").splitlines()[-12:]
                lines.append(f"--- {log.relative_to(self.data_dir)} (tail)\n" + "\n".join(tail))
        operator_log = self.data_dir / "operator.log"
        if operator_log.is_file():
            lines.append("--- operator.log (tail)\n" + "\n".join(
                operator_log.read_text(errors="replace").splitlines()[-30:]))
        if self.recorder.errors:
            lines.append(f"--- watch errors: {self.recorder.errors[-5:]}")
        return "\n".join(lines)

    def wait_phase(self, plural: str, name: str, phase: str, timeout: float, bad: tuple[str, ...] = BAD_PHASES,
                   also: tuple[str, ...] = ()) -> dict:
        """Wait (in memory, from the watch) for a phase; fail at once on a `bad` one."""
        def reached():
            status = self.recorder.status(plural, name)
            if status.get("phase") in bad and status.get("phase") != phase:
                raise AssertionError(f"{plural}/{name} ended {status.get('phase')} while waiting for {phase}\n"
                                     + self.report(name, *also))
            return status if status.get("phase") == phase else None

        return wait_for(reached, timeout, f"{plural}/{name} phase {phase}", lambda: self.report(name, *also))


# -- manifests ----------------------------------------------------------------------------------------


def tiny_experiment(dataset: str, *, epochs: int) -> dict:
    """examples/specs/tiny_cpu_panoptic.yaml with its data on the datasets volume; results_dir is left to the
    operator (/results/train/<name> on the results volume) and num_nodes to spec.nodes."""
    text = (REPO_ROOT / "examples" / "specs" / "tiny_cpu_panoptic.yaml").read_text()
    spec = yaml.safe_load(text.replace("./data/synth_panoptic", dataset))
    spec.pop("results_dir", None)
    spec["train"]["num_epochs"] = epochs
    spec["train"]["seed"] = 7
    return spec


# One compute thread per worker process: the dev cluster runs every "node" on the same few cores.
THREADS_ENV = [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "MKL_NUM_THREADS", "value": "1"}]
VOLUMES = {
    "volumes": [{"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
                {"name": "results", "persistentVolumeClaim": {"claimName": "results"}}],
    "volumeMounts": [{"name": "datasets", "mountPath": "/datasets", "readOnly": True},
                     {"name": "results", "mountPath": "/results"}],
}


def train_manifest(name: str, experiment: dict, *, nodes: int = 2, **spec: Any) -> dict:
    """A Mask2FormerTrain on the dev cluster: CPU workers, datasets and results on PVCs."""
    body = {"nodes": nodes, "gpusPerNode": 0, "terminationGracePeriodSeconds": GRACE_SECONDS, **VOLUMES,
            "env": THREADS_ENV, "experiment": experiment}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Mask2FormerTrain", "metadata": {"name": name},
            "spec": body}


def export_manifest(name: str, train: str, experiment: dict) -> dict:
    """A Mask2FormerExport of `train`'s latest checkpoint; TensorRT off (no GPU here)."""
    export_experiment = {key: experiment[key] for key in ("model", "dataset", "export")}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Mask2FormerExport", "metadata": {"name": name},
            "spec": {"trainRef": train, "gpusPerNode": 0, "terminationGracePeriodSeconds": GRACE_SECONDS,
                     "tensorRT": {"enabled": False}, **VOLUMES, "env": THREADS_ENV, "experiment": export_experiment}}


# -- results on the volume ----------------------------------------------------------------------------


def read_metrics(train_dir: Path) -> list[dict]:
    path = train_dir / "metrics.jsonl"
    assert path.is_file(), f"no metrics.jsonl in {train_dir}: {sorted(p.name for p in train_dir.iterdir())}"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs(records: list[dict]) -> list[list[dict]]:
    """metrics.jsonl split at each "start" record: one list per process lifetime of rank 0."""
    out: list[list[dict]] = []
    for record in records:
        if record["event"] == "start" or not out:
            out.append([])
        out[-1].append(record)
    return out


def epoch_checkpoints(train_dir: Path) -> list[int]:
    """Epochs of the model_epoch_NNN_step_SSSSS.pth files (TAO's names) present now."""
    names = (re.fullmatch(r"model_epoch_(\d{3,})_step_\d{5,}\.pth", p.name) for p in train_dir.glob("model_epoch_*"))
    return sorted(int(match[1]) for match in names if match)


def assert_resumed(records: list[dict], checkpoints_at_fault: list[int], total_epochs: int) -> tuple[dict, dict]:
    """Two runs of rank 0; the second resumed from the latest checkpoint that existed at the fault, trained
    on from there (no epoch from zero, no step again) and finished every epoch. Returns the two start records."""
    parts = runs(records)
    assert len(parts) == 2, f"expected one interrupted and one resumed run, got {len(parts)}: {records}"
    first, second = parts
    start1, start2 = first[0], second[0]
    assert start1["epoch"] == 0 and start1["step"] == 0, start1
    assert checkpoints_at_fault, "the fault was injected before any checkpoint existed"
    # The latest epoch checkpoint at the fault holds the state after the last step of its epoch.
    latest = max(checkpoints_at_fault)
    latest_step = max(r["step"] for r in first if r["event"] == "step" and r["epoch"] <= latest)
    first_steps = [r["step"] for r in first if r["event"] == "step"]
    # Not from zero and not from an older checkpoint: at the epoch after the latest one at the fault (a
    # SIGTERM save during that epoch may put it a few steps further), at a state the first run reached.
    assert start2["epoch"] >= latest + 1, (
        f"the resumed run starts at epoch {start2['epoch']}, but epoch {latest}'s checkpoint existed: {start2}")
    assert latest_step <= start2["step"] <= max(first_steps), (start2, latest_step, first_steps)
    resumed_steps = [r["step"] for r in second if r["event"] == "step"]
    assert resumed_steps and min(resumed_steps) == start2["step"] + 1, (
        f"the resumed run re-trained steps: starts at {start2['step']}, steps {resumed_steps}")
    # A SIGTERM during the validation that closes an epoch saves after its last step: the resumed run then
    # starts by closing that epoch and takes its first step in the next one.
    steps_per_epoch = sum(1 for r in first if r["event"] == "step" and r["epoch"] == 0)
    epoch_was_stepped_out = start2["step"] == (start2["epoch"] + 1) * steps_per_epoch
    first_resumed_epoch = min(r["epoch"] for r in second if r["event"] == "step")
    assert first_resumed_epoch == start2["epoch"] + epoch_was_stepped_out, (start2, first_resumed_epoch)
    assert second[-1]["event"] == "end" and second[-1]["epoch"] == total_epochs, second[-1]
    trained = sorted({r["epoch"] for r in second if r["event"] == "epoch_end"})
    assert trained == list(range(start2["epoch"], total_epochs)), trained
    return start1, start2


class Flows:
    """Scenario drivers running at once in background threads (the suite's CPU budget cannot afford them one
    after the other); each test waits for its driver and then asserts on what it observed."""

    def __init__(self) -> None:
        self._threads: dict[str, threading.Thread] = {}
        self._results: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}
        self.timings: dict[str, float] = {}

    def start(self, name: str, driver: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            began = time.monotonic()
            try:
                self._results[name] = driver(*args)
            except BaseException as exc:  # re-raised in the test that asks for it
                self._errors[name] = exc
            finally:
                self.timings[name] = time.monotonic() - began

        thread = threading.Thread(target=run, name=f"e2e-flow-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def result(self, name: str, timeout: float = 1500) -> Any:
        thread = self._threads[name]
        thread.join(timeout)
        assert not thread.is_alive(), f"flow {name} still running after {timeout:.0f} s"
        if name in self._errors:
            raise self._errors[name]
        return self._results[name]

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
