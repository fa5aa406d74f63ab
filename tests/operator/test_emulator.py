"""API-emulator semantics through the official Kubernetes Python client (what kopf and the trainer rely on)."""

from __future__ import annotations

import json
import threading
import time

import kubernetes
import pytest
from emulator_helpers import GROUP, PLURAL, VERSION, pod, train, train_crd
from kubernetes.client.rest import ApiException


@pytest.fixture()
def core(k8s_client):
    return kubernetes.client.CoreV1Api(k8s_client)


@pytest.fixture()
def custom(k8s_client):
    kubernetes.client.ApiextensionsV1Api(k8s_client).create_custom_resource_definition(train_crd())
    return kubernetes.client.CustomObjectsApi(k8s_client)


def _error(call) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def _reason(exc: ApiException) -> str:
    return json.loads(exc.body)["reason"]


def _message(exc: ApiException) -> str:
    return json.loads(exc.body)["message"]


def test_create_sets_identity_and_takes_namespace_from_url(core):
    created = core.create_namespaced_config_map("default", {"metadata": {"name": "a"}, "data": {"k": "v"}})
    assert created.metadata.namespace == "default"
    assert len(created.metadata.uid) == 36 and created.metadata.creation_timestamp is not None
    assert created.metadata.generation == 1
    other = core.create_namespaced_config_map("kube-system", {"metadata": {"name": "b"}})
    # one global, monotonic resourceVersion counter across kinds and namespaces
    assert int(other.metadata.resource_version) > int(created.metadata.resource_version)
    listing = core.list_namespaced_config_map("default")
    assert [item.metadata.name for item in listing.items] == ["a"]
    assert int(listing.metadata.resource_version) >= int(other.metadata.resource_version)


def test_errors_are_status_objects_with_reasons(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    exists = _error(lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "a"}}))
    assert (exists.status, _reason(exists)) == (409, "AlreadyExists")
    missing = _error(lambda: core.read_namespaced_config_map("nope", "default"))
    assert (missing.status, _reason(missing)) == (404, "NotFound") and _message(missing) == 'configmaps "nope" not found'
    wrong_ns = _error(lambda: core.create_namespaced_config_map(
        "default", {"metadata": {"name": "c", "namespace": "kube-system"}}))
    assert wrong_ns.status == 400
    no_ns = _error(lambda: core.create_namespaced_config_map("ghost", {"metadata": {"name": "c"}}))
    assert (no_ns.status, _reason(no_ns)) == (404, "NotFound") and _message(no_ns) == 'namespaces "ghost" not found'
    bad_name = _error(lambda: core.create_namespaced_config_map("default", {"metadata": {"name": "Bad_Name"}}))
    assert (bad_name.status, _reason(bad_name)) == (422, "Invalid")
    # Pod validation a real server does: two volumes of one name (what a user volume named `dshm` would cause).
    volumes = [{"name": "dshm", "emptyDir": {}}, {"name": "dshm", "emptyDir": {}}]
    duplicate = _error(lambda: core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "x"}], "volumes": volumes}}))
    assert (duplicate.status, _reason(duplicate)) == (422, "Invalid")
    assert _message(duplicate) == 'Pod "p" is invalid: spec.volumes[1].name: Duplicate value: "dshm"'


def test_optimistic_concurrency_conflict_on_stale_resource_version(core):
    first = core.create_namespaced_config_map("default", {"metadata": {"name": "a"}, "data": {"k": "1"}})
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "2"}})
    stale = {"metadata": {"name": "a", "resourceVersion": first.metadata.resource_version}, "data": {"k": "3"}}
    conflict = _error(lambda: core.replace_namespaced_config_map("a", "default", stale))
    assert (conflict.status, _reason(conflict)) == (409, "Conflict")
    fresh = core.read_namespaced_config_map("a", "default")
    stale["metadata"]["resourceVersion"] = fresh.metadata.resource_version
    assert core.replace_namespaced_config_map("a", "default", stale).data == {"k": "3"}
    # a no-op write keeps the resourceVersion
    again = core.patch_namespaced_config_map("a", "default", {"data": {"k": "3"}})
    assert again.metadata.resource_version == core.read_namespaced_config_map("a", "default").metadata.resource_version


