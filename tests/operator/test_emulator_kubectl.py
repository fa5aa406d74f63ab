"""Real kubectl 1.33 against the emulator: apply, get (tables and JSON), watch, delete, api-resources, CRDs."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import pytest
import yaml
from emulator_helpers import train, train_crd


@pytest.fixture()
def crd_applied(kubectl, tmp_path):
    path = tmp_path / "crd.yaml"
    path.write_text(yaml.safe_dump(train_crd()))
    result = kubectl("apply", "-f", str(path))
    assert "customresourcedefinition.apiextensions.k8s.io/mask2formertrains.mask2former.io created" in result.stdout
    return path


def _write(tmp_path, name: str, *manifests: dict):
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(manifests))
    return str(path)


def test_apply_get_and_reapply_a_configmap(kubectl, tmp_path):
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"app": "m2f"}},
                "data": {"spec.yaml": "a: 1\n"}}
    assert "configmap/cfg created" in kubectl("apply", "-f", _write(tmp_path, "cm.yaml", manifest)).stdout
    manifest["data"]["spec.yaml"] = "a: 2\n"
    assert "configmap/cfg configured" in kubectl("apply", "-f", _write(tmp_path, "cm.yaml", manifest)).stdout
    assert "configmap/cfg unchanged" in kubectl("apply", "-f", _write(tmp_path, "cm.yaml", manifest)).stdout
    got = json.loads(kubectl("get", "configmap", "cfg", "-o", "json").stdout)
    assert got["data"] == {"spec.yaml": "a: 2\n"} and got["metadata"]["namespace"] == "default"
    assert kubectl("get", "cm", "-l", "app=m2f", "-o", "name").stdout.split() == ["configmap/cfg"]
    assert kubectl("get", "cm", "-l", "app!=m2f", "-o", "name").stdout.split() == []


def test_crd_then_custom_resources_with_printer_columns(kubectl, crd_applied, tmp_path):
    assert "mask2formertrain.mask2former.io/demo created" in kubectl(
        "apply", "-f", _write(tmp_path, "t.yaml", train("demo", nodes=2))).stdout
    table = kubectl("get", "mask2formertrains").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODES", "AGE"]
    assert table[1].split()[:2] == ["demo", "2"]  # no phase yet: an empty cell
    assert kubectl("get", "m2ft", "-o", "name").stdout.split() == ["mask2formertrain.mask2former.io/demo"]
    assert kubectl("get", "mask2former", "-o", "name").stdout.split() == ["mask2formertrain.mask2former.io/demo"]
    kubectl("patch", "m2ft", "demo", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Running"}}')
    assert kubectl("get", "m2ft", "demo", "--no-headers").stdout.split()[:3] == ["demo", "Running", "2"]
    resources = kubectl("api-resources", "--api-group=mask2former.io").stdout
    assert "mask2formertrains" in resources and "m2ft" in resources and "Mask2FormerTrain" in resources
    assert "mask2formertrain.mask2former.io \"demo\" deleted" in kubectl("delete", "m2ft", "demo").stdout
    assert kubectl("get", "m2ft", "-o", "name").stdout.strip() == ""


def test_get_watch_sees_changes_until_timeout(kubectl, k8s_emulator, tmp_path):
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}, "data": {"k": "0"}}
    kubectl("apply", "-f", _write(tmp_path, "w.yaml", manifest))
    watcher = subprocess.Popen([*kubectl.argv, "get", "cm", "w", "-w",
                                "--output-watch-events", "-o", "jsonpath={.type} {.object.data.k}{\"\\n\"}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in watcher.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=20) == "ADDED 0"
        kubectl("patch", "cm", "w", "--type=merge", "-p", '{"data":{"k":"1"}}')
        assert lines.get(timeout=20) == "MODIFIED 1"
        kubectl("delete", "cm", "w")
        assert lines.get(timeout=20).startswith("DELETED")
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_delete_waits_for_finalizers_and_pod_grace(kubectl, k8s_emulator, tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "busybox:1"}]}}
    kubectl("apply", "-f", _write(tmp_path, "pod.yaml", pod))
    kubectl("delete", "pod", "p", "--wait=false")
    shown = json.loads(kubectl("get", "pod", "p", "-o", "json").stdout)
    assert shown["metadata"]["deletionTimestamp"] and shown["metadata"]["deletionGracePeriodSeconds"] == 30
    assert kubectl("get", "pod", "p", "--no-headers").stdout.split()[2] == "Terminating"
    began = time.monotonic()
    kubectl("delete", "pod", "p", "--force", "--grace-period=0")
    assert kubectl("get", "pods", "-o", "name").stdout.strip() == ""
    assert time.monotonic() - began < 20


def test_unknown_resource_and_missing_object_messages(kubectl):
    missing = kubectl("get", "configmap", "nope", check=False)
    assert missing.returncode == 1 and 'configmaps "nope" not found' in missing.stderr
    unknown = kubectl("get", "frobnicators", check=False)
    assert unknown.returncode == 1 and 'the server doesn\'t have a resource type "frobnicators"' in unknown.stderr


def test_imperative_create_commands_send_protobuf_the_emulator_decodes(kubectl):
    assert kubectl("create", "namespace", "team").stdout.strip() == "namespace/team created"
    kubectl("create", "configmap", "cfg", "-n", "team", "--from-literal=lr=0.1", "--from-literal=name=two words")
    kubectl("create", "secret", "generic", "creds", "-n", "team", "--from-literal=token=s3cr3t")
    kubectl("create", "serviceaccount", "worker", "-n", "team")
    cm = json.loads(kubectl("get", "cm", "cfg", "-n", "team", "-o", "json").stdout)
    assert cm["data"] == {"lr": "0.1", "name": "two words"}
    secret = json.loads(kubectl("get", "secret", "creds", "-n", "team", "-o", "json").stdout)
    assert secret["data"] == {"token": "czNjcjN0"} and secret["type"] == "Opaque"
    assert kubectl("get", "sa", "-n", "team", "-o", "name").stdout.split() == [
        "serviceaccount/default", "serviceaccount/worker"]
    refused = kubectl("create", "deployment", "web", "--image=nginx", check=False)
    assert refused.returncode == 1 and "use `kubectl apply -f`" in refused.stderr


def test_cel_immutability_rule_rejects_changes_to_the_experiment(kubectl, crd_applied, tmp_path):
    kubectl("apply", "-f", _write(tmp_path, "t.yaml", train("demo")))
    changed = kubectl("patch", "m2ft", "demo", "--type=merge", "-p", '{"spec":{"experiment":{"a":2}}}', check=False)
    assert changed.returncode == 1
    assert ('The Mask2FormerTrain "demo" is invalid: spec.experiment: Invalid value: "object": '
            "spec.experiment is immutable") in changed.stderr
    kubectl("patch", "m2ft", "demo", "--type=merge", "-p", '{"spec":{"suspend":true}}')  # other fields may change
    assert json.loads(kubectl("get", "m2ft", "demo", "-o", "json").stdout)["spec"]["experiment"] == {"a": 1}
