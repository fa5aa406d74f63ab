"""Pod status as the local kubelet reports it: container states, exit codes, reasons, termination messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from m2f_devcluster.emulator.defaults import now_rfc3339

if TYPE_CHECKING:
    from m2f_devcluster.kubelet.kubelet import ContainerRun, PodRun

logger = logging.getLogger("m2f_devcluster.kubelet.kubelet")


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N -> 128 + N


def record_exit(run: PodRun, container: ContainerRun) -> None:
    """The terminated state of an exited container: exit code, reason and termination message."""
    assert container.process is not None and container.process.returncode is not None
    code = exit_code(container.process.returncode)
    message = container.termination_path.read_bytes()[:4096].decode(errors="replace") \
        if container.termination_path.exists() else ""
    if not message.strip() and code != 0 and container.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        tail = container.log_path.read_bytes()[-2048:].decode(errors="replace").splitlines()[-80:]
        message = "\n".join(tail)
    container.terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                            "startedAt": container.started_at, "finishedAt": now_rfc3339(),
                            "containerID": f"local://{container.process.pid}"}
    if message.strip():
        container.terminated["message"] = container.paths.container_text(message.strip()) if container.paths else message.strip()
    logger.info("pod %s: container %s exited with %d", run.label, container.spec["name"], code)


def container_status(container: ContainerRun) -> dict:
    pid = container.process.pid if container.process else None
    if container.terminated is not None:
        state = {"terminated": container.terminated}
    elif container.process is not None:
        state = {"running": {"startedAt": container.started_at}}
    else:
        state = {"waiting": {"reason": "PodInitializing"}}
    return {"name": container.spec["name"], "image": container.spec.get("image", ""), "imageID": "",
            "containerID": f"local://{pid}" if pid else "", "ready": "running" in state,
            "started": "running" in state, "restartCount": container.restarts, "state": state,
            "lastState": {}}


def pod_status(run: PodRun, phase: str) -> dict:
    init_names = {c["name"] for c in run.pod["spec"].get("initContainers", [])}
    main = [c for c in run.containers if c.spec["name"] not in init_names]
    ready = phase == "Running" and all(c.terminated is None for c in main)
    now = now_rfc3339()

    def condition(kind: str, status: bool) -> dict:
        return {"type": kind, "status": "True" if status else "False", "lastProbeTime": None,
                "lastTransitionTime": now}

    status = {
        "phase": phase, "hostIP": "127.0.0.1", "podIP": run.pod_ip, "podIPs": [{"ip": run.pod_ip}],
        "startTime": run.started_at,
        "conditions": [condition("PodScheduled", True), condition("Initialized", phase != "Pending"),
                       condition("ContainersReady", ready), condition("Ready", ready)],
        "containerStatuses": [container_status(c) for c in main],
    }
    if init_names:
        status["initContainerStatuses"] = [container_status(c) for c in run.containers
                                           if c.spec["name"] in init_names]
    return status


def final_status(run: PodRun) -> dict:
    codes = [c.terminated["exitCode"] for c in run.containers if c.terminated is not None]
    failed = any(code != 0 for code in codes) or len(codes) < len(run.containers)
    return pod_status(run, "Failed" if failed else "Succeeded")
