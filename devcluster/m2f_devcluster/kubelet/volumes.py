"""Pod volumes as local directories: PVC -> <data_dir>/pvc/<namespace>/<claim>, hostPath as is,
configMap/secret materialised as files in the pod's folder, emptyDir (and anything else) a per-pod folder."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from m2f_devcluster.kubelet.podspec import PathMap, PodConfigError

logger = logging.getLogger(__name__)

ReadObject = Callable[[str, str, str], Awaitable[dict | None]]  # (plural, namespace, name) -> object or None


def pvc_dir(data_dir: Path, namespace: str, claim: str) -> Path:
    return data_dir / "pvc" / namespace / claim


async def materialise(pod: dict, pod_dir: Path, data_dir: Path, read_object: ReadObject) -> tuple[dict[str, Path], list[Path]]:
    """Local directory of every volume, and the files materialised from ConfigMaps/Secrets
    (their contents get the pod's path rewriting once all mounts are known)."""
    namespace = pod["metadata"].get("namespace", "default")
    local: dict[str, Path] = {}
    materialised: list[Path] = []
    for volume in pod.get("spec", {}).get("volumes", []):
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            path = pvc_dir(data_dir, namespace, volume["persistentVolumeClaim"]["claimName"])
        elif "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
        elif "configMap" in volume or "secret" in volume:
            path = pod_dir / "volumes" / name
            materialised += await _write_config_volume(volume, namespace, path, read_object)
        else:
            if "emptyDir" not in volume:
                logger.warning("volume %s of pod %s/%s: type %s is an empty folder locally", name, namespace,
                               pod["metadata"]["name"], sorted(k for k in volume if k != "name"))
            path = pod_dir / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        local[name] = path
    return local, materialised


async def _write_config_volume(volume: dict, namespace: str, target: Path, read_object: ReadObject) -> list[Path]:
    is_secret = "secret" in volume
    source = volume["secret"] if is_secret else volume["configMap"]
    object_name = source.get("secretName") if is_secret else source.get("name")
    obj = await read_object("secrets" if is_secret else "configmaps", namespace, object_name)
    if obj is None:
        if source.get("optional"):
            return []
        kind = "secret" if is_secret else "configmap"
        raise PodConfigError("CreateContainerConfigError", f'{kind} "{object_name}" not found')
    files: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        files[key] = base64.b64decode(value) if is_secret else value.encode()
    for key, value in (obj.get("binaryData") or {}).items():
        files[key] = base64.b64decode(value)
    items = source.get("items")
    if items:
        missing = [item["key"] for item in items if item["key"] not in files]
        if missing and not source.get("optional"):
            raise PodConfigError("CreateContainerConfigError", f"key {missing[0]} not found in {object_name}")
        files = {item["path"]: files[item["key"]] for item in items if item["key"] in files}
    written = []
    target.mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def mount_map(container: dict, volume_dirs: dict[str, Path], pod_dir: Path) -> PathMap:
    """mountPath (+subPath) of each volumeMount and the terminationMessagePath -> local paths."""
    paths = PathMap()
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volume_dirs:
            raise PodConfigError("CreateContainerConfigError", f"volumeMount {mount['name']!r}: no such volume")
        local = volume_dirs[mount["name"]]
        if mount.get("subPath"):
            local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
        paths.add(mount["mountPath"], local)
    paths.add(container.get("terminationMessagePath", "/dev/termination-log"), termination_file(pod_dir, container))
    return paths


def termination_file(pod_dir: Path, container: dict) -> Path:
    return pod_dir / f"termination-{container['name']}.log"


def rewrite_files(files: list[Path], paths: PathMap) -> None:
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rewritten = paths.text(text)
        if rewritten != text:
            path.write_text(rewritten)
