"""Benchmark: 100 Mask2FormerTrain resources created at once, on the API emulator and on the real control plane.

Measures, for our operator (`python -m m2f_operator`, a subprocess; on the real control plane with the chart's
RBAC and its own token) and for a peer, the time from each resource's create call returning until a watch on
pods has seen all its worker pods (p50/p99, sub-second, the benchmark's own monotonic clock), API requests per
reconcile and the controller's resident memory; then, on the real control plane, the operator's RSS with 1,000
resources (2,000 pods). The peer is a naive level-triggered controller with no cache and no watch: it polls the
resources and, for each, GETs every child (ConfigMap, Service, each pod) and creates the missing ones, then
writes the status: one request per child per pass, the pattern our pod index and idempotent creates avoid.
Both run on the same machine against a fresh control plane each.

Usage: python bench/operator_reconcile.py [--resources 100] [--nodes 2] [--control-plane emulator|real|both]
       [--memory-resources 1000]
Last line: bench: operator_reconcile p50_s=... p99_s=... ... ratio=<ours/peer p99 on the real control plane, else
the emulator>
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes
import yaml
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[1]
for package in ("operator", "trainer", "devcluster"):
    sys.path.insert(0, str(REPO / package))

from m2f_devcluster import DevCluster  # noqa: E402
from m2f_devcluster.emulator import run_emulator  # noqa: E402
from m2f_operator.builders import meta  # noqa: E402

NAMESPACE = "bench"
EXPERIMENT = {"model": {"mode": "panoptic", "sem_seg_head": {"num_classes": 4}}, "train": {"num_epochs": 1}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BENCH_AGENT = "m2f-bench"


class RequestTally(logging.Handler):
    """Counts the API server's access-log lines of everyone but the benchmark itself (kopf's own
    requests included: the controller's whole cost, seen from the server)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if BENCH_AGENT not in record.getMessage():
            self.count += 1


def clients(kubeconfig: Path, user_agent: str | None = None):
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 16
    api = kubernetes.client.ApiClient(configuration)
    if user_agent:
        api.user_agent = user_agent
    return api, kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)


def rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def prometheus_lines(port: int, name: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{")}


def prometheus_value(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


# -- the peer: a naive polling controller (run as `--peer KUBECONFIG COUNTS_FILE`) ---------------------


def run_peer(kubeconfig: str, counts_file: str) -> None:
    from m2f_operator.builders import build_configmap, build_gang, build_service, build_stages

    _, core, custom = clients(Path(kubeconfig))
    counts = {"requests": 0, "reconciles": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

    def exists(read, *args) -> bool:
        counts["requests"] += 1
        try:
            read(*args)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def create(fn, namespace, body):
        counts["requests"] += 1
        try:
            fn(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    while not stop:
        counts["requests"] += 1
        items = custom.list_namespaced_custom_object(meta.GROUP, meta.VERSION, NAMESPACE, "mask2formertrains")["items"]
        for body in items:
            counts["reconciles"] += 1
            name = body["metadata"]["name"]
            if not exists(core.read_namespaced_config_map, meta.configmap_name(name), NAMESPACE):
                create(core.create_namespaced_config_map, NAMESPACE, build_configmap(body))
            if not exists(core.read_namespaced_service, meta.service_name(name), NAMESPACE):
                create(core.create_namespaced_service, NAMESPACE, build_service(body))
            (stage,) = build_stages(body)
            for pod in build_gang(body, stage, attempt=0):
                if not exists(core.read_namespaced_pod, pod["metadata"]["name"], NAMESPACE):
                    create(core.create_namespaced_pod, NAMESPACE, pod)
            counts["requests"] += 1
            custom.patch_namespaced_custom_object_status(meta.GROUP, meta.VERSION, NAMESPACE, "mask2formertrains",
                                                         name, {"status": {"phase": "Created"}})
        Path(counts_file).write_text(json.dumps(counts))
        time.sleep(0.5)
    Path(counts_file).write_text(json.dumps(counts))


def wait_for_gangs(core, resources: int, nodes: int, controller: str, timeout: float = 300) -> dict[str, float]:
    """job name -> when the benchmark saw its last pod, from a watch (polling would load the server)."""
    seen: dict[str, set[str]] = {}
    complete_at: dict[str, float] = {}
    watch = kubernetes.watch.Watch()
    deadline = time.monotonic() + timeout
    while len(complete_at) < resources:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{controller}: only {len(complete_at)}/{resources} gangs after {timeout:.0f} s")
        for event in watch.stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=30):
            pod = event["object"]
            job = (pod.metadata.labels or {}).get(meta.LABEL_JOB_NAME)
            seen.setdefault(job, set()).add(pod.metadata.name)
            if len(seen[job]) >= nodes and job not in complete_at:
                complete_at[job] = time.monotonic()
            if len(complete_at) >= resources:
                watch.stop()
                break
    return complete_at


@contextlib.contextmanager
def control_plane(kind: str, tally: RequestTally):
    """(admin kubeconfig, the operator's kubeconfig) of a fresh control plane with our CRDs and the namespace.
    The emulator's access log feeds `tally` (requests as the server sees them); a real API server's count is
    not separable per client, so there only the controllers' own counts are reported."""
    if kind == "emulator":
        access_log = logging.getLogger("aiohttp.access")
        access_log.setLevel(logging.INFO)
        access_log.propagate = False
        access_log.addHandler(tally)
        try:
            with run_emulator() as emulator:
                api, core, _ = clients(emulator.kubeconfig, BENCH_AGENT)
                extensions = kubernetes.client.ApiextensionsV1Api(api)
                for path in sorted((REPO / "crds").glob("*.yaml")):
                    extensions.create_custom_resource_definition(yaml.safe_load(path.read_text()))
                core.create_namespace({"metadata": {"name": NAMESPACE}})
                yield emulator.kubeconfig, emulator.kubeconfig
        finally:
            access_log.removeHandler(tally)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cluster = DevCluster(Path(tmp) / "dev", control_plane="real", operator=False, kubelet=False,
                             namespaces=(NAMESPACE,), claims=()).start(timeout=180)
        try:
            _, core, _ = clients(cluster.kubeconfig, BENCH_AGENT)
            # A Node that fits every pod, so the scheduler binds them as on a cluster (no kubelet runs them).
            capacity = {"cpu": "4000", "memory": "16Ti", "pods": "5000"}
            core.create_node({"metadata": {"name": "bench-node"}, "status": {
                "capacity": capacity, "allocatable": capacity,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench"}]}})
            core.patch_node("bench-node", {"spec": {"taints": None}})
            yield cluster.kubeconfig, cluster.operator_kubeconfig
        finally:
            cluster.stop()


def measure(controller: str, resources: int, nodes: int, kind: str, timeout: float = 300) -> dict:
    tally = RequestTally()
    with control_plane(kind, tally) as (kubeconfig, operator_kubeconfig), tempfile.TemporaryDirectory() as tmp:
        api, core, custom = clients(kubeconfig, BENCH_AGENT)
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("operator", "trainer", "devcluster")))
        metrics_port = free_port()
        counts_file = Path(tmp) / "counts.json"
        if controller == "ours":
            env.update(KUBECONFIG=str(operator_kubeconfig), M2F_OPERATOR_METRICS_PORT=str(metrics_port),
                       M2F_LIVENESS_PORT=str(free_port()), M2F_LOG_LEVEL="WARNING")
            argv = [sys.executable, "-m", "m2f_operator"]
        else:
            env.update(KUBECONFIG=str(kubeconfig))
            argv = [sys.executable, __file__, "--peer", str(kubeconfig), str(counts_file)]
        stderr_file = open(Path(tmp) / "controller.log", "w+b")  # noqa: SIM115 (closed with the folder)
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)
        try:
            if controller == "ours":
                deadline = time.monotonic() + 60
                while True:
                    try:
                        prometheus_value(metrics_port, "m2f_operator_reconciles_total")
                        break
                    except OSError:
                        if time.monotonic() > deadline or process.poll() is not None:
                            raise RuntimeError("operator did not start: " + (Path(tmp) / "controller.log").read_text()[-2000:]) from None
                        time.sleep(0.2)
                time.sleep(2)  # kopf's watches are established after /metrics is served

            requests_before = tally.count  # startup: discovery, initial lists, watches
            names = [f"run-{i:04d}" for i in range(resources)]
            created_at: dict[str, float] = {}

            def create(name: str) -> None:
                custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, NAMESPACE, "mask2formertrains", {
                    "apiVersion": meta.API_VERSION, "kind": "Mask2FormerTrain", "metadata": {"name": name},
                    "spec": {"experiment": EXPERIMENT, "nodes": nodes, "gpusPerNode": 0}})
                created_at[name] = time.monotonic()

            start = time.monotonic()
            watcher = ThreadPoolExecutor(1).submit(wait_for_gangs, core, resources, nodes, controller, timeout)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, names))
            complete_at = watcher.result()
            wall = time.monotonic() - start
            latencies = sorted(max(0.0, complete_at[name] - created_at[name]) for name in names)
            time.sleep(1.0)  # let trailing status writes land in the counters
            rss, peak = rss_mib(process.pid)
            if controller == "ours":
                reconciler_requests = prometheus_value(metrics_port, "m2f_operator_api_requests_total")
                reconciles = prometheus_value(metrics_port, "m2f_operator_reconciles_total")
            else:
                counts = json.loads(counts_file.read_text())
                reconciler_requests, reconciles = counts["requests"], counts["reconciles"]
            requests = tally.count - requests_before if kind == "emulator" else float("nan")
            return {
                "reconciler_requests_per_reconcile": reconciler_requests / max(reconciles, 1),
                "reconciles": reconciles,
                "p50": statistics.median(latencies),
                "p99": latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))],
                "wall": wall,
                "requests_per_reconcile": requests / max(reconciles, 1),
                "requests_per_resource": requests / resources,
                "rss": rss,
                "peak_rss": peak,
            }
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            if os.environ.get("M2F_BENCH_LOG"):
                print((Path(tmp) / "controller.log").read_text()[-int(os.environ["M2F_BENCH_LOG"]):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--control-plane", choices=("emulator", "real", "both"), default="both")
    parser.add_argument("--memory-resources", type=int, default=1000,
                        help="resources of the operator-memory run on the real control plane (0: skip it)")
    parser.add_argument("--peer", nargs=2, metavar=("KUBECONFIG", "COUNTS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        run_peer(*args.peer)
        return 0
    kinds = ("emulator", "real") if args.control_plane == "both" else (args.control_plane,)
    results = {}
    for kind in kinds:
        for controller in ("ours", "peer"):
            results[kind, controller] = r = measure(controller, args.resources, args.nodes, kind)
            print(f"{kind:8s} {controller:5s}: {args.resources} resources x {args.nodes} pods: p50 {r['p50']:.2f} s, "
                  f"p99 {r['p99']:.2f} s, all in {r['wall']:.2f} s; {r['reconciles']:.0f} reconciles, "
                  f"{r['requests_per_reconcile']:.2f} API requests per reconcile seen by the server "
                  f"({r['reconciler_requests_per_reconcile']:.2f} from the reconciler itself), "
                  f"{r['requests_per_resource']:.1f} per resource; RSS {r['rss']:.0f} MiB "
                  f"(peak {r['peak_rss']:.0f} MiB)", flush=True)
    memory = None
    if "real" in kinds and args.memory_resources:
        memory = measure("ours", args.memory_resources, args.nodes, "real", timeout=1800)
        print(f"real     ours : {args.memory_resources} resources x {args.nodes} pods: all in {memory['wall']:.0f} s, "
              f"p50 {memory['p50']:.2f} s, p99 {memory['p99']:.2f} s; RSS {memory['rss']:.0f} MiB "
              f"(peak {memory['peak_rss']:.0f} MiB)", flush=True)
    headline = "real" if "real" in kinds else "emulator"
    ours, peer = results[headline, "ours"], results[headline, "peer"]
    fields = [f"control_plane={headline}", f"p50_s={ours['p50']:.3f}", f"p99_s={ours['p99']:.3f}",
              f"reconciler_requests_per_reconcile={ours['reconciler_requests_per_reconcile']:.2f}",
              f"rss_mib={ours['rss']:.0f}"]
    if "emulator" in kinds:
        emulated = results["emulator", "ours"]
        fields += [f"emulator_p50_s={emulated['p50']:.3f}", f"emulator_p99_s={emulated['p99']:.3f}",
                   f"emulator_requests_per_resource={emulated['requests_per_resource']:.1f}"]
    if memory is not None:
        fields.append(f"rss_mib_at_{args.memory_resources}={memory['rss']:.0f}")
    fields += [f"peer_p99_s={peer['p99']:.3f}", f"ratio={ours['p99'] / peer['p99']:.3f}"]
    print("bench: operator_reconcile " + " ".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
