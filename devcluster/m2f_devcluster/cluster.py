"""The embedded dev cluster: a control plane + local kubelet on one event loop, the operator as a subprocess.

Two control planes behind one interface (``control_plane``): ``emulator``, the project's in-memory API
emulator (fast; `make demo`), and ``real``, etcd + kube-apiserver + kube-controller-manager + kube-scheduler
(controlplane/real.py). On both, the cluster is set up as an administrator would (controlplane/bootstrap.py);
on ``real`` the operator runs with the Helm chart's RBAC and its own service account's token.

``serve_forever(config)`` is what `m2f dev up` runs (daemonised); ``DevCluster`` runs the same thing
on a background thread for tests and demos::

    with DevCluster(tmp_path) as cluster:
        subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig, "apply", "-f", "train.yaml"])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2f_devcluster.controlplane import bootstrap
from m2f_devcluster.emulator import Emulator
from m2f_devcluster.emulator.defaults import DEFAULT_CAPACITY
from m2f_devcluster.kubeconfig import ApiEndpoint, write_token_kubeconfig
from m2f_devcluster.kubelet import Kubelet
from m2f_devcluster.ports import free_port

logger = logging.getLogger(__name__)

DEFAULT_NODES = ("dev-node-0", "dev-node-1")
CONTROL_PLANES = ("emulator", "real")
# The claims the examples mount; the dev cluster backs each with a folder of its data dir.
DEFAULT_CLAIMS = ("datasets", "results")


@dataclass
class DevClusterConfig:
    data_dir: Path
    port: int | None = None  # API port; None picks a free one
    nodes: tuple[str, ...] = DEFAULT_NODES
    operator: bool = True
    # Without the local kubelet nothing runs pods (operator tests play the kubelet's part by hand).
    kubelet: bool = True
    # Restart the operator when it exits on its own (the daemon does; tests kill and restart it themselves).
    supervise_operator: bool = False
    # Extra environment for the operator (e.g. M2F_STUCK_TERMINATING_SECONDS for fault tests).
    operator_env: dict[str, str] = field(default_factory=dict)
    control_plane: str = "emulator"
    # Where users run jobs: the chart's worker account and the claims are set up there.
    namespaces: tuple[str, ...] = ("default",)
    claims: tuple[str, ...] = DEFAULT_CLAIMS
    node_capacity: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))

    def __post_init__(self) -> None:
        if self.control_plane not in CONTROL_PLANES:
            raise ValueError(f"control_plane must be one of {', '.join(CONTROL_PLANES)}, not {self.control_plane!r}")

    @property
    def kubeconfig(self) -> Path:
        return self.data_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def operator_log(self) -> Path:
        return self.data_dir / "operator.log"

    @property
    def operator_kubeconfig(self) -> Path:
        """The operator's own credentials on the real control plane; the emulator has no authentication."""
        return self.data_dir / "operator-kubeconfig" if self.control_plane == "real" else self.kubeconfig


