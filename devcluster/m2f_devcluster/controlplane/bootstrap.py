"""What a cluster admin sets up before users apply a Train, done through the API on either control plane:
the CRDs, the Helm chart's RBAC and service accounts, the nodes' claims as bound hostPath volumes, and a
kubeconfig for the operator with its own service account's token (not the administrator's)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import yaml

from m2f_devcluster.kubeconfig import ApiEndpoint

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "mask2former-operator"
RELEASE = "m2f"
OPERATOR_NAMESPACE = "m2f-system"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# kind -> (API prefix, plural, namespaced)
_PATHS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "PersistentVolume": ("/api/v1", "persistentvolumes", False),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
}


class BootstrapError(RuntimeError):
    """The API refused a bootstrap object, or something did not become ready in time."""


class Api:
    """A small aiohttp client on an ApiEndpoint: JSON in, JSON out, errors with the API's message."""

    def __init__(self, endpoint: ApiEndpoint):
        self.endpoint = endpoint
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._http = aiohttp.ClientSession(headers=self.endpoint.headers,
                                           timeout=aiohttp.ClientTimeout(total=60, sock_connect=10))
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self._http is not None
        await self._http.close()

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        assert self._http is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None
        async with self._http.request(method, self.endpoint.url + path, json=body, headers=headers,
                                      ssl=self.endpoint.ssl if self.endpoint.ssl is not None else True) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else {}
            except json.JSONDecodeError:
                return response.status, {"message": text}

    async def apply(self, obj: dict) -> dict:
        """Create, or replace what exists (keeping its resourceVersion): idempotent across restarts."""
        path = object_path(obj)
        status, created = await self.request("POST", path.rsplit("/", 1)[0], obj)
        if status == 409:
            _, current = await self.request("GET", path)
            replaced = dict(obj, metadata=dict(obj["metadata"],
                                               resourceVersion=current["metadata"]["resourceVersion"]))
            status, created = await self.request("PUT", path, replaced)
        if status >= 400:
            raise BootstrapError(f"{obj['kind']} {obj['metadata']['name']}: {status} {created.get('message', created)}")
        return created


def object_path(obj: dict) -> str:
    prefix, plural, namespaced = _PATHS[obj["kind"]]
    metadata = obj["metadata"]
    scope = f"/namespaces/{metadata.get('namespace') or 'default'}" if namespaced else ""
    return f"{prefix}{scope}/{plural}/{metadata['name']}"


async def install_crds(api: Api, crds: Iterable[dict], timeout: float = 60.0) -> list[str]:
    names = [(await api.apply(crd))["metadata"]["name"] for crd in crds]
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            _, crd = await api.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise BootstrapError(f"CRD {name} not Established after {timeout:.0f} s: {conditions}")
            await asyncio.sleep(0.2)
    return names


def _helm() -> str:
    found = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    if found is None:
        raise BootstrapError("the real control plane renders the Helm chart's RBAC: helm is not installed "
                             "(make install puts it into .venv/bin)")
    return found


def chart_rbac(worker_namespaces: Iterable[str], chart: Path = CHART) -> list[dict]:
    """The chart's RBAC and service accounts, rendered by `helm template` as `helm install` would apply them."""
    namespaces = list(worker_namespaces)
    argv = [_helm(), "template", RELEASE, str(chart), "--namespace", OPERATOR_NAMESPACE,
            "--set", f"worker.namespaces={{{','.join(namespaces)}}}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode:
        raise BootstrapError(f"helm template {chart}: {result.stderr.strip()}")
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return [doc for doc in documents if doc.get("kind") in RBAC_KINDS]


async def service_account_token(api: Api, namespace: str, name: str, timeout: float = 60.0) -> str:
    """The token the token controller minted for a service account (1.20 keeps it in a Secret)."""
    deadline = time.monotonic() + timeout
    while True:
        _, listing = await api.request("GET", f"/api/v1/namespaces/{namespace}/secrets")
        for secret in listing.get("items", []):
            annotations = secret["metadata"].get("annotations") or {}
            if (secret.get("type") == "kubernetes.io/service-account-token"
                    and annotations.get("kubernetes.io/service-account.name") == name
                    and (secret.get("data") or {}).get("token")):
                return base64.b64decode(secret["data"]["token"]).decode()
        if time.monotonic() > deadline:
            raise BootstrapError(f"no token for service account {namespace}/{name} after {timeout:.0f} s")
        await asyncio.sleep(0.3)


def claim_volumes(namespace: str, claim: str, host_path: Path, capacity: str = "100Gi") -> list[dict]:
    """A hostPath PersistentVolume pre-bound to the claim, and the claim bound to it (no provisioner here)."""
    volume = f"m2f-dev-{namespace}-{claim}"
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume, "labels": {"m2f.dev/claim": claim}},
         "spec": {"capacity": {"storage": capacity}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                  "hostPath": {"path": str(host_path), "type": "DirectoryOrCreate"},
                  "claimRef": {"namespace": namespace, "name": claim}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                  "resources": {"requests": {"storage": capacity}}}},
    ]


async def wait_claims_bound(api: Api, claims: Iterable[tuple[str, str]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for namespace, claim in claims:
        while True:
            _, obj = await api.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
            if (obj.get("status") or {}).get("phase") == "Bound":
                break
            if time.monotonic() > deadline:
                raise BootstrapError(f"claim {namespace}/{claim} not Bound after {timeout:.0f} s")
            await asyncio.sleep(0.3)
