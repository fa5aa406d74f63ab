"""kopf itself against the emulator: discovery, list+watch, status-subresource progress storage,
finalizers, Events and owner-reference garbage collection. kopf runs as a subprocess: handlers
registered in-process would land in kopf's global registry and leak into other tests' operators."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import kubernetes
from emulator_helpers import GROUP, PLURAL, VERSION, train, train_crd

OPERATOR = textwrap.dedent("""
    import kopf, kubernetes

    @kopf.on.startup()
    def configure(settings, **_):
        settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
        settings.posting.level = 20
        settings.watching.server_timeout = 10

    @kopf.on.create("mask2former.io", "v1alpha1", "mask2formertrains")
    def created(spec, name, namespace, body, patch, **_):
        kubernetes.config.load_kube_config()
        child = {"metadata": {"name": f"{name}-cfg"}, "data": {"nodes": str(spec["nodes"])}}
        kopf.adopt(child, owner=body)
        kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, child)
        patch.status["phase"] = "Created"
        kopf.info(body, reason="ChildCreated", message=f"{name}-cfg")

    @kopf.on.delete("mask2former.io", "v1alpha1", "mask2formertrains")
    def deleted(**_):
        pass
""")


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_kopf_operator_runs_against_the_emulator(k8s_emulator, k8s_client, tmp_path):
    kubernetes.client.ApiextensionsV1Api(k8s_client).create_custom_resource_definition(train_crd())
    custom, core = kubernetes.client.CustomObjectsApi(k8s_client), kubernetes.client.CoreV1Api(k8s_client)
    script = tmp_path / "operator.py"
    script.write_text(OPERATOR)
    env = dict(os.environ, KUBECONFIG=str(k8s_emulator.kubeconfig))
    with open(tmp_path / "kopf.log", "wb") as log:
        operator = subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "-A", str(script)],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, train("t1"))
        _wait(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1")
              .get("status", {}).get("phase") == "Created", timeout=90)
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1")
        assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        assert core.read_namespaced_config_map("t1-cfg", "default").metadata.owner_references[0].name == "t1"
        events = _wait(lambda: [e for e in core.list_namespaced_event("default").items if e.reason == "ChildCreated"])
        assert events[0].involved_object.uid == obj["metadata"]["uid"]
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1")
        # kopf's delete handler runs, removes its finalizer, the object goes and GC takes its child
        _wait(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"])
        _wait(lambda: not core.list_namespaced_config_map("default").items)
    finally:
        operator.terminate()
        operator.wait(30)
