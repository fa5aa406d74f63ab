"""Benchmark: 100 Mask2FormerTrain resources created at once against the API emulator.

Measures, for our operator (`python -m m2f_operator`, a subprocess) and for a peer, the time from
each resource's creation until all its worker pods exist (p50/p99, from the API server's
creationTimestamps, 1 s resolution), API requests per reconcile and
the controller's resident memory. The peer is a naive level-triggered controller with no cache and
no watch: it polls the resources and, for each, GETs every child (ConfigMap, Service, each pod) and
creates the missing ones, then writes the status: one request per child per pass, the pattern our
pod index and idempotent creates avoid. Both run on the same machine against a fresh emulator.

Usage: python bench/operator_reconcile.py [--resources 100] [--nodes 2]
Last line: bench: operator_reconcile p50_s=... p99_s=... requests_per_reconcile=... rss_mib=... ratio=<ours/peer p99>
"""

from __future__ import annotations

import argparse
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
from datetime import datetime
from pathlib import Path

import kubernetes
import yaml
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "trainer"))

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


def wait_for_gangs(core, resources: int, nodes: int, controller: str) -> dict[str, float]:
    """job name -> when the benchmark saw its last pod, from a watch (polling would load the server)."""
    seen: dict[str, set[str]] = {}
    complete_at: dict[str, float] = {}
    watch = kubernetes.watch.Watch()
    deadline = time.monotonic() + 300
    while len(complete_at) < resources:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{controller}: only {len(complete_at)}/{resources} gangs after 300 s")
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


def server_side_latencies(core, custom, nodes: int) -> list[float]:
    """Per resource: its last worker pod's creationTimestamp minus its own (the API server's clock,
    1 s resolution), so a slow watch to the benchmark cannot inflate the numbers."""
    def stamp(value) -> float:
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        return value.timestamp()

    created = {item["metadata"]["name"]: stamp(item["metadata"]["creationTimestamp"]) for item in
               custom.list_namespaced_custom_object(meta.GROUP, meta.VERSION, NAMESPACE, "mask2formertrains")["items"]}
    last_pod: dict[str, float] = {}
    for pod in core.list_namespaced_pod(NAMESPACE).items:
        job = pod.metadata.labels[meta.LABEL_JOB_NAME]
        last_pod[job] = max(last_pod.get(job, 0.0), stamp(pod.metadata.creation_timestamp))
    return sorted(last_pod[name] - created[name] for name in created)


# -- one measured run ---------------------------------------------------------------------------------


def measure(controller: str, resources: int, nodes: int) -> dict:
    tally = RequestTally()
    access_log = logging.getLogger("aiohttp.access")
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    access_log.addHandler(tally)
    with run_emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        api, core, custom = clients(emulator.kubeconfig, BENCH_AGENT)
        extensions = kubernetes.client.ApiextensionsV1Api(api)
        for path in sorted((REPO / "crds").glob("*.yaml")):
            extensions.create_custom_resource_definition(yaml.safe_load(path.read_text()))
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        env = dict(os.environ, KUBECONFIG=str(emulator.kubeconfig), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer")]))
        metrics_port = free_port()
        counts_file = Path(tmp) / "counts.json"
        if controller == "ours":
            env.update(M2F_OPERATOR_METRICS_PORT=str(metrics_port), M2F_LIVENESS_PORT=str(free_port()),
                       M2F_LOG_LEVEL="WARNING")
            argv = [sys.executable, "-m", "m2f_operator"]
        else:
            argv = [sys.executable, __file__, "--peer", str(emulator.kubeconfig), str(counts_file)]
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
            names = [f"run-{i:03d}" for i in range(resources)]

            def create(name: str) -> None:
                custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, NAMESPACE, "mask2formertrains", {
                    "apiVersion": meta.API_VERSION, "kind": "Mask2FormerTrain", "metadata": {"name": name},
                    "spec": {"experiment": EXPERIMENT, "nodes": nodes, "gpusPerNode": 0}})

            start = time.monotonic()
            watcher = ThreadPoolExecutor(1).submit(wait_for_gangs, core, resources, nodes, controller)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, names))
            watcher.result()
            wall = time.monotonic() - start
            latencies = server_side_latencies(core, custom, nodes)
            time.sleep(1.0)  # let trailing status writes land in the counters
            rss, peak = rss_mib(process.pid)
            if controller == "ours":
                reconciler_requests = prometheus_value(metrics_port, "m2f_operator_api_requests_total")
                reconciles = prometheus_value(metrics_port, "m2f_operator_reconciles_total")
                for series, value in [*prometheus_lines(metrics_port, "m2f_operator_reconciles_total").items(),
                                      *prometheus_lines(metrics_port, "m2f_operator_reconcile_errors_total").items()]:
                    print(f"  {series} {value:.0f}")
            else:
                counts = json.loads(counts_file.read_text())
                reconciler_requests, reconciles = counts["requests"], counts["reconciles"]
            requests = tally.count - requests_before
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
            access_log.removeHandler(tally)
            if os.environ.get("M2F_BENCH_LOG"):
                print((Path(tmp) / "controller.log").read_text()[-int(os.environ["M2F_BENCH_LOG"]):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--peer", nargs=2, metavar=("KUBECONFIG", "COUNTS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        run_peer(*args.peer)
        return 0
    results = {}
    for controller in ("ours", "peer"):
        results[controller] = r = measure(controller, args.resources, args.nodes)
        print(f"{controller:5s}: {args.resources} resources x {args.nodes} pods: p50 {r['p50']:.2f} s, "
              f"p99 {r['p99']:.2f} s, all in {r['wall']:.2f} s; {r['reconciles']:.0f} reconciles, "
              f"{r['requests_per_reconcile']:.2f} API requests per reconcile seen by the server "
              f"({r['reconciler_requests_per_reconcile']:.2f} from the reconciler itself), "
              f"{r['requests_per_resource']:.1f} per resource; RSS {r['rss']:.0f} MiB "
              f"(peak {r['peak_rss']:.0f} MiB)")
    ours, peer = results["ours"], results["peer"]
    print(f"bench: operator_reconcile p50_s={ours['p50']:.3f} p99_s={ours['p99']:.3f} "
          f"requests_per_reconcile={ours['requests_per_reconcile']:.2f} "
          f"requests_per_resource={ours['requests_per_resource']:.1f} rss_mib={ours['rss']:.0f} "
          f"peer_p99_s={peer['p99']:.3f} peer_requests_per_resource={peer['requests_per_resource']:.1f} "
          f"ratio={ours['p99'] / peer['p99']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