@pytest.mark.parametrize("selector, expected", [
    ("app=x", ["p1", "p2"]),
    ("app==x,tier=db", ["p2"]),
    ("app!=x", ["p3", "p4"]),
    ("tier in (db,web)", ["p2", "p3"]),
    ("tier notin (db)", ["p1", "p3", "p4"]),
    ("tier", ["p2", "p3"]),
    ("!tier", ["p1", "p4"]),
    ("app in (x, y), !tier", ["p1", "p4"]),
])
def test_label_selectors(core, selector, expected):
    for name, labels in {"p1": {"app": "x"}, "p2": {"app": "x", "tier": "db"}, "p3": {"app": "y", "tier": "web"},
                         "p4": {"app": "y"}}.items():
        core.create_namespaced_pod("default", pod(name, **labels))
    names = [p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items]
    assert names == expected


def test_field_selectors_name_namespace_phase(core, k8s_emulator):
    core.create_namespaced_pod("default", pod("a"))
    core.create_namespaced_pod("kube-system", pod("b"))
    core.patch_namespaced_pod_status("b", "kube-system", {"status": {"phase": "Running"}})
    everywhere = core.list_pod_for_all_namespaces
    assert [p.metadata.name for p in everywhere(field_selector="metadata.name=a").items] == ["a"]
    assert [p.metadata.name for p in everywhere(field_selector="metadata.namespace!=default").items] == ["b"]
    assert [p.metadata.name for p in everywhere(field_selector="status.phase=Running").items] == ["b"]
    assert [p.metadata.name for p in everywhere(field_selector="status.phase=Pending").items] == ["a"]


def test_status_subresource_is_separate_from_the_main_resource(custom):
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL,
                                                     dict(train("t1"), status={"phase": "Hacked"}))
    assert "status" not in created and created["metadata"]["generation"] == 1
    # main-resource writes ignore status; spec changes bump generation
    patched = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1",
                                                    {"spec": {"nodes": 3}, "status": {"phase": "Nope"}})
    assert patched["spec"]["nodes"] == 3 and "status" not in patched and patched["metadata"]["generation"] == 2
    # metadata-only changes do not bump generation
    labelled = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1",
                                                     {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 2
    # /status writes only change status, never spec, and never bump generation
    status = custom.patch_namespaced_custom_object_status(GROUP, VERSION, "default", PLURAL, "t1",
                                                          {"status": {"phase": "Running"}, "spec": {"nodes": 9}})
    assert status["status"] == {"phase": "Running"} and status["spec"]["nodes"] == 3
    assert status["metadata"]["generation"] == 2


def test_patch_flavours(core):
    core.create_namespaced_pod("default", {
        "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}},
        "spec": {"containers": [{"name": "one", "image": "x:1"}, {"name": "two", "image": "y:1"}]}})
    # strategic merge: containers merge by name
    core.patch_namespaced_pod("p", "default", {"spec": {"containers": [{"name": "two", "image": "y:2"}]}})
    images = [c.image for c in core.read_namespaced_pod("p", "default").spec.containers]
    assert images == ["x:1", "y:2"]
    # JSON patch (RFC 6902)
    core.patch_namespaced_pod("p", "default", [{"op": "remove", "path": "/metadata/labels/a"},
                                               {"op": "add", "path": "/metadata/labels/c", "value": "3"}])
    assert core.read_namespaced_pod("p", "default").metadata.labels == {"b": "2", "c": "3"}


def test_merge_patch_null_deletes_and_json_patch_errors(custom):
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, train("t1"))
    merged = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1",
                                                   {"spec": {"nodes": None}})
    assert merged["spec"] == {"experiment": {"a": 1}}
    immutable = _error(lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "t1", {"spec": {"experiment": None}}))  # the CRD's CEL rule
    assert (immutable.status, _reason(immutable)) == (422, "Invalid") and "immutable" in _message(immutable)
    bad = _error(lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "t1", [{"op": "replace", "path": "/spec/missing/x", "value": 1}],
        _content_type="application/json-patch+json"))
    assert bad.status == 422
    not_an_object = _error(lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "t1", [{"op": "remove", "path": "/spec"}]))  # as merge patch
    assert not_an_object.status == 400


def test_finalizers_block_deletion_until_removed(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["m2f.io/x"]}})
    core.delete_namespaced_config_map("f", "default")
    held = core.read_namespaced_config_map("f", "default")
    assert held.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": None}})
    assert _error(lambda: core.read_namespaced_config_map("f", "default")).status == 404


