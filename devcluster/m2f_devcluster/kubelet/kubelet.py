"""The local kubelet: watches Pods through the API and runs their containers as local process groups.

Narrated lifecycle of one pod: bind it to a node (when unscheduled and no scheduler runs) -> prepare volumes,
env and the path map (retrying while a ConfigMap is missing) -> Running with a pod IP of its own (see
addresses.py; the processes themselves talk over loopback) -> wait for the
processes -> Succeeded/Failed with exit codes, reasons and termination messages. A deletion with
grace sends SIGTERM to the process group, SIGKILL after the grace period, writes the final status
and confirms with a delete of grace 0. Pods on a lost node never acknowledge anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from m2f_devcluster.emulator.defaults import DEFAULT_CAPACITY, now_rfc3339
from m2f_devcluster.kubeconfig import ApiEndpoint
from m2f_devcluster.kubelet import podspec, status, volumes
from m2f_devcluster.kubelet.addresses import POD_NETWORK, PodAddresses
from m2f_devcluster.kubelet.api import KubeletApi
from m2f_devcluster.kubelet.podnet import PodNetworkProxy
from m2f_devcluster.kubelet.podspec import PathMap, PodConfigError

logger = logging.getLogger(__name__)

LOST_NODE_ANNOTATION = "m2f.dev/lost"
POD_MARKER_ENV = "M2F_DEV_KUBELET_DIR"
PASSTHROUGH_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
                   "OMP_NUM_THREADS", "MKL_NUM_THREADS", "M2F_COCO_SAMPLE")
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
# Labels that differ between the replicas of one gang (mask2former.io/replica-index, job-completion-index,
# statefulset pod-name): ignored when deciding which pods share a remapped port.
_PER_REPLICA_LABEL = re.compile(r"(index|pod-name)$")


@dataclass
class ContainerRun:
    spec: dict
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    termination_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: str | None = None
    restarts: int = 0
    terminated: dict | None = None
    paths: PathMap | None = None  # container paths -> this machine's (the termination message is mapped back)


@dataclass
class PodRun:
    """A pod this kubelet runs: its folder, its containers' processes and what was asked of it."""

    pod: dict
    pod_dir: Path
    containers: list[ContainerRun] = field(default_factory=list)
    deleting: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool = False
    started_at: str | None = None
    task: asyncio.Task | None = None
    pod_ip: str = "127.0.0.1"
    # Declared port -> the loopback port its process was given (podspec.remap_ports): the pod network maps.
    ports: dict[int, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def label(self) -> str:
        return f"{self.pod['metadata'].get('namespace')}/{self.pod['metadata']['name']}"

    def signal(self, signum: int) -> None:
        for container in self.containers:
            if container.process is not None and container.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(container.process.pid, signum)


class Kubelet:
    """Runs the pods bound to `nodes` (and binds unscheduled pods to them, spreading each owner's pods, when
    `schedule`)."""

    def __init__(self, api_url: str, data_dir: Path, nodes: tuple[str, ...] = ("dev-node-0",), *,
                 kubeconfig: Path | None = None, log_dir: Path | None = None,
                 bin_dir: Path = Path(sys.executable).parent, schedule: bool = True,
                 extra_env: dict[str, str] | None = None, watch_timeout: int = 60,
                 endpoint: ApiEndpoint | None = None, capacity: dict[str, str] | None = None,
                 pod_network: str = POD_NETWORK, serve_api: bool = False):
        # `endpoint` (TLS, token) authenticates like any client of a real API server; without it, plain HTTP.
        self.endpoint = endpoint or ApiEndpoint(api_url.rstrip("/"), {}, None)
        self.api_url = self.endpoint.url
        self.capacity = dict(capacity or DEFAULT_CAPACITY)
        self.pod_ips = PodAddresses(pod_network)
        self.pod_network = PodNetworkProxy(self._local_port)
        self.data_dir = Path(data_dir)
        self.nodes = tuple(nodes)
        self.kubeconfig = kubeconfig
        self.log_dir = Path(log_dir) if log_dir else self.data_dir / "logs"
        # A real API server reaches the kubelet for `kubectl logs`; the emulator reads the log files itself.
        self.api = KubeletApi(self.log_dir, self._is_running, self.data_dir / "kubelet-tls") if serve_api else None
        self.bin_dir = bin_dir
        self.schedule = schedule
        self.extra_env = dict(extra_env or {})
        self.watch_timeout = watch_timeout
        self.lost_nodes: set[str] = set()
        self._pods: dict[str, PodRun] = {}
        # Pods that ran here and finished: stale events (e.g. our own Running update arriving after the
        # exit) must never start them again. Forgotten when the pod is deleted.
        self._finished: set[str] = set()
        self._ports: dict[tuple, int] = {}
        self._next_node = itertools.cycle(self.nodes)
        # Live pods on our nodes -> (node, controller uid): what the binding spreads over. Kept from our own
        # bindings too, because the watch may deliver a gang's second pod before the first one's binding.
        self._placed: dict[str, tuple[str, str | None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        # Set once the Nodes are registered and the pod network is open: what "the cluster is up" promises.
        self.ready = asyncio.Event()

    # -- API access -------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: object = None, headers: dict | None = None,
                       ok_missing: bool = False) -> dict | None:
        assert self._http is not None
        async with self._http.request(method, self.api_url + path, json=body, headers=headers) as response:
            if response.status == 404 and ok_missing:
                return None
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json(content_type=None)

    @staticmethod
    def _pod_path(pod: dict, suffix: str = "") -> str:
        meta = pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}{suffix}"

    async def _read_object(self, plural: str, namespace: str, name: str) -> dict | None:
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}", ok_missing=True)

    async def _patch_status(self, run: PodRun, status: dict) -> None:
        if run.lost:
            return
        try:
            await self._request("PATCH", self._pod_path(run.pod, "/status"), {"status": status}, MERGE_PATCH,
                                ok_missing=True)
        except (RuntimeError, aiohttp.ClientError) as exc:
            logger.warning("pod %s: status update failed: %s", run.label, exc)

    async def _confirm_deletion(self, pod: dict) -> None:
        with contextlib.suppress(RuntimeError, aiohttp.ClientError):
            await self._request("DELETE", self._pod_path(pod), {"gracePeriodSeconds": 0}, ok_missing=True)

    # -- main loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop()`; then every local process is terminated."""
        connector = aiohttp.TCPConnector(ssl=self.endpoint.ssl) if self.endpoint.ssl is not None else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                         headers=self.endpoint.headers, connector=connector) as self._http:
            if self.api is not None:
                await self.api.start()
            await self._register_nodes()
            await self.open_pod_network()
            self.ready.set()
            watches = [asyncio.create_task(self._watch("/api/v1/nodes", self._on_node)),
                       asyncio.create_task(self._watch("/api/v1/pods", self._on_pod))]
            try:
                await self._stopping.wait()
            finally:
                for task in watches:
                    task.cancel()
                await self.pod_network.close()
                if self.api is not None:
                    await self.api.close()
                await self._shutdown_pods()

    def stop(self) -> None:
        self._stopping.set()

    async def _register_nodes(self) -> None:
        from m2f_devcluster.emulator.defaults import node as node_manifest

        for name in self.nodes:
            while True:
                try:
                    if await self._request("GET", f"/api/v1/nodes/{name}", ok_missing=True) is None:
                        manifest = node_manifest(name, self.capacity)
                        if self.api is not None:
                            manifest["status"]["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self.api.port}}
                        await self._request("POST", "/api/v1/nodes", dict(manifest, apiVersion="v1", kind="Node"))
                    # A real API server taints a new Node not-ready until its node lifecycle controller sees
                    # it Ready; the dev cluster runs without that controller, so the kubelet lifts the taint.
                    await self._request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}}, MERGE_PATCH)
                    break
                except (aiohttp.ClientError, RuntimeError) as exc:
                    logger.info("waiting for the API server to register node %s: %s", name, exc)
                    await asyncio.sleep(0.5)

    async def _watch(self, path: str, handle) -> None:
        """List, then watch from the list's resourceVersion; resume after timeouts, relist after errors."""
        version = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing = await self._request("GET", path)
                    version = listing["metadata"]["resourceVersion"]
                    for obj in listing["items"]:
                        await handle("ADDED", obj)
                    if handle == self._on_pod:  # deleted while the watch was down: stop them now
                        listed = {obj["metadata"]["uid"] for obj in listing["items"]}
                        for uid in [uid for uid in self._placed if uid not in listed]:
                            del self._placed[uid]  # gone unseen: no longer counted by the binding
                        for run in [run for uid, run in self._pods.items() if uid not in listed]:
                            await self._on_pod("DELETED", run.pod)
                query = f"?watch=true&resourceVersion={version}&timeoutSeconds={self.watch_timeout}"
                assert self._http is not None
                async with self._http.get(self.api_url + path + query) as response:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            version = None  # e.g. 410 Gone: relist
                            break
                        version = event["object"]["metadata"]["resourceVersion"]
                        await handle(event["type"], event["object"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API went away or a handler failed: keep serving
                if not self._stopping.is_set():
                    logger.warning("watch %s failed (%s); relisting", path, exc)
                    version = None
                    await asyncio.sleep(0.5)

    async def _on_node(self, event_type: str, node: dict) -> None:
        name = node["metadata"]["name"]
        annotations = node["metadata"].get("annotations") or {}
        if name in self.nodes and annotations.get(LOST_NODE_ANNOTATION) == "true" and name not in self.lost_nodes:
            await self.lose_node(name)

    async def lose_node(self, name: str) -> None:
        """Simulate losing a node: its processes freeze and nothing about its pods is reported any more."""
        self.lost_nodes.add(name)
        for run in list(self._pods.values()):
            if run.pod["spec"].get("nodeName") == name:
                run.lost = True
                run.signal(signal.SIGSTOP)
        ready = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                 "message": "Kubelet stopped posting node status (simulated lost node).", "lastTransitionTime": now_rfc3339()}
        with contextlib.suppress(RuntimeError, aiohttp.ClientError):
            await self._request("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [ready]}},
                                MERGE_PATCH)
        # What a node lifecycle controller adds to an unreachable node (the dev cluster runs none): a real
        # scheduler filters nodes by taints, not by their Ready condition.
        taints = [{"key": "node.kubernetes.io/unreachable", "effect": effect, "timeAdded": now_rfc3339()}
                  for effect in ("NoSchedule", "NoExecute")]
        with contextlib.suppress(RuntimeError, aiohttp.ClientError):
            await self._request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": taints}}, MERGE_PATCH)
        logger.info("node %s is lost: its pods will never acknowledge termination", name)

    async def _on_pod(self, event_type: str, pod: dict) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        run = self._pods.get(meta["uid"])
        node = spec.get("nodeName")
        if event_type == "DELETED" or meta.get("deletionTimestamp") or \
                (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self._placed.pop(meta["uid"], None)
        elif node in self.nodes:
            self._placed[meta["uid"]] = (node, _controller_uid(pod))
        if event_type == "DELETED":
            self._finished.discard(meta["uid"])
            self.pod_ips.release(meta["uid"])
            if run is not None:  # force-deleted (or its node was lost): nothing to report any more
                run.lost = True
                run.signal(signal.SIGCONT)
                run.signal(signal.SIGKILL)
            return
        if not node:
            if self.schedule and not meta.get("deletionTimestamp"):
                await self._bind(pod)
            return
        if node not in self.nodes:
            return
        if run is not None:
            run.pod = pod
            if meta.get("deletionTimestamp") and not run.lost:
                run.deleting.set()
            return
        if node in self.lost_nodes:
            return
        phase = (pod.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            await self._confirm_deletion(pod)  # never started here (or finished): nothing to stop
        elif phase not in ("Succeeded", "Failed") and meta["uid"] not in self._finished:
            run = PodRun(pod=pod, pod_dir=self._pod_dir(pod), pod_ip=self.pod_ips.allocate(meta["uid"]))
            self._pods[run.key] = run
            run.task = asyncio.create_task(self._lifecycle(run), name=f"pod {run.label}")

    async def _bind(self, pod: dict) -> None:
        candidates = [n for n in self.nodes if n not in self.lost_nodes]
        if not candidates:
            return
        node = self._choose_node(pod, candidates)
        self._placed[pod["metadata"]["uid"]] = (node, _controller_uid(pod))
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod["metadata"]["name"]},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        with contextlib.suppress(RuntimeError, aiohttp.ClientError):  # already bound or gone
            await self._request("POST", self._pod_path(pod, "/binding"), binding)

    def _choose_node(self, pod: dict, candidates: list[str]) -> str:
        """What kube-scheduler's default spreading does for pods behind a Service: fewest pods of the same owner
        (so a gang's workers land on different nodes, whatever else is being scheduled), then fewest pods, then
        round robin."""
        start = self.nodes.index(next(self._next_node))
        ordered = [n for n in self.nodes[start:] + self.nodes[:start] if n in candidates]
        owner = _controller_uid(pod)
        placed = [where for uid, where in self._placed.items() if uid != pod["metadata"]["uid"]]

        def load(node: str) -> tuple[int, int]:
            here = [uid for where, uid in placed if where == node]
            return (sum(1 for uid in here if owner is not None and uid == owner), len(here))

        return min(ordered, key=load)

    def _pod_dir(self, pod: dict) -> Path:
        meta = pod["metadata"]
        return self.data_dir / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"

    # -- one pod ----------------------------------------------------------------------------------

    async def _lifecycle(self, run: PodRun) -> None:
        try:
            if not await self._prepare_until_ready(run):
                await self._confirm_deletion(run.pod)
                return
            run.started_at = now_rfc3339()
            init_ok = await self._run_init_containers(run)
            if init_ok:
                await self._run_containers(run)
            if run.lost:
                return
            await self._patch_status(run, status.final_status(run))
            if run.deleting.is_set():
                await self._confirm_deletion(run.pod)
        except Exception as exc:  # a bug here must not leave the pod Running forever
            logger.exception("pod %s: the local kubelet failed to run it", run.label)
            run.signal(signal.SIGKILL)
            await self._patch_status(run, {"phase": "Failed", "reason": "KubeletError",
                                           "message": f"local kubelet: {type(exc).__name__}: {exc}"})
        finally:
            self._finished.add(run.key)
            self._pods.pop(run.key, None)

    async def _prepare_until_ready(self, run: PodRun) -> bool:
        """Build every container's process spec; a missing ConfigMap is retried like a real kubelet."""
        while not run.deleting.is_set() and not self._stopping.is_set():
            try:
                run.containers = await self._prepare(run)
                return True
            except PodConfigError as exc:
                waiting = {"waiting": {"reason": exc.reason, "message": str(exc)}}
                await self._patch_status(run, {"phase": "Pending", "containerStatuses": [
                    {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                     "restartCount": 0, "started": False, "state": waiting}
                    for c in run.pod["spec"].get("containers", [])]})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(run.deleting.wait(), 1.0)
        return False

    async def _prepare(self, run: PodRun) -> list[ContainerRun]:
        pod = run.pod
        run.pod_dir.mkdir(parents=True, exist_ok=True)
        volume_dirs, config_files = await volumes.materialise(pod, run.pod_dir, self.data_dir, self._read_object)
        config_cache: dict[tuple, dict] = {}
        for plural in ("configmaps", "secrets"):
            for container in [*pod["spec"].get("initContainers", []), *pod["spec"].get("containers", [])]:
                for ref in podspec.config_refs(container, plural):
                    obj = await self._read_object(plural, pod["metadata"]["namespace"], ref)
                    if obj is not None:
                        config_cache[(plural, ref)] = podspec.decoded_data(obj, plural == "secrets")

        def read_config(plural: str, namespace: str, name: str) -> dict:
            return config_cache[(plural, name)]

        log_dir = self.log_dir / pod["metadata"]["namespace"] / pod["metadata"]["name"]
        log_dir.mkdir(parents=True, exist_ok=True)
        runs = []
        for index, container in enumerate([*pod["spec"].get("initContainers", []), *pod["spec"].get("containers", [])]):
            paths = volumes.mount_map(container, volume_dirs, run.pod_dir)
            if index == 0:
                volumes.rewrite_files(config_files, paths)
            env = podspec.build_env(pod, container, read_config)
            env = podspec.remap_ports(env, lambda name, port: run.ports.setdefault(
                port, self._allocate_port(pod, name, port)))
            env = {name: podspec.rewrite_cluster_dns(paths.path(value)) for name, value in env.items()}
            argv = [*container.get("command", []), *container.get("args", [])]
            argv = [podspec.rewrite_cluster_dns(paths.path(podspec._expand(arg, env))) for arg in argv]
            process_env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
            # Unbuffered like the trainer image: logs interleave in order, the last line is the error.
            process_env.update(HOSTNAME=pod["spec"].get("hostname") or pod["metadata"]["name"], PYTHONUNBUFFERED="1")
            # No API credentials, as on a real node where the pod's account mounts no token; the marker lets
            # `m2f dev down` find processes that outlived a killed kubelet.
            process_env[POD_MARKER_ENV] = str(self.data_dir)
            process_env.setdefault("OMP_NUM_THREADS", str(podspec.cpu_threads(container, len(self.nodes))))
            process_env.update(self.extra_env)
            process_env.update(env)
            cwd = Path(paths.path(container["workingDir"])) if container.get("workingDir") else run.pod_dir
            cwd.mkdir(parents=True, exist_ok=True)
            runs.append(ContainerRun(
                spec=container, argv=podspec.resolve_command(argv, self.bin_dir), env=process_env, cwd=cwd,
                log_path=log_dir / f"{container['name']}.log",
                termination_path=volumes.termination_file(run.pod_dir, container), paths=paths))
        return runs

    def _is_running(self, namespace: str, name: str) -> bool:
        return any(r.pod["metadata"].get("namespace") == namespace and r.pod["metadata"]["name"] == name
                   for r in self._pods.values())

    def _local_port(self, pod_ip: str, port: int) -> int | None:
        """The pod network's lookup: a running pod by its address, then its declared port's local one."""
        run = next((r for r in self._pods.values() if r.pod_ip == pod_ip and not r.lost), None)
        return None if run is None else run.ports.get(port, port)

    async def open_pod_network(self) -> int:
        """Start the pod network proxy (before clients need it); `run()` closes it. Returns its port."""
        return self.pod_network.port or await self.pod_network.start()

    def _allocate_port(self, pod: dict, env_name: str, port: int) -> int:
        """One free local port per (job, label set, variable, port): the workers of one gang (same owner,
        same labels but their index) share MASTER_PORT's remap; a restarted gang (another attempt label)
        gets a fresh port, so it never races its terminating predecessor for the old one."""
        owners = pod["metadata"].get("ownerReferences") or []
        owner = next((ref["uid"] for ref in owners if ref.get("controller")), None) or pod["metadata"]["name"]
        labels = frozenset((k, v) for k, v in (pod["metadata"].get("labels") or {}).items()
                           if not _PER_REPLICA_LABEL.search(k))
        key = (pod["metadata"]["namespace"], owner, labels, env_name, port)
        if key not in self._ports:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self._ports[key] = probe.getsockname()[1]
        return self._ports[key]

    async def _start(self, run: PodRun, container: ContainerRun) -> None:
        container.termination_path.parent.mkdir(parents=True, exist_ok=True)
        container.termination_path.write_bytes(b"")
        container.started_at = now_rfc3339()
        try:
            with open(container.log_path, "ab") as log:
                container.process = await asyncio.create_subprocess_exec(
                    *container.argv, env=container.env, cwd=container.cwd, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:  # not executable, bad cwd, ...: what a runtime reports as StartError
            container.process = None
            container.terminated = {"exitCode": 128, "reason": "StartError", "message": f"{container.argv[0]}: {exc}",
                                    "startedAt": container.started_at, "finishedAt": now_rfc3339()}
            logger.warning("pod %s: container %s could not start: %s", run.label, container.spec["name"], exc)
            return
        (run.pod_dir / f"pid-{container.spec['name']}").write_text(str(container.process.pid))
        logger.info("pod %s: container %s started as pid %d: %s", run.label, container.spec["name"],
                    container.process.pid, container.argv)

    async def _run_init_containers(self, run: PodRun) -> bool:
        init_names = {c["name"] for c in run.pod["spec"].get("initContainers", [])}
        for container in [c for c in run.containers if c.spec["name"] in init_names]:
            await self._start(run, container)
            await self._patch_status(run, status.pod_status(run, "Pending"))
            await self._wait_or_terminate(run, [container])
            if container.terminated and container.terminated["exitCode"] != 0:
                return False
        return True

    async def _run_containers(self, run: PodRun) -> None:
        init_names = {c["name"] for c in run.pod["spec"].get("initContainers", [])}
        main = [c for c in run.containers if c.spec["name"] not in init_names]
        for container in main:
            await self._start(run, container)
        await self._patch_status(run, status.pod_status(run, "Running"))
        restart_policy = run.pod["spec"].get("restartPolicy", "Always")
        while True:
            await self._wait_or_terminate(run, main)
            if run.deleting.is_set() or run.lost or self._stopping.is_set():
                return
            to_restart = [c for c in main if c.terminated and (
                restart_policy == "Always" or (restart_policy == "OnFailure" and c.terminated["exitCode"] != 0))]
            if not to_restart:
                return
            await self._patch_status(run, status.pod_status(run, "Running"))
            await asyncio.sleep(1.0)  # crash-loop backoff, kept short for local runs
            for container in to_restart:
                container.restarts += 1
                container.terminated = None
                await self._start(run, container)
            await self._patch_status(run, status.pod_status(run, "Running"))

    async def _wait_or_terminate(self, run: PodRun, containers: list[ContainerRun]) -> None:
        """Wait until these containers exit; on deletion SIGTERM them, SIGKILL after the grace period."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in containers if c.process and c.terminated is None}
        deleting = asyncio.ensure_future(run.deleting.wait())
        kill_timer: asyncio.Task | None = None
        try:
            while waits:
                done, _ = await asyncio.wait([*waits, deleting], return_when=asyncio.FIRST_COMPLETED)
                for finished in [task for task in done if task in waits]:
                    status.record_exit(run, waits.pop(finished))
                    if run.pod["spec"].get("restartPolicy", "Always") != "Never" and not run.deleting.is_set():
                        return  # let the caller restart it
                if deleting in done and kill_timer is None and not run.lost:
                    grace = int(run.pod["metadata"].get("deletionGracePeriodSeconds") or 0)
                    logger.info("pod %s: deleting, SIGTERM (grace %ds)", run.label, grace)
                    run.signal(signal.SIGTERM)
                    kill_timer = asyncio.create_task(self._kill_after(run, grace))
        finally:
            deleting.cancel()
            if kill_timer is not None:
                kill_timer.cancel()
            for task in waits:
                task.cancel()

    @staticmethod
    async def _kill_after(run: PodRun, grace: int) -> None:
        await asyncio.sleep(grace)
        logger.info("pod %s: grace period over, SIGKILL", run.label)
        run.signal(signal.SIGKILL)

    async def _shutdown_pods(self) -> None:
        runs = list(self._pods.values())
        for run in runs:
            run.lost = True  # the API may be gone already: report nothing
            run.signal(signal.SIGCONT)
            run.signal(signal.SIGTERM)
        await asyncio.sleep(0.5 if runs else 0)
        for run in runs:
            run.signal(signal.SIGKILL)
            if run.task is not None:
                run.task.cancel()
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task


def _controller_uid(pod: dict) -> str | None:
    return next((ref.get("uid") for ref in pod["metadata"].get("ownerReferences") or [] if ref.get("controller")),
                None)
