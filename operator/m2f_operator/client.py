"""Kubernetes API access for the reconciler: apply a Plan, read owners, post Events; every call counted."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import kubernetes
from kubernetes.client.rest import ApiException

from m2f_operator import metrics
from m2f_operator.builders import meta
from m2f_operator.builders.scheduling import POD_GROUP_APIS
from m2f_operator.policies import creation
from m2f_operator.policies.creation import CreateBlocked
from m2f_operator.status import Event

CREATED, EXISTS = "created", "exists"


def load_api_client() -> kubernetes.client.ApiClient:
    """In-cluster service account when there is one, else the kubeconfig (dev cluster, tests)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    configuration = kubernetes.client.Configuration()
    # The default location is read at import time; KUBECONFIG may be set later (tests, dev cluster).
    kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


class Cluster:
    """The few API calls the reconciler makes. A create is idempotent only for children this resource controls."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    @staticmethod
    def _count(verb: str, resource: str) -> None:
        metrics.API_REQUESTS.labels(verb, resource).inc()

    def get_resource(self, plural: str, namespace: str, name: str) -> dict | None:
        self._count("get", plural)
        try:
            return self.custom.get_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, manifest: dict) -> str | CreateBlocked:
        """CREATED, EXISTS (ours: its controller is the manifest's owner, by uid), or why it could not be."""
        kind, namespace, name = manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        self._count("create", kind.lower() + "s")
        if manifest["apiVersion"] in POD_GROUP_APIS:
            create, read = self._custom_object_calls(*POD_GROUP_APIS[manifest["apiVersion"]])
        elif manifest["apiVersion"] == meta.API_VERSION:  # a sweep's trial
            create, read = self._custom_object_calls(meta.GROUP, meta.VERSION, meta.KINDS[kind].plural)
        else:
            create, read = {
                "Pod": (self.core.create_namespaced_pod, self.core.read_namespaced_pod),
                "Service": (self.core.create_namespaced_service, self.core.read_namespaced_service),
                "ConfigMap": (self.core.create_namespaced_config_map, self.core.read_namespaced_config_map),
            }[kind]
        try:
            create(namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                if exc.status is not None and exc.status >= 500 or exc.status in (None, 429):
                    raise  # the API is unwell: kopf's or the resync's retry
                return creation.refused(kind, name, exc.status, exc.body, manifest["apiVersion"])
            self._count("get", kind.lower() + "s")
            try:
                # Raw JSON: only its ownerReferences matter, and typed models reject some servers' replies.
                existing = json.loads(read(name, namespace, _preload_content=False).data)
            except ApiException as read_exc:
                if read_exc.status == 404:  # deleted in between: the next reconcile creates it
                    return creation.foreign(kind, name, {"kind": "owner", "name": "(just deleted)", "uid": "?"})
                raise
            if creation.controller_uid(existing) == creation.controller_uid(manifest):
                return EXISTS
            return creation.foreign(kind, name, creation.controller_ref(existing))
        return CREATED

    def _custom_object_calls(self, group: str, version: str, plural: str):
        """(create, read) shaped like the core API's, for a gang scheduler's PodGroup."""
        def create(namespace, body):
            return self.custom.create_namespaced_custom_object(group, version, namespace, plural, body)

        def read(name, namespace, _preload_content=True):
            return self.custom.get_namespaced_custom_object(group, version, namespace, plural, name,
                                                            _preload_content=_preload_content)
        return create, read

    def list_resources(self, plural: str, namespace: str, label_selector: str) -> list[dict]:
        self._count("list", plural)
        listing = self.custom.list_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, plural,
                                                            label_selector=label_selector)
        return list(listing.get("items") or [])

    def delete_pod(self, namespace: str, name: str, force: bool) -> None:
        self._count("delete", "pods")
        # Force (grace 0) only for pods whose node is gone: the kubelet will never confirm their end.
        options = kubernetes.client.V1DeleteOptions(grace_period_seconds=0 if force else None)
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, plural: str, namespace: str, name: str, patch: dict) -> None:
        self._count("patch", f"{plural}/status")
        self.custom.patch_namespaced_custom_object_status(
            meta.GROUP, meta.VERSION, namespace, plural, name, {"status": patch}
        )

    def delete_resource(self, plural: str, namespace: str, name: str) -> None:
        self._count("delete", plural)
        try:
            # Background propagation: the garbage collector removes the pods, Service and ConfigMap.
            self.custom.delete_namespaced_custom_object(
                meta.GROUP, meta.VERSION, namespace, plural, name,
                body=kubernetes.client.V1DeleteOptions(propagation_policy="Background"),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(self, body: dict, event: Event) -> None:
        self._count("create", "events")
        md = body["metadata"]
        now = datetime.now(timezone.utc)
        self.core.create_namespaced_event(md["namespace"], build_event(body, event, now))


def build_event(body: dict, event: Event, now: datetime) -> dict:
    md = body["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", meta.API_VERSION), "kind": body["kind"],
            "name": md["name"], "namespace": md["namespace"], "uid": md.get("uid", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": meta.MANAGED_BY},
        "reportingComponent": meta.MANAGED_BY,
        "reportingInstance": os.environ.get("HOSTNAME", meta.MANAGED_BY),
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
