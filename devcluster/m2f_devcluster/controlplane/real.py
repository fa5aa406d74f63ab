"""The `real` control plane: etcd + kube-apiserver + kube-controller-manager + kube-scheduler as local processes.

TLS with the dev cluster's own CA, bearer-token authentication, RBAC authorization and the admission plugins a
production cluster runs (OwnerReferencesPermissionEnforcement included), so what an operator may not do fails
here as it would there. Flags follow ``shared/kube/README.md``: 1.20 has no insecure port, the node lifecycle
and cloud controllers are off (the local kubelet owns its Nodes) and the controller manager runs garbage
collection, namespace deletion, service-account tokens and PV binding. Every port is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from m2f_devcluster.controlplane.binaries import Binaries, find_binaries
from m2f_devcluster.controlplane.pki import Pki, ensure_pki
from m2f_devcluster.kubeconfig import ApiEndpoint, write_token_kubeconfig
from m2f_devcluster.ports import free_port

logger = logging.getLogger(__name__)

SERVICE_CIDR = "10.96.0.0/16"
ADMISSION_PLUGINS = ("NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,ResourceQuota,"
                     "OwnerReferencesPermissionEnforcement,StorageObjectInUseProtection,PersistentVolumeClaimResize")
# nodeipam/route/service/cloud: no cloud and no pod CIDRs here; nodelifecycle: the local kubelet reports its
# Nodes itself (a lost node is simulated); csrsigning fails without a signing CA pair and nothing needs it.
CONTROLLERS = "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-csrsigning"
READY_TIMEOUT_S = 120.0


@dataclass
class _Process:
    name: str
    process: asyncio.subprocess.Process
    log: Path


class RealControlPlane:
    """``async with RealControlPlane(dir) as plane:`` serves a real API on ``plane.base_url``; ``plane.kubeconfig``
    is an administrator's kubeconfig (token in the system:masters group)."""

    name = "real"

    def __init__(self, data_dir: Path, kubeconfig_path: Path, log_dir: Path, port: int | None = None,
                 binaries: Binaries | None = None):
        self.dir = Path(data_dir)
        self.kubeconfig = Path(kubeconfig_path)
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        self.binaries = binaries
        self.pki: Pki | None = None
        self._processes: list[_Process] = []

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> ApiEndpoint:
        return ApiEndpoint.from_kubeconfig(self.kubeconfig)

    async def __aenter__(self) -> RealControlPlane:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def start(self) -> None:
        self.binaries = self.binaries or await asyncio.to_thread(find_binaries)
        logger.info("real control plane: kube binaries from %s, etcd %s", self.binaries.source, self.binaries.etcd)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pki = await asyncio.to_thread(ensure_pki, self.dir / "pki")
        write_token_kubeconfig(self.kubeconfig, self.base_url, self.pki.ca_cert, self.pki.admin_token, "m2f-dev-admin")
        etcd_url = await self._start_etcd()
        await self._start_apiserver(etcd_url)
        await self._wait_ready()
        await self._start("kube-controller-manager", [
            self.binaries.kube_controller_manager, f"--kubeconfig={self.kubeconfig}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}", "--leader-elect=false", "--port=0", "--secure-port=0",
            f"--controllers={CONTROLLERS}", "--use-service-account-credentials=true",
            # A dev cluster should show garbage collection and PV binding within seconds.
            "--pvclaimbinder-sync-period=2s", "--concurrent-gc-syncs=5", "--v=1"])
        await self._start("kube-scheduler", [
            self.binaries.kube_scheduler, f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
            "--port=0", "--secure-port=0", "--v=1"])

    async def _start_etcd(self) -> str:
        data = self.dir / "etcd"
        shutil.rmtree(data, ignore_errors=True)  # a dev cluster starts empty, as the emulator does
        client, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        await self._start("etcd", [
            self.binaries.etcd, "--name=m2f-dev", f"--data-dir={data}", f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}", f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=m2f-dev={peer_url}",
            "--unsafe-no-fsync", "--log-level=warn", "--logger=zap"])
        return client_url

    async def _start_apiserver(self, etcd_url: str) -> None:
        pki = self.pki
        assert pki is not None and self.binaries is not None
        await self._start("kube-apiserver", [
            self.binaries.kube_apiserver, f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            f"--secure-port={self.port}", "--insecure-port=0", "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoints would be this loopback address, which endpoint validation
            # rejects; nothing in the dev cluster reaches the API through that Service.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--token-auth-file={pki.token_file}", f"--service-account-key-file={pki.service_account_key}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC", f"--enable-admission-plugins={ADMISSION_PLUGINS}",
            # `kubectl logs` goes to the node's kubelet: the local kubelet listens on 127.0.0.1 (the Nodes'
            # InternalIP); their Hostname addresses do not resolve.
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=false", "--profiling=false", "--v=1"])

    async def _start(self, name: str, argv: list) -> None:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as stream:
            process = await asyncio.create_subprocess_exec(
                *map(str, argv), stdin=asyncio.subprocess.DEVNULL, stdout=stream, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)
        self._processes.append(_Process(name, process, log))
        logger.info("%s started as pid %d (log: %s)", name, process.pid, log)

    async def _wait_ready(self) -> None:
        endpoint = self.endpoint
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = ""
        async with aiohttp.ClientSession(headers=endpoint.headers) as http:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    async with http.get(f"{self.base_url}/readyz", ssl=endpoint.ssl,
                                        timeout=aiohttp.ClientTimeout(total=5)) as response:
                        last = f"{response.status} {(await response.text())[-300:]}"
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready after {READY_TIMEOUT_S:.0f} s ({last}); "
                           f"see {self.log_dir / 'kube-apiserver.log'}")

    def _check_alive(self) -> None:
        for part in self._processes:
            if part.process.returncode is not None:
                tail = part.log.read_text(errors="replace").splitlines()[-5:] if part.log.is_file() else []
                raise RuntimeError(f"{part.name} exited with {part.process.returncode}: " + " | ".join(tail))

    async def stop(self) -> None:
        """Reverse order, SIGTERM then SIGKILL after 10 s, each process group."""
        for part in reversed(self._processes):
            await _terminate(part.process)
        self._processes.clear()


async def _terminate(process: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


try:  # looked up now: the child between fork and exec only calls it (no library loading there)
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process (thread) that started it dies, so a killed test run or
    daemon leaves no API server, etcd or controller behind (Linux prctl PR_SET_PDEATHSIG = 1)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)
