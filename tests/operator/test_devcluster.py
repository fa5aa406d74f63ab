"""`m2f dev up|status|down` round trip with real kubectl, and the DevCluster context manager."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from control_planes import BACKENDS, require_real_control_plane

from m2f_devcluster import DevCluster
from m2f_devcluster.cli import PID_FILE
from m2f_trainer.cli import main as m2f

REPO = Path(__file__).resolve().parents[2]

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
CRDS = {"mask2formertrains.mask2former.io", "mask2formerevaluates.mask2former.io",
        "mask2formerinferences.mask2former.io", "mask2formerexports.mask2former.io",
        "mask2formersweeps.mask2former.io"}


def _kubectl(kubeconfig, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cache = ["--cache-dir", str(Path(kubeconfig).parent / "kube-cache")]  # kubectl keys its cache by host:port
    result = subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *cache, *args], capture_output=True, text=True,
                            timeout=60)
    if check and result.returncode:
        raise AssertionError(f"kubectl {args}: {result.stderr}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return not open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):  # gone, or reaped between open and read
        return False


def _wait_phase(kubeconfig, name: str, phase: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = _kubectl(kubeconfig, "get", "pod", name, "-o", "json", check=False)
        if result.returncode == 0 and json.loads(result.stdout)["status"].get("phase") == phase:
            return json.loads(result.stdout)
        time.sleep(0.2)
    raise AssertionError(f"pod {name} never reached {phase}")


@pytest.mark.e2e
@pytest.mark.parametrize("control_plane", BACKENDS)
def test_dev_up_status_down_round_trip(tmp_path, capsys, control_plane):
    if control_plane == "real":
        require_real_control_plane()
    data_dir = tmp_path / "dev"
    assert m2f(["dev", "up", "--data-dir", str(data_dir), "--control-plane", control_plane, "--timeout", "180"]) == 0
    try:
        out = capsys.readouterr().out.strip().splitlines()
        assert f"({control_plane} control plane)" in out[0]
        assert out[-1] == f"export KUBECONFIG={data_dir / 'kubeconfig'}"
        kubeconfig = data_dir / "kubeconfig"
        daemon_pid = int((data_dir / PID_FILE).read_text())
        assert m2f(["dev", "up", "--data-dir", str(data_dir)]) == 0  # idempotent
        assert "already running" in capsys.readouterr().out

        crds = set(_kubectl(kubeconfig, "get", "crd", "-o", "name").stdout.replace(
            "customresourcedefinition.apiextensions.k8s.io/", "").split())
        assert crds == CRDS
        nodes = _kubectl(kubeconfig, "get", "nodes", "--no-headers").stdout.splitlines()
        assert [line.split()[:2] for line in nodes] == [["dev-node-0", "Ready"], ["dev-node-1", "Ready"]]
        assert _kubectl(kubeconfig, "get", "mask2former").returncode == 0

        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello"}, "spec": {
            "restartPolicy": "Never", "containers": [
                {"name": "main", "image": "python:3", "command": ["python", "-c", "print('hello from the dev cluster')"]}]}}
        (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
        _kubectl(kubeconfig, "apply", "-f", str(tmp_path / "pod.yaml"))
        _wait_phase(kubeconfig, "hello", "Succeeded")
        # On `real` the API server proxies this to the local kubelet's /containerLogs.
        assert _kubectl(kubeconfig, "logs", "hello").stdout == "hello from the dev cluster\n"
        if control_plane == "real":
            # The CRDs for servers without CEL apply with plain `kubectl apply` (1.33's client-side validation
            # refuses x-kubernetes-validations on 1.20; a null in an enum broke the server's conversion).
            applied = _kubectl(kubeconfig, "apply", "-f", str(REPO / "crds" / "pre-1.25")).stdout
            assert applied.count("customresourcedefinition.apiextensions.k8s.io/") == len(CRDS), applied
            _gpu_hungry_train_stays_pending_with_the_schedulers_message(kubeconfig, tmp_path)

        assert m2f(["dev", "status", "--data-dir", str(data_dir)]) == 0
        status = capsys.readouterr().out
        assert "dev cluster running" in status and "1 Succeeded" in status
        operator_pid = json.loads((data_dir / "devcluster.ready.json").read_text())["operator_pid"]
        assert f"operator: running (pid {operator_pid})" in status
        os.kill(operator_pid, 9)  # the daemon supervises the operator: a crash is restarted
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert m2f(["dev", "status", "--data-dir", str(data_dir)]) == 0
            status = capsys.readouterr().out
            if "operator: running (pid" in status and f"(pid {operator_pid})" not in status:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the operator was not restarted: {status}")

        sleeper = dict(pod, metadata={"name": "sleeper"})
        sleeper["spec"] = dict(pod["spec"], containers=[dict(pod["spec"]["containers"][0],
                                                             command=["python", "-c", "import time; time.sleep(300)"])])
        (tmp_path / "sleeper.yaml").write_text(yaml.safe_dump(sleeper))
        _kubectl(kubeconfig, "apply", "-f", str(tmp_path / "sleeper.yaml"))
        _wait_phase(kubeconfig, "sleeper", "Running")
        sleeper_pid = int(next((data_dir / "pods" / "default").glob("sleeper-*/pid-main")).read_text())
        operator_pid = int(status.split("operator: running (pid ")[1].split(")")[0])
        assert _alive(sleeper_pid) and _alive(operator_pid)
    finally:
        assert m2f(["dev", "down", "--data-dir", str(data_dir)]) == 0
    assert "dev cluster stopped" in capsys.readouterr().out
    for pid in (daemon_pid, operator_pid, sleeper_pid):
        assert not _alive(pid), f"process {pid} outlived `m2f dev down`"
    assert m2f(["dev", "status", "--data-dir", str(data_dir)]) == 3
    assert m2f(["dev", "down", "--data-dir", str(data_dir)]) == 0  # stopping twice is fine


def _gpu_hungry_train_stays_pending_with_the_schedulers_message(kubeconfig: Path, tmp_path: Path) -> None:
    train = yaml.safe_load((REPO / "examples" / "demo" / "train.yaml").read_text())
    train["metadata"]["name"] = "too-big"
    train["spec"]["gpusPerNode"] = 16  # every dev node has nvidia.com/gpu: 8
    train["spec"]["experiment"].setdefault("train", {}).pop("num_gpus", None)
    (tmp_path / "too-big.yaml").write_text(yaml.safe_dump(train))
    _kubectl(kubeconfig, "apply", "-f", str(tmp_path / "too-big.yaml"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads(_kubectl(kubeconfig, "get", "m2ftrain", "too-big", "-o", "json").stdout).get("status", {})
        scheduled = next((c for c in status.get("conditions", []) if c["type"] == "Scheduled"), None)
        if scheduled:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no Scheduled condition: {status}")
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable", scheduled
    assert "Insufficient nvidia.com/gpu" in scheduled["message"], scheduled
    assert status["phase"] in ("Created", "Pending"), status
    _kubectl(kubeconfig, "delete", "m2ftrain", "too-big", "--wait=false")


def test_dev_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        m2f(["dev", "launch"])
    assert exit_info.value.code == 2
    assert m2f(["dev", "up", "--data-dir", str(tmp_path), "--nodes", "0"]) == 2
    assert "error: --nodes must be at least 1" in capsys.readouterr().err


@pytest.mark.e2e
def test_dev_cluster_context_manager_runs_operator_and_pods(tmp_path):
    with DevCluster(tmp_path / "dev", nodes=("n0",)) as cluster:
        assert cluster.runtime.operator.running
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ctx"}, "spec": {
            "restartPolicy": "Never", "containers": [
                {"name": "m2f", "image": "x", "command": ["python", "-c", "import time; time.sleep(60)"]}]}}
        (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
        _kubectl(cluster.kubeconfig, "apply", "-f", str(tmp_path / "pod.yaml"))
        _wait_phase(cluster.kubeconfig, "ctx", "Running")
        pid = cluster.pod_pid("default", "ctx")
        os.kill(pid, 9)  # a crashed worker: the kubelet reports it
        failed = _wait_phase(cluster.kubeconfig, "ctx", "Failed")
        assert failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
        cluster.kill_operator()
        assert not cluster.runtime.operator.running
        cluster.start_operator()
        assert cluster.runtime.operator.running
