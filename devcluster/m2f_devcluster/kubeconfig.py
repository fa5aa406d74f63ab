"""Kubeconfig files the dev cluster writes, and the (URL, headers, TLS context) a raw HTTP client reads from one."""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class ApiEndpoint:
    """Enough to talk to an API server with aiohttp: the kubelet and the bootstrap use it."""

    url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | None  # None: plain HTTP (the emulator)

    @classmethod
    def from_kubeconfig(cls, path: Path) -> ApiEndpoint:
        config = yaml.safe_load(Path(path).read_text())
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next((u["user"] for u in config.get("users") or [] if u["name"] == context.get("user")), {}) or {}
        headers = {"Authorization": f"Bearer {user['token']}"} if user.get("token") else {}
        tls = None
        if cluster["server"].startswith("https://"):
            tls = ssl.create_default_context()
            if cluster.get("certificate-authority-data"):
                tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
            elif cluster.get("certificate-authority"):
                tls.load_verify_locations(cafile=cluster["certificate-authority"])
        return cls(cluster["server"].rstrip("/"), headers, tls)


def write_token_kubeconfig(path: Path, server: str, ca_cert: Path, token: str, user: str,
                           namespace: str = "default", context: str = "m2f-dev") -> Path:
    """A kubeconfig with the CA inline and a bearer token, written atomically with mode 0600."""
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": context, "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_cert.read_bytes()).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user, "namespace": namespace}}],
        "current-context": context,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        yaml.safe_dump(config, stream, sort_keys=False)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return path
