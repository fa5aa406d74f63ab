"""The local kubelet against the API emulator: real processes, real pod status, deletion, lost nodes."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.rest import ApiException
from polling import wait_for

from m2f_devcluster.emulator import run_emulator
from m2f_devcluster.kubelet import PathMap, rewrite_cluster_dns, run_kubelet
from m2f_devcluster.kubelet.addresses import POD_NETWORK

NODES = ("node-a", "node-b")


@pytest.fixture()
def cluster(tmp_path):
    """Emulator + kubelet (two nodes, it schedules) sharing a data dir; yields (core api, kubelet, data dir)."""
    data_dir = tmp_path / "data"
    with run_emulator(log_dir=data_dir / "logs") as api:
        client = kubernetes.config.new_client_from_config(config_file=str(api.kubeconfig))
        with run_kubelet(api.url, data_dir, NODES, kubeconfig=api.kubeconfig, watch_timeout=5) as kubelet:
            yield kubernetes.client.CoreV1Api(client), kubelet, data_dir
        client.close()


def _pod(name: str, script: str, *, grace: int = 30, env: list | None = None, volumes: list | None = None,
         mounts: list | None = None, owner_uid: str | None = None, policy: str = "File",
         labels: dict | None = None) -> dict:
    metadata: dict = {"name": name, "labels": labels or {}}
    if owner_uid:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid,
                                        "controller": True}]
    return {"metadata": metadata, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
        "containers": [{"name": "main", "image": "ignored:1", "command": ["python", "-c", script],
                        "env": env or [], "volumeMounts": mounts or [], "terminationMessagePolicy": policy}],
        "volumes": volumes or []}}


def _wait(core, name: str, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = core.read_namespaced_pod(name, "default")
        except ApiException as exc:
            if exc.status != 404:
                raise
            last = None
        if predicate(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"pod {name} did not reach the expected state; last seen: {last}")


def _terminated(pod):
    statuses = (pod.status.container_statuses or []) if pod else []
    return statuses[0].state.terminated if statuses and statuses[0].state.terminated else None


def _pid(data_dir: Path, name: str) -> int:
    pid_files = list((data_dir / "pods" / "default").glob(f"{name}-*/pid-main"))
    assert pid_files, f"no pid file for {name}"
    return int(pid_files[0].read_text())


def _process_state(pid: int) -> str | None:
    # the process can be reaped between open() and read(): that read fails with ESRCH
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_pod_runs_with_env_volumes_and_reports_failure(cluster):
    core, _, data_dir = cluster
    core.create_namespaced_config_map("default", {"metadata": {"name": "exp"}, "data": {
        "spec.yaml": "results_dir: /results/run1\n", "lr": "0.1"}})
    script = (
        "import os, sys, json\n"
        "spec = open(sys.argv[1]).read()\n"
        "open(os.environ['MSG_PATH'], 'w').write('error: bad lr')\n"
        "print(json.dumps({'env': {k: os.environ[k] for k in ('POD', 'NS', 'IP', 'LR', 'MASTER_ADDR', 'MASTER_PORT')}, 'kubeconfig': os.environ.get('KUBECONFIG'), 'spec': spec, 'cwd': os.getcwd()}))\n"
        "sys.exit(3)\n")
    pod = _pod("failing", script, env=[
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "LR", "valueFrom": {"configMapKeyRef": {"name": "exp", "key": "lr"}}},
        {"name": "MASTER_ADDR", "value": "failing-0.job.default.svc"},
        {"name": "MASTER_PORT", "value": "29500"},
        {"name": "MSG_PATH", "value": "/dev/termination-log"},
    ], volumes=[{"name": "experiment", "configMap": {"name": "exp"}},
                {"name": "results", "persistentVolumeClaim": {"claimName": "results"}}],
        mounts=[{"name": "experiment", "mountPath": "/etc/m2f"}, {"name": "results", "mountPath": "/results"}])
    pod["spec"]["containers"][0]["command"].append("/etc/m2f/spec.yaml")
    core.create_namespaced_pod("default", pod)
    done = _wait(core, "failing", lambda p: p and p.status.phase == "Failed")
    terminated = _terminated(done)
    assert (terminated.exit_code, terminated.reason, terminated.message) == (3, "Error", "error: bad lr")
    # Its API address is its own, outside loopback (a real endpoints controller rejects loopback); the process
    # itself sees 127.0.0.1.
    assert done.spec.node_name in NODES and done.status.start_time
    assert ipaddress.ip_address(done.status.pod_ip) in ipaddress.ip_network(POD_NETWORK)
    output = json.loads(core.read_namespaced_pod_log("failing", "default"))
    env = output["env"]
    assert (env["POD"], env["NS"], env["IP"], env["LR"]) == ("failing", "default", "127.0.0.1", "0.1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] != "29500"
    assert output["kubeconfig"] is None  # no API credentials in pods
    # the configMap file was materialised, with the PVC mount path rewritten to its local folder
    assert output["spec"] == f"results_dir: {data_dir / 'pvc' / 'default' / 'results'}/run1\n"
    assert (data_dir / "pvc" / "default" / "results").is_dir()


def test_pod_succeeds_through_running(cluster):
    core, _, _ = cluster
    phases = []
    core.create_namespaced_pod("default", _pod("ok", "import time; time.sleep(4.0); print('done')"))
    _wait(core, "ok", lambda p: phases.append(p.status.phase) or p.status.phase == "Succeeded")
    assert "Running" in phases
    terminated = _terminated(core.read_namespaced_pod("ok", "default"))
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert core.read_namespaced_pod_log("ok", "default") == "done\n"


def test_binding_spreads_each_owners_pods_over_the_nodes(cluster):
    """Round robin alone put a gang's two workers on one node whenever another job's pod was bound in between
    (seen in an e2e run under load); like kube-scheduler's default spreading, an owner's pods go to the nodes
    holding fewest of them."""
    core, _, _ = cluster
    sleeper = "import time; time.sleep(60)"
    pods = (("a-0", "uid-a"), ("b-0", "uid-b"), ("a-1", "uid-a"), ("b-1", "uid-b"))
    for name, owner in pods:  # back to back: a pod may come before the previous one's binding is seen
        core.create_namespaced_pod("default", _pod(name, sleeper, grace=0, owner_uid=owner))
    for name, _ in pods:
        _wait(core, name, lambda p: p is not None and bool(p.spec.node_name))
    placed = {p.metadata.name: p.spec.node_name for p in core.list_namespaced_pod("default").items}
    assert {placed["a-0"], placed["a-1"]} == set(NODES), placed
    assert {placed["b-0"], placed["b-1"]} == set(NODES), placed


def test_log_tail_is_the_message_on_error_when_asked(cluster):
    core, _, _ = cluster
    script = "import sys; print('working'); print('error: dataset.train.panoptic_json: no such file', file=sys.stderr); sys.exit(2)"
    core.create_namespaced_pod("default", _pod("fallback", script, policy="FallbackToLogsOnError"))
    done = _wait(core, "fallback", lambda p: p and p.status.phase == "Failed")
    terminated = _terminated(done)
    assert terminated.exit_code == 2 and terminated.message.splitlines()[-1] == (
        "error: dataset.train.panoptic_json: no such file")


def test_delete_sends_sigterm_and_confirms_after_exit(cluster, tmp_path):
    core, _, _ = cluster
    marker = tmp_path / "got-sigterm"
    script = ("import signal, sys, time\n"
              f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').write('x'), sys.exit(143)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    core.create_namespaced_pod("default", _pod("graceful", script, grace=20))
    _wait(core, "graceful", lambda p: p and p.status.phase == "Running")
    deadline = time.monotonic() + 30  # the handler is installed once the pod printed "ready"
    while "ready" not in core.read_namespaced_pod_log("graceful", "default") and time.monotonic() < deadline:
        time.sleep(0.1)
    began = time.monotonic()
    core.delete_namespaced_pod("graceful", "default")
    _wait(core, "graceful", lambda p: p is None, timeout=15)
    # Well under the 20 s grace: the process exited on its SIGTERM, it was not killed at the deadline.
    assert marker.read_text() == "x" and time.monotonic() - began < 18


def test_grace_period_expiry_kills_and_force_delete_kills_at_once(cluster):
    core, _, data_dir = cluster
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(120)\n"
    core.create_namespaced_pod("default", _pod("stubborn", stubborn, grace=1))
    core.create_namespaced_pod("default", _pod("forced", stubborn, grace=30))
    _wait(core, "stubborn", lambda p: p and p.status.phase == "Running")
    _wait(core, "forced", lambda p: p and p.status.phase == "Running")
    stubborn_pid, forced_pid = _pid(data_dir, "stubborn"), _pid(data_dir, "forced")
    deadline = time.monotonic() + 30  # SIGTERM is ignored once the pod printed "up"
    while "up" not in core.read_namespaced_pod_log("stubborn", "default") and time.monotonic() < deadline:
        time.sleep(0.1)
    core.delete_namespaced_pod("stubborn", "default")
    _wait(core, "stubborn", lambda p: p is None, timeout=15)
    assert _process_state(stubborn_pid) in (None, "Z")
    core.delete_namespaced_pod("forced", "default", grace_period_seconds=0)
    _wait(core, "forced", lambda p: p is None, timeout=5)
    deadline = time.monotonic() + 10
    while _process_state(forced_pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_state(forced_pid) in (None, "Z")


def test_lost_node_never_acknowledges_termination(cluster):
    core, kubelet, data_dir = cluster
    core.create_namespaced_pod("default", dict(_pod("stranded", "import time; time.sleep(120)", grace=1)))
    running = _wait(core, "stranded", lambda p: p and p.status.phase == "Running")
    pid = _pid(data_dir, "stranded")
    core.patch_node(running.spec.node_name, {"metadata": {"annotations": {"m2f.dev/lost": "true"}}})
    deadline = time.monotonic() + 10
    while _process_state(pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_state(pid) == "T"  # frozen, like a partitioned machine
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the kubelet posts the node status right after freezing the pods
        node = core.read_node(running.spec.node_name)
        if {c.type: c.status for c in node.status.conditions}["Ready"] == "Unknown":
            break
        time.sleep(0.1)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "Unknown"
    core.delete_namespaced_pod("stranded", "default")
    time.sleep(2.5)  # well past the 1 s grace period: still Terminating
    stuck = core.read_namespaced_pod("stranded", "default")
    assert stuck.metadata.deletion_timestamp is not None and stuck.status.phase == "Running"
    core.delete_namespaced_pod("stranded", "default", grace_period_seconds=0)
    _wait(core, "stranded", lambda p: p is None, timeout=5)
    deadline = time.monotonic() + 10
    while _process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_state(pid) in (None, "Z")
    # new pods are no longer scheduled onto the lost node
    core.create_namespaced_pod("default", _pod("fresh", "pass"))
    fresh = _wait(core, "fresh", lambda p: p and p.status.phase == "Succeeded")
    assert fresh.spec.node_name != running.spec.node_name


def test_missing_configmap_waits_then_starts(cluster):
    core, _, _ = cluster
    pod = _pod("waits", "import os; print(os.environ['X'])", env=[
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "x"}}}])
    core.create_namespaced_pod("default", pod)
    pending = _wait(core, "waits", lambda p: p and p.status.container_statuses)
    assert pending.status.phase == "Pending"
    assert pending.status.container_statuses[0].state.waiting.reason == "CreateContainerConfigError"
    core.create_namespaced_config_map("default", {"metadata": {"name": "late"}, "data": {"x": "hello"}})
    _wait(core, "waits", lambda p: p and p.status.phase == "Succeeded")
    assert core.read_namespaced_pod_log("waits", "default") == "hello\n"


def test_env_from_a_secret_is_decoded_and_a_missing_secret_waits(cluster):
    """`envFrom.secretRef` as S3 credentials reach the trainer: every key of the Secret's base64 `data` becomes
    a variable (a later `env` entry wins); until the Secret exists the pod waits in CreateContainerConfigError."""
    core, _, _ = cluster
    names = ("AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "S3_AWS_DEFAULT_REGION", "AWS_DEFAULT_REGION")
    script = f"import os; print(*(os.environ[name] for name in {names!r}))"
    pod = _pod("from-secret", script, env=[{"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"}])
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "s3"}},
                                               {"secretRef": {"name": "s3"}, "prefix": "S3_"}]
    core.create_namespaced_pod("default", pod)
    pending = _wait(core, "from-secret", lambda p: p and p.status.container_statuses)
    waiting = pending.status.container_statuses[0].state.waiting
    assert pending.status.phase == "Pending" and waiting.reason == "CreateContainerConfigError", pending.status
    assert waiting.message == 'secret "s3" not found'
    # The API serves a Secret's values base64-encoded in `data` (kubectl turns a manifest's `stringData` into it).
    core.create_namespaced_secret("default", {"metadata": {"name": "s3"}, "data": {
        "AWS_ENDPOINT_URL": base64.b64encode(b"http://127.0.0.1:9000").decode(),
        "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"k3y/with+base64=chars").decode(),
        "AWS_DEFAULT_REGION": base64.b64encode(b"us-east-1").decode()}})
    _wait(core, "from-secret", lambda p: p and p.status.phase == "Succeeded")
    assert core.read_namespaced_pod_log("from-secret", "default") == (
        "http://127.0.0.1:9000 k3y/with+base64=chars us-east-1 eu-west-1\n")


def test_ports_are_remapped_per_job(cluster):
    core, _, _ = cluster
    script = "import os; print(os.environ['MASTER_PORT'])"
    env = [{"name": "MASTER_PORT", "value": "29500"}]
    pods = {"a0": ("uid-a", "0", "0"), "a1": ("uid-a", "0", "1"), "a0-retry": ("uid-a", "1", "0"),
            "b0": ("uid-b", "0", "0")}
    for name, (owner, attempt, index) in pods.items():
        labels = {"m2f.io/attempt": attempt, "m2f.io/replica-index": index}
        core.create_namespaced_pod("default", _pod(name, script, env=env, owner_uid=owner, labels=labels))
    ports = {}
    for name in pods:
        _wait(core, name, lambda p: p and p.status.phase == "Succeeded")
        ports[name] = int(core.read_namespaced_pod_log(name, "default"))
    assert ports["a0"] == ports["a1"]  # one gang shares its rendezvous port
    assert len({ports["a0"], ports["a0-retry"], ports["b0"]}) == 3  # another attempt or job: another port
    assert 29500 not in ports.values()


@pytest.mark.parametrize("value, expected", [
    ("train-worker-0.train.default.svc", "127.0.0.1"),
    ("train-worker-0.train.default.svc.cluster.local", "127.0.0.1"),
    ("http://metrics.ns.svc:9091/metrics", "http://127.0.0.1:9091/metrics"),
    ("example.com", "example.com"),
])
def test_cluster_dns_names_resolve_locally(value, expected):
    assert rewrite_cluster_dns(value) == expected


def test_path_map_rewrites_longest_prefix_in_args_and_files(tmp_path):
    paths = PathMap()
    paths.add("/results", tmp_path / "r")
    paths.add("/results/special", tmp_path / "s")
    paths.add("/etc/m2f", tmp_path / "etc")
    assert paths.path("/results/special/x") == f"{tmp_path}/s/x"
    assert paths.path("train.results_dir=/results/a") == f"train.results_dir={tmp_path}/r/a"
    assert paths.path("/resultsXYZ") == "/resultsXYZ"
    text = "results_dir: /results/a\ndata: [\"/etc/m2f/x\", /other/results]\n"
    assert paths.text(text) == f"results_dir: {tmp_path}/r/a\ndata: [\"{tmp_path}/etc/x\", /other/results]\n"
    assert os.path.isabs(paths.path("/etc/m2f"))
    # A termination message names files as the container wrote them: mapped back, as a real node reports them.
    written = json.dumps({"artifacts": {"checkpoint": f"{tmp_path}/s/x.pth", "other": f"{tmp_path}/rx/y"}})
    assert json.loads(paths.container_text(written))["artifacts"] == {"checkpoint": "/results/special/x.pth",
                                                                      "other": f"{tmp_path}/rx/y"}


def test_kubectl_logs_follow_and_wide_listing(cluster, tmp_path):
    import shutil
    import subprocess
    import sys

    core, kubelet, data_dir = cluster
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    kubeconfig = str(kubelet.kubelet.kubeconfig)
    script = "import time\nfor i in range(3):\n    print('line', i)\n    time.sleep(0.5)\n"
    core.create_namespaced_pod("default", _pod("chatty", script))
    _wait(core, "chatty", lambda p: p and p.status.phase == "Running")
    followed = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kube-cache"), "logs", "-f", "chatty"], capture_output=True,
                              text=True, timeout=30)
    assert followed.stdout == "line 0\nline 1\nline 2\n"  # returned once the pod finished, nothing lost
    wide = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "kube-cache"), "get", "pod", "chatty", "-o", "wide", "--no-headers"],
                          capture_output=True, text=True, timeout=30).stdout.split()
    assert wide[2] == "Completed" and ipaddress.ip_address(wide[5]).version == 4 and wide[6] in NODES


def test_init_containers_run_first_and_logs_have_tails(cluster):
    core, _, _ = cluster
    pod = _pod("staged", "print('a'); print('b'); print('c')")
    pod["spec"]["initContainers"] = [{"name": "init", "image": "x", "command": ["python", "-c", "print('init done')"]}]
    core.create_namespaced_pod("default", pod)
    done = _wait(core, "staged", lambda p: p and p.status.phase == "Succeeded")
    assert done.status.init_container_statuses[0].state.terminated.reason == "Completed"
    assert core.read_namespaced_pod_log("staged", "default", container="init") == "init done\n"
    assert core.read_namespaced_pod_log("staged", "default", tail_lines=2) == "b\nc\n"


def test_pod_deleted_while_the_watch_was_down_is_stopped_after_the_relist(tmp_path):
    data_dir = tmp_path / "data"
    with run_emulator(log_dir=data_dir / "logs", watch_history=5) as api:
        client = kubernetes.config.new_client_from_config(config_file=str(api.kubeconfig))
        core = kubernetes.client.CoreV1Api(client)
        with run_kubelet(api.url, data_dir, NODES, watch_timeout=5):
            core.create_namespaced_pod("default", _pod("orphan", "import time; time.sleep(120)"))
            _wait(core, "orphan", lambda p: p and p.status.phase == "Running")
            pid = _pid(data_dir, "orphan")

            def drop_watches_and_delete(store):
                # The kubelet's watch ends, the pod goes, and enough happens that resuming is 410 Gone.
                store.close_watches()
                pods, configmaps = store.find_type("", "v1", "pods"), store.find_type("", "v1", "configmaps")
                store.delete(pods, "default", "orphan", {"gracePeriodSeconds": 0})
                for index in range(10):
                    store.create(configmaps, "default", {"metadata": {"name": f"noise-{index}"}})

            api.call(drop_watches_and_delete)
            deadline = time.monotonic() + 20
            while _process_state(pid) not in (None, "Z") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _process_state(pid) in (None, "Z")
        client.close()


def test_thread_count_defaults_to_the_cpu_limit_or_a_share_of_the_machine(cluster, monkeypatch):
    core, _, _ = cluster
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    script = "import os; print(os.environ['OMP_NUM_THREADS'])"
    limited = _pod("limited", script)
    limited["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1500m"}}
    explicit = _pod("explicit", script, env=[{"name": "OMP_NUM_THREADS", "value": "3"}])
    for pod in (limited, explicit, _pod("shared", script)):
        core.create_namespaced_pod("default", pod)
    threads = {}
    for name in ("limited", "explicit", "shared"):
        _wait(core, name, lambda p: p and p.status.phase == "Succeeded")
        threads[name] = int(core.read_namespaced_pod_log(name, "default"))
    assert threads["limited"] == 2 and threads["explicit"] == 3
    assert threads["shared"] == max(1, (os.cpu_count() or 1) // len(NODES))


def test_a_program_that_cannot_start_fails_the_pod_with_start_error(cluster, tmp_path):
    core, _, _ = cluster
    not_executable = tmp_path / "script.txt"
    not_executable.write_text("print('never runs')\n")
    pod = _pod("unstartable", "")
    pod["spec"]["containers"][0]["command"] = [str(not_executable)]
    core.create_namespaced_pod("default", pod)
    failed = _wait(core, "unstartable", lambda p: p and p.status.phase == "Failed")
    terminated = _terminated(failed)
    assert (terminated.exit_code, terminated.reason) == (128, "StartError")
    assert "Permission denied" in terminated.message


def test_pod_network_reaches_a_pod_by_its_address_and_declared_port(cluster):
    """What the operator does for progress: GET http://<pod IP>:<declared port>/ through the dev cluster's pod
    network, which lands on the loopback port the kubelet gave the pod's process."""
    core, kubelet, _ = cluster
    script = ("import http.server, os\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    def do_GET(self):\n"
              "        body = ('hello from ' + self.path).encode()\n"
              "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
              "        self.wfile.write(body)\n"
              "http.server.HTTPServer(('127.0.0.1', int(os.environ['WEB_PORT'])), H).serve_forever()\n")
    core.create_namespaced_pod("default", _pod("web", script, env=[{"name": "WEB_PORT", "value": "8080"}]))
    running = _wait(core, "web", lambda p: p and p.status.phase == "Running")
    proxy = urllib.request.build_opener(urllib.request.ProxyHandler(
        {"http": f"http://127.0.0.1:{kubelet.kubelet.pod_network.port}"}))
    url = f"http://{running.status.pod_ip}:8080/metrics?x=1"

    def answer():
        with contextlib.suppress(OSError):
            return proxy.open(url, timeout=5).read()
        return None

    assert wait_for(answer, 30, "the pod's server through the pod network") == b"hello from /metrics?x=1"
    with pytest.raises(urllib.error.HTTPError) as missing:
        proxy.open("http://198.19.255.254:8080/", timeout=5)
    assert missing.value.code == 502
    core.delete_namespaced_pod("web", "default", grace_period_seconds=0)