class OperatorProcess:
    """`python -m m2f_operator` against the dev cluster, logging to <data_dir>/operator.log."""

    def __init__(self, config: DevClusterConfig):
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self.extra_env: dict[str, str] = {}  # the pod network proxy, once the kubelet has opened it

    async def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ("KUBERNETES_SERVICE_HOST",)}
        env.update({
            "KUBECONFIG": str(self.config.operator_kubeconfig),
            "M2F_LIVENESS_PORT": str(free_port()),
            "M2F_OPERATOR_METRICS_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        env.update(self.config.operator_env)
        with open(self.config.operator_log, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "m2f_operator", env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        logger.info("operator started as pid %d (log: %s)", self.process.pid, self.config.operator_log)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, kill: bool = False, timeout: float = 15.0) -> None:
        """SIGTERM (or SIGKILL with `kill`, as a crash would), then wait for it."""
        if not self.running:
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.kill() if kill else self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


def install_crds(api: Emulator) -> list[str]:
    """Create (or update) the project's CRDs, generated from the spec schema like `make crds` does."""
    from m2f_devcluster.emulator.errors import ApiError
    from m2f_devcluster.emulator.store import CRD_TYPE
    from m2f_operator.crds import build_crds

    names = []
    for crd in build_crds():
        name = crd["metadata"]["name"]
        try:
            api.store.create(CRD_TYPE, None, crd)
        except ApiError as exc:
            if exc.code != 409:
                raise
            current = api.store.get(CRD_TYPE, None, name)
            api.store.update(CRD_TYPE, None, name, dict(crd, metadata=dict(crd["metadata"], resourceVersion=current[
                "metadata"]["resourceVersion"])))
        names.append(name)
    return names


class DevClusterRuntime:
    """The running parts on one event loop; `serve()` returns when `stop()` is called."""

    def __init__(self, config: DevClusterConfig):
        self.config = config
        self.api: Emulator | None = None  # the emulator's object store, on the emulator control plane only
        self.endpoint: ApiEndpoint | None = None
        self.kubelet: Kubelet | None = None
        self.operator = OperatorProcess(config)
        self._stop = asyncio.Event()

    async def serve(self, on_ready: Callable[[DevClusterRuntime], None] | None = None) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        async with self._control_plane() as endpoint:
            self.endpoint = endpoint
            self.kubelet = Kubelet(endpoint.url, config.data_dir, config.nodes, log_dir=config.log_dir,
                                   endpoint=endpoint, capacity=config.node_capacity,
                                   # A real scheduler binds pods; on the emulator the kubelet does.
                                   schedule=config.control_plane == "emulator",
                                   serve_api=config.control_plane == "real")
            if config.kubelet:
                # The operator reaches pod addresses (rank 0's metrics) through the kubelet's pod network.
                proxy = f"http://127.0.0.1:{await self.kubelet.open_pod_network()}"
                self.operator.extra_env = {"HTTP_PROXY": proxy, "http_proxy": proxy,
                                           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
            kubelet_task = asyncio.create_task(self.kubelet.run() if config.kubelet else asyncio.sleep(0),
                                               name="local kubelet")
            supervisor = None
            try:
                if config.kubelet:
                    await self._kubelet_ready(kubelet_task)
                if config.operator:
                    await self.operator.start()
                    if config.supervise_operator:
                        supervisor = asyncio.create_task(self._supervise_operator(), name="operator supervisor")
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
            finally:
                if supervisor is not None:
                    supervisor.cancel()
                await self.operator.stop()
                self.kubelet.stop()
                await kubelet_task

    async def _kubelet_ready(self, kubelet_task: asyncio.Task, timeout: float = 120.0) -> None:
        """Wait until the kubelet's Nodes exist: whoever is told the cluster is up lists them next."""
        ready = asyncio.create_task(self.kubelet.ready.wait())
        done, _ = await asyncio.wait({ready, kubelet_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if kubelet_task in done:
            kubelet_task.result()  # its error, if it failed
            raise RuntimeError("the local kubelet stopped before registering its nodes")
        if not done:
            raise RuntimeError(f"the local kubelet did not register its nodes within {timeout:.0f} s")

    @contextlib.asynccontextmanager
    async def _control_plane(self):
        config = self.config
        if config.control_plane == "emulator":
            async with Emulator(port=config.port, log_dir=config.log_dir, kubeconfig_path=config.kubeconfig) as api:
                self.api = api
                crds = install_crds(api)
                logger.info("API emulator on %s with CRDs %s", api.base_url, ", ".join(crds))
                yield ApiEndpoint(api.base_url, {}, None)
            return
        from m2f_devcluster.controlplane.real import RealControlPlane

        plane = RealControlPlane(config.data_dir / "control-plane", config.kubeconfig, config.log_dir, port=config.port)
        async with plane:
            await self._bootstrap(plane)
            yield plane.endpoint

    async def _bootstrap(self, plane) -> None:
        """CRDs, the chart's RBAC, the claims as bound hostPath volumes, the operator's own kubeconfig."""
        from m2f_operator.crds import build_crds

        config = self.config
        async with bootstrap.Api(plane.endpoint) as api:
            crds = await bootstrap.install_crds(api, build_crds())
            for namespace in (bootstrap.OPERATOR_NAMESPACE, *config.namespaces):
                await api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            rbac = await asyncio.to_thread(bootstrap.chart_rbac, config.namespaces)
            for obj in rbac:
                await api.apply(obj)
            claims = [(namespace, claim) for namespace in config.namespaces for claim in config.claims]
            for namespace, claim in claims:
                folder = config.data_dir / "pvc" / namespace / claim
                folder.mkdir(parents=True, exist_ok=True)
                for obj in bootstrap.claim_volumes(namespace, claim, folder):
                    await api.apply(obj)
            await bootstrap.wait_claims_bound(api, claims)
            account = next(o["metadata"]["name"] for o in rbac if o["kind"] == "ServiceAccount"
                           and o["metadata"].get("namespace") == bootstrap.OPERATOR_NAMESPACE
                           and "worker" not in o["metadata"]["name"])
            token = await bootstrap.service_account_token(api, bootstrap.OPERATOR_NAMESPACE, account)
        assert plane.pki is not None
        write_token_kubeconfig(config.operator_kubeconfig, plane.base_url, plane.pki.ca_cert, token,
                               f"system:serviceaccount:{bootstrap.OPERATOR_NAMESPACE}:{account}")
        logger.info("real control plane on %s: CRDs %s, chart RBAC (%d objects), claims %s, operator as %s",
                    plane.base_url, ", ".join(crds), len(rbac), claims, account)

    def stop(self) -> None:
        self._stop.set()

    async def _supervise_operator(self) -> None:
        """Restart a crashed operator with backoff (1 s doubling to 30 s; reset after 60 s of uptime)."""
        backoff = 1.0
        while True:
            process = self.operator.process
            assert process is not None
            started = asyncio.get_running_loop().time()
            code = await process.wait()
            if self._stop.is_set():
                return
            backoff = 1.0 if asyncio.get_running_loop().time() - started > 60 else min(backoff * 2, 30.0)
            logger.warning("the operator exited with %s; restarting in %.0fs (log: %s)", code, backoff,
                           self.config.operator_log)
            await asyncio.sleep(backoff)
            await self.operator.start()


class DevCluster:
    """The dev cluster on a background thread: ``.kubeconfig``, ``.url``, ``.data_dir``, fault helpers."""

    def __init__(self, data_dir: Path | str, **options: Any):
        self.config = DevClusterConfig(data_dir=Path(data_dir), **options)
        self.runtime = DevClusterRuntime(self.config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="m2f-dev-cluster", daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self.runtime.serve(lambda _: self._ready.set()))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self, timeout: float = 60.0) -> DevCluster:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()  # what did start (etcd, an API server) must not outlive the failed start
            raise RuntimeError(f"the dev cluster did not start: {self._error or f'not ready in {timeout:.0f} s'}") \
                from self._error
        return self

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.runtime.stop)
        self._thread.join(timeout)

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _call(self, coroutine, timeout: float = 60.0):
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def kubeconfig(self) -> Path:
        return self.config.kubeconfig

    @property
    def url(self) -> str:
        assert self.runtime.endpoint is not None
        return self.runtime.endpoint.url

    @property
    def control_plane(self) -> str:
        return self.config.control_plane

    @property
    def operator_kubeconfig(self) -> Path:
        return self.config.operator_kubeconfig

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def kill_operator(self) -> None:
        """SIGKILL the operator, as a crash or a node failure under it would."""
        self._call(self.runtime.operator.stop(kill=True))

    def start_operator(self) -> None:
        self._call(self.runtime.operator.start())

    def lose_node(self, name: str) -> None:
        assert self.runtime.kubelet is not None
        self._call(self.runtime.kubelet.lose_node(name))

    def pod_pid(self, namespace: str, pod_name: str, container: str = "m2f") -> int:
        """The local pid of a running pod's container (for fault injection: `os.kill(pid, SIGKILL)`)."""
        candidates = sorted((self.data_dir / "pods" / namespace).glob(f"{pod_name}-*/pid-{container}"),
                            key=lambda path: path.stat().st_mtime)
        if not candidates:
            raise LookupError(f"pod {namespace}/{pod_name} has no running container {container!r}")
        return int(candidates[-1].read_text())