def test_pod_graceful_deletion_waits_for_the_kubelet(core):
    core.create_namespaced_pod("default", pod("bound", node="node-a"))
    core.create_namespaced_pod("default", pod("unbound"))
    core.delete_namespaced_pod("unbound", "default")  # never reached a node: gone at once
    assert _error(lambda: core.read_namespaced_pod("unbound", "default")).status == 404
    core.delete_namespaced_pod("bound", "default")
    terminating = core.read_namespaced_pod("bound", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 30
    core.delete_namespaced_pod("bound", "default", grace_period_seconds=0)  # what the kubelet (or --force) sends
    assert _error(lambda: core.read_namespaced_pod("bound", "default")).status == 404


def test_owner_reference_cascade_and_orphan(core, custom):
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, train("t1"))
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Mask2FormerTrain", "name": "t1",
           "uid": owner["metadata"]["uid"], "controller": True}
    core.create_namespaced_config_map("default", {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.create_namespaced_pod("default", dict(pod("worker"), metadata={"name": "worker", "ownerReferences": [ref]}))
    core.create_namespaced_config_map("default", {"metadata": {"name": "unrelated"}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t1")
    names = [cm.metadata.name for cm in core.list_namespaced_config_map("default").items]
    assert names == ["unrelated"] and core.list_namespaced_pod("default").items == []

    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, train("t2"))
    ref = dict(ref, name="t2", uid=owner["metadata"]["uid"])
    core.create_namespaced_config_map("default", {"metadata": {"name": "kept", "ownerReferences": [ref]}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "t2", propagation_policy="Orphan")
    kept = core.read_namespaced_config_map("kept", "default")
    assert not kept.metadata.owner_references


def test_crd_registers_discovery_and_its_deletion_removes_objects(k8s_client, custom):
    resources = kubernetes.client.CustomObjectsApi(k8s_client).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert by_name[PLURAL].kind == "Mask2FormerTrain" and by_name[PLURAL].short_names == ["m2ft"]
    assert f"{PLURAL}/status" in by_name
    groups = [g.name for g in kubernetes.client.ApisApi(k8s_client).get_api_versions().groups]
    assert GROUP in groups
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, train("t1"))
    crd_api = kubernetes.client.ApiextensionsV1Api(k8s_client)
    crd = crd_api.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    crd_api.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
    gone = _error(lambda: custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL))
    assert gone.status == 404


def test_watch_streams_changes_and_selector_transitions(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "w", "labels": {"app": "x"}}})
    listing = core.list_namespaced_config_map("default", label_selector="app=x")
    seen: list[tuple[str, str]] = []

    def consume():
        stream = kubernetes.watch.Watch().stream(
            core.list_namespaced_config_map, "default", label_selector="app=x",
            resource_version=listing.metadata.resource_version, timeout_seconds=5)
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 4:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    core.create_namespaced_config_map("default", {"metadata": {"name": "w2", "labels": {"app": "x"}}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "other", "labels": {"app": "y"}}})
    core.patch_namespaced_config_map("w", "default", {"data": {"k": "v"}})
    core.patch_namespaced_config_map("w2", "default", {"metadata": {"labels": {"app": "z"}}})  # leaves selection
    core.delete_namespaced_config_map("w", "default")
    thread.join(10)
    assert seen == [("ADDED", "w2"), ("MODIFIED", "w"), ("DELETED", "w2"), ("DELETED", "w")]


def test_watch_resumes_from_an_old_resource_version_and_times_out(core):
    start = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    core.delete_namespaced_config_map("a", "default")
    began = time.monotonic()
    events = [(e["type"], e["object"].metadata.name) for e in kubernetes.watch.Watch().stream(
        core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=1)]
    assert events == [("ADDED", "a"), ("DELETED", "a")]
    assert time.monotonic() - began < 15  # the server ended the stream at timeoutSeconds, not a client timeout


