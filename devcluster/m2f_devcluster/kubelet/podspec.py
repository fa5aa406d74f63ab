"""Translate a Pod's container into a local process: argv, env, working dir and the per-pod path map.

Containers see paths like /etc/m2f/spec.yaml, /results or /dev/termination-log; on one machine each pod
gets its own folder instead. Every volumeMount's mountPath (and the terminationMessagePath) maps to a
local directory (file); argv items, env values and materialised configMap files are rewritten by that
prefix map, longest prefix first. Cluster DNS names (*.svc, *.svc.cluster.local) become 127.0.0.1 and
ports that would collide between jobs are remapped per job.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_CLUSTER_DNS = re.compile(r"\b(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?\.)+svc(?:\.cluster\.local)?\b\.?")
_PYTHON_NAMES = ("python", "python3", f"python3.{sys.version_info.minor}")


class PodConfigError(Exception):
    """The pod cannot start as specified (missing ConfigMap key, unsupported volume, no command)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class PathMap:
    """Container path prefix -> local path, applied longest prefix first."""

    prefixes: dict[str, str] = field(default_factory=dict)

    def add(self, container_path: str, local_path: Path) -> None:
        self.prefixes[container_path.rstrip("/") or "/"] = str(local_path)

    def _ordered(self) -> list[tuple[str, str]]:
        return sorted(self.prefixes.items(), key=lambda item: len(item[0]), reverse=True)

    def path(self, value: str) -> str:
        """Rewrite a value that is a path (or `key=path`, as in trainer overrides)."""
        if "=" in value and not value.startswith("/"):
            key, _, rest = value.partition("=")
            return f"{key}={self.path(rest)}"
        for prefix, local in self._ordered():
            if value == prefix or value.startswith(prefix + "/"):
                return local + value[len(prefix):]
        return value

    def text(self, content: str) -> str:
        """Rewrite path prefixes inside a file (YAML/JSON/shell): only where a path starts."""
        for prefix, local in self._ordered():
            pattern = re.compile(r"(?<![\w./-])" + re.escape(prefix) + r"(?=[/\s\"',\]}]|$)", re.MULTILINE)
            content = pattern.sub(lambda _match, local=local: local, content)
        return content


    def container_text(self, content: str) -> str:
        """The reverse of `text`: local paths back to what the container saw (a termination message names
        files as the container wrote them, so the status says /results/..., as on a real node)."""
        for prefix, local in sorted(self.prefixes.items(), key=lambda item: len(item[1]), reverse=True):
            pattern = re.compile(r"(?<![\w./-])" + re.escape(local) + r"(?=[/\s\"',\]}]|$)", re.MULTILINE)
            content = pattern.sub(lambda _match, prefix=prefix: prefix, content)
        return content


def rewrite_cluster_dns(value: str) -> str:
    """Service / pod DNS names of the (emulated) cluster resolve to this machine."""
    return _CLUSTER_DNS.sub("127.0.0.1", value)


def resolve_command(argv: list[str], bin_dir: Path) -> list[str]:
    """Images are ignored: `m2f`/`python` come from the project's environment, the rest from PATH."""
    if not argv:
        raise PodConfigError("CreateContainerError", "the local kubelet needs container.command (images are not run)")
    program = argv[0]
    if "/" in program:
        if not Path(program).exists() and Path(program).name in _PYTHON_NAMES:
            return [sys.executable, *argv[1:]]
        return list(argv)
    if program in _PYTHON_NAMES:
        return [sys.executable, *argv[1:]]
    local = bin_dir / program
    if local.exists():
        return [str(local), *argv[1:]]
    found = shutil.which(program)
    if found is None:
        raise PodConfigError("CreateContainerError", f"executable {program!r} not found in {bin_dir} or PATH")
    return [found, *argv[1:]]


def field_ref(pod: dict, path: str) -> str:
    """The downward API values a local pod can have."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        # The processes' own address is loopback: the pod IP in the API is a label (kubelet/addresses.py).
        "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodConfigError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {path!r}")


def build_env(pod: dict, container: dict, read_config: Callable[[str, str, str], dict]) -> dict[str, str]:
    """Container env in order: envFrom, then env (value, fieldRef, configMapKeyRef, secretKeyRef).
    `read_config(kind, namespace, name)` returns a ConfigMap's/Secret's data (decoded)."""
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        kind = "configmaps" if "configMapRef" in source else "secrets"
        try:
            data = read_config(kind, namespace, ref["name"])
        except KeyError:
            if ref.get("optional"):
                continue
            raise PodConfigError("CreateContainerConfigError", f'{kind[:-1]} "{ref["name"]}" not found') from None
        env.update({source.get("prefix", "") + key: value for key, value in data.items()})
    for item in container.get("env", []):
        name, value_from = item["name"], item.get("valueFrom")
        if value_from is None:
            env[name] = _expand(str(item.get("value", "")), env)
        elif "fieldRef" in value_from:
            env[name] = field_ref(pod, value_from["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
            ref = value_from.get("configMapKeyRef") or value_from.get("secretKeyRef")
            kind = "configmaps" if "configMapKeyRef" in value_from else "secrets"
            try:
                env[name] = read_config(kind, namespace, ref["name"])[ref["key"]]
            except KeyError:
                if ref.get("optional"):
                    continue
                raise PodConfigError("CreateContainerConfigError",
                                     f'couldn\'t find key {ref["key"]} in {kind[:-1]} {namespace}/{ref["name"]}') from None
        else:
            raise PodConfigError("CreateContainerConfigError", f"env {name}: unsupported valueFrom {sorted(value_from)}")
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """$(VAR) references to earlier variables, as Kubernetes expands them ($$ escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def remap_ports(env: dict[str, str], allocate: Callable[[str, int], int]) -> dict[str, str]:
    """Env vars naming ports (`*_PORT` with a positive integer) get a free local port per job."""
    remapped = dict(env)
    for name, value in env.items():
        if name.endswith("PORT") and value.isdigit() and int(value) > 0:
            remapped[name] = str(allocate(name, int(value)))
    return remapped


def config_refs(container: dict, plural: str) -> set[str]:
    key, ref_key = ("configMapRef", "configMapKeyRef") if plural == "configmaps" else ("secretRef", "secretKeyRef")
    names = {source[key]["name"] for source in container.get("envFrom", []) if key in source}
    names |= {item["valueFrom"][ref_key]["name"] for item in container.get("env", [])
              if ref_key in (item.get("valueFrom") or {})}
    return names


def decoded_data(obj: dict, is_secret: bool) -> dict:
    data = dict(obj.get("data") or {})
    if is_secret:
        data = {key: base64.b64decode(value).decode(errors="replace") for key, value in data.items()}
        data.update(obj.get("stringData") or {})
    return data


def cpu_threads(container: dict, nodes: int) -> int:
    """OMP_NUM_THREADS for a container when neither the host nor the pod sets it: its CPU limit (or
    request), else this machine's cores shared between the local nodes. All "nodes" share one
    machine; torch's default of one thread per core in every process oversubscribes it badly."""
    resources = container.get("resources") or {}
    cpu = (resources.get("limits") or {}).get("cpu") or (resources.get("requests") or {}).get("cpu")
    if cpu is not None:
        text = str(cpu)
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        return max(1, math.ceil(cores))
    return max(1, (os.cpu_count() or 1) // max(1, nodes))