def test_events_leases_rbac_and_namespace_deletion(k8s_client, core):
    core.create_namespace({"metadata": {"name": "team"}})
    assert core.read_namespaced_service_account("default", "team").metadata.name == "default"
    core.create_namespaced_event("team", {"metadata": {"generateName": "ev-"}, "reason": "Created",
                                          "message": "m", "involvedObject": {"kind": "Pod", "name": "p"}})
    kubernetes.client.EventsV1Api(k8s_client).create_namespaced_event(
        "team", {"metadata": {"name": "e2"}, "reason": "X", "action": "Y", "eventTime": "2026-01-01T00:00:00.000000Z",
                 "reportingController": "m2f", "reportingInstance": "m2f-1", "regarding": {"kind": "Pod", "name": "p"}})
    kubernetes.client.CoordinationV1Api(k8s_client).create_namespaced_lease(
        "team", {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "me"}})
    rbac = kubernetes.client.RbacAuthorizationV1Api(k8s_client)
    rbac.create_namespaced_role("team", {"metadata": {"name": "r"}, "rules": [
        {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]}]})
    rbac.create_namespaced_role_binding("team", {"metadata": {"name": "rb"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}, "subjects": [
        {"kind": "ServiceAccount", "name": "default", "namespace": "team"}]})
    events = core.list_namespaced_event("team").items
    assert len(events) == 1 and events[0].metadata.name.startswith("ev-")
    core.delete_namespace("team")
    assert _error(lambda: core.read_namespace("team")).status == 404
    assert rbac.list_namespaced_role("team").items == []


@pytest.mark.asyncio
async def test_kmock_dsl_reactions_inject_faults_over_the_store(k8s_emulator_async):
    import aiohttp
    import kmock

    api = k8s_emulator_async
    url = f"{api.base_url}/api/v1/namespaces/default/configmaps"
    api["list", kmock.resource("v1/configmaps")][:1] << 503  # one failed list, then the store again
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"metadata": {"name": "a"}}) as created:
            assert created.status == 201
        async with session.get(url) as failing:
            assert failing.status == 503
        async with session.get(url) as listed:
            assert [item["metadata"]["name"] for item in (await listed.json())["items"]] == ["a"]
    assert len(list(api["post"])) == 1  # kmock's request log stays available for assertions


def test_dry_run_changes_nothing_and_rbac_names_may_hold_colons(k8s_client, core):
    crds = kubernetes.client.ApiextensionsV1Api(k8s_client)
    crds.create_custom_resource_definition(train_crd(), dry_run="All")
    assert _error(lambda: crds.read_custom_resource_definition(f"{PLURAL}.{GROUP}")).status == 404
    groups = [g.name for g in kubernetes.client.ApisApi(k8s_client).get_api_versions().groups]
    assert GROUP not in groups  # a dry-run CRD registers nothing
    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}}, dry_run="All")
    assert core.list_namespaced_config_map("default").items == []
    rbac = kubernetes.client.RbacAuthorizationV1Api(k8s_client)
    rbac.create_cluster_role({"metadata": {"name": "mask2former:worker"}, "rules": []})
    assert rbac.read_cluster_role("mask2former:worker").metadata.name == "mask2former:worker"


def test_watch_from_a_version_older_than_the_history_is_gone():
    from m2f_devcluster.emulator import ApiError, ObjectStore

    store = ObjectStore(watch_history=5)
    configmaps = store.find_type("", "v1", "configmaps")
    first = store.create(configmaps, "default", {"metadata": {"name": "first"}})["metadata"]["resourceVersion"]
    for index in range(10):
        store.create(configmaps, "default", {"metadata": {"name": f"cm{index}"}})
    with pytest.raises(ApiError) as gone:
        store.watch(configmaps, "default", first)
    assert (gone.value.code, gone.value.reason) == (410, "Expired")
    recent = store.watch(configmaps, "default", str(store.revision - 2))
    assert [recent.queue.get_nowait()["object"]["metadata"]["name"] for _ in range(2)] == ["cm8", "cm9"]


def test_watch_gone_over_http_is_an_error_event_in_a_200_stream():
    import urllib.request

    from m2f_devcluster.emulator import run_emulator

    with run_emulator(watch_history=3) as api:
        for index in range(6):
            api.call(lambda store, index=index: store.create(
                store.find_type("", "v1", "configmaps"), "default", {"metadata": {"name": f"c{index}"}}))
        url = f"{api.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1&timeoutSeconds=2"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
            events = [json.loads(line) for line in response.read().splitlines()]
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]


def test_watch_list_initial_events_end_with_a_bookmark(k8s_emulator, core):
    import urllib.request

    core.create_namespaced_config_map("default", {"metadata": {"name": "a"}})
    url = (f"{k8s_emulator.url}/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true"
           "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1")
    with urllib.request.urlopen(url, timeout=10) as response:
        events = [json.loads(line) for line in response.read().splitlines()]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
