"""The emulator's object store: API-server semantics (versions, generations, status, deletion, GC, watches).

Everything here is synchronous and confined to the emulator's event loop: an operation either
completes with its watch events published or raises `ApiError` having changed nothing.
"""

from __future__ import annotations

import collections
import copy
import datetime
import itertools
import re
import uuid
from collections.abc import Iterator

from m2f_devcluster.emulator import defaults
from m2f_devcluster.emulator.errors import ApiError, conflict, invalid, not_found, qualified
from m2f_devcluster.emulator.patches import PatchError, apply_patch
from m2f_devcluster.emulator.resources import (
    BUILTIN_TYPES,
    ResourceType,
    immutability_violations,
    types_from_crd,
)
from m2f_devcluster.emulator.selectors import parse_field_selector, parse_label_selector
from m2f_devcluster.emulator.watches import Watcher, WatchEvent

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CRD_TYPE = next(t for t in BUILTIN_TYPES if t.plural == "customresourcedefinitions")
NAMESPACE_TYPE = next(t for t in BUILTIN_TYPES if t.plural == "namespaces")
SERVICE_ACCOUNT_TYPE = next(t for t in BUILTIN_TYPES if t.plural == "serviceaccounts")
NODE_TYPE = next(t for t in BUILTIN_TYPES if t.plural == "nodes")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
WATCH_HISTORY = 10_000  # events kept for watches resuming from an older resourceVersion (410 Gone beyond)


class ObjectStore:
    """All objects by (group, plural) -> (namespace, name), one global resourceVersion counter."""

    def __init__(self, scheduler_nodes: tuple[str, ...] = (), watch_history: int = WATCH_HISTORY):
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict]] = collections.defaultdict(dict)
        self._by_uid: dict[str, tuple[ResourceType, str, str]] = {}
        self._revision = 0
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=watch_history)
        self._watchers: set[Watcher] = set()
        self._service_ips = itertools.count(10)
        self._scheduler_nodes = tuple(scheduler_nodes)
        self._next_node = itertools.cycle(self._scheduler_nodes) if scheduler_nodes else None
        for rtype in BUILTIN_TYPES:
            self.register_type(rtype)
        for namespace in INITIAL_NAMESPACES:
            self.create(NAMESPACE_TYPE, None, {"metadata": {"name": namespace}})
        for node in self._scheduler_nodes:
            self.create(NODE_TYPE, None, defaults.node(node))

    # -- types ------------------------------------------------------------------------------------

    def register_type(self, rtype: ResourceType) -> None:
        self.types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.types.get((group, version, plural))

    def served_types(self) -> list[ResourceType]:
        return list(self.types.values())

    @property
    def revision(self) -> int:
        return self._revision

    # -- reads ------------------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._objects[rtype.storage_key].get((namespace or "", name))
        if obj is None:
            raise not_found(rtype, name)
        return self._served(rtype, obj)

    def list(self, rtype: ResourceType, namespace: str | None, label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[list[dict], str]:
        labels, fields = parse_label_selector(label_selector), parse_field_selector(field_selector)
        items = [self._served(rtype, obj) for obj in self._iter(rtype, namespace)
                 if labels(obj) and fields(obj)]
        items.sort(key=lambda obj: (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]))
        return items, str(self._revision)

    def _iter(self, rtype: ResourceType, namespace: str | None) -> Iterator[dict]:
        for (obj_namespace, _), obj in self._objects[rtype.storage_key].items():
            if namespace is None or obj_namespace == namespace:
                yield obj

    @staticmethod
    def _served(rtype: ResourceType, obj: dict) -> dict:
        served = copy.deepcopy(obj)
        served["apiVersion"] = rtype.api_version
        return served

    # -- create -----------------------------------------------------------------------------------

    def create(self, rtype: ResourceType, namespace: str | None, body: dict, dry_run: bool = False) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if obj.get("kind") not in (None, rtype.kind):
            raise ApiError(400, "BadRequest", f"the kind in the data ({obj['kind']}) does not match "
                                              f"the expected kind ({rtype.kind})")
        namespace = self._check_namespace(rtype, namespace, meta)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not name:
            raise invalid(rtype, name, "metadata.name: Required value: name or generateName is required")
        # RBAC objects only need path-segment names ("system:aggregate-to-edit"); the rest RFC 1123.
        path_segment = rtype.group == "rbac.authorization.k8s.io" and name not in (".", "..") and not set(name) & set("/%")
        if len(name) > 253 or not (path_segment or _DNS_SUBDOMAIN.match(name)):
            raise invalid(rtype, name, f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 "
                                       "subdomain must consist of lower case alphanumeric characters, '-' or '.'")
        if (namespace or "", name) in self._objects[rtype.storage_key]:
            raise ApiError(409, "AlreadyExists", f'{qualified(rtype)} "{name}" already exists',
                           {"name": name, "group": rtype.group, "kind": rtype.plural})
        obj["kind"] = rtype.kind
        obj["apiVersion"] = rtype.api_version
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=defaults.now_rfc3339(), generation=1)
        for volatile in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"):
            meta.pop(volatile, None)
        if namespace:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if rtype.has_status and rtype.group not in ("", "apps", "batch", "policy", "apiextensions.k8s.io"):
            obj.pop("status", None)  # custom resources with a status subresource ignore it on create
        self._apply_create_defaults(rtype, obj)
        if rtype == CRD_TYPE:
            self._register_crd(obj, dry_run=dry_run)
        if dry_run:
            return self._served(rtype, obj)
        self._store(rtype, obj, "ADDED", old=None)
        if rtype == NAMESPACE_TYPE:
            self.create(SERVICE_ACCOUNT_TYPE, name, {"metadata": {"name": "default"}})
        return self._served(rtype, obj)

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, meta: dict) -> str | None:
        if not rtype.namespaced:
            return None
        body_namespace = meta.get("namespace")
        if namespace and body_namespace and body_namespace != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                                              "the namespace sent on the request")
        namespace = namespace or body_namespace
        if not namespace:
            raise ApiError(400, "BadRequest", f"{rtype.kind} is namespaced: a namespace is required")
        ns_obj = self._objects[NAMESPACE_TYPE.storage_key].get(("", namespace))
        if ns_obj is None:
            raise not_found(NAMESPACE_TYPE, namespace)
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"{rtype.plural} \"{meta.get('name', '')}\" is forbidden: unable "
                                             f"to create new content in namespace {namespace} because it "
                                             "is being terminated")
        return namespace

    def _apply_create_defaults(self, rtype: ResourceType, obj: dict) -> None:
        if rtype.group == "" and rtype.plural == "pods":
            # Pod validation a real API server does, where this project's operator could get it wrong.
            seen: set[str] = set()
            for index, container in enumerate((obj.get("spec") or {}).get("containers") or []):
                for env_index, var in enumerate(container.get("env") or []):
                    if not _ENV_NAME.match(str(var.get("name", ""))):
                        raise invalid(rtype, obj["metadata"]["name"],
                                      f'spec.containers[{index}].env[{env_index}].name: Invalid value: '
                                      f'"{var.get("name")}": a valid environment variable name must consist of '
                                      "alphabetic characters, digits, '_', '-', or '.', and must not start with a digit")
            for index, volume in enumerate((obj.get("spec") or {}).get("volumes") or []):
                if volume.get("name") in seen:
                    raise invalid(rtype, obj["metadata"]["name"],
                                  f'spec.volumes[{index}].name: Duplicate value: "{volume.get("name")}"')
                seen.add(volume.get("name"))
            defaults.pod(obj)
            if not obj["spec"].get("nodeName") and self._next_node is not None:
                obj["spec"]["nodeName"] = next(self._next_node)
                defaults.set_pod_condition(obj, "PodScheduled", "True")
        elif rtype.group == "" and rtype.plural == "services":
            defaults.service(obj, self._allocate_service_ip)
        elif rtype.group == "" and rtype.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        elif rtype.group == "" and rtype.plural == "secrets":
            obj["type"] = obj.get("type") or "Opaque"
        elif rtype == CRD_TYPE:
            defaults.crd_status(obj)

    def _allocate_service_ip(self) -> str:
        index = next(self._service_ips)
        return f"10.96.{index // 250}.{index % 250 + 1}"

    def _register_crd(self, crd: dict, dry_run: bool = False) -> None:
        """Validate a CRD and (unless a dry run) serve its versions instead of the previous ones."""
        name = crd["metadata"]["name"]
        try:
            new_types = types_from_crd(crd)
        except (ValueError, KeyError, TypeError) as exc:
            raise invalid(CRD_TYPE, name, f"spec: {exc}") from exc
        spec = crd["spec"]
        expected = f"{spec['names']['plural']}.{spec['group']}"
        if name != expected:
            raise invalid(CRD_TYPE, name, f"metadata.name: Invalid value: {name!r}: must be spec.names.plural"
                                          f"+\".\"+spec.group ({expected!r})")
        for rtype in new_types:
            existing = self.find_type(rtype.group, rtype.version, rtype.plural)
            if existing is not None and existing in BUILTIN_TYPES:
                raise invalid(CRD_TYPE, name, f"spec.group: {rtype.group}/{rtype.plural} is a built-in resource")
        if dry_run:
            return
        for key in [key for key, t in self.types.items() if (t.group, t.plural) == (spec["group"], spec["names"]["plural"])]:
            del self.types[key]
        for rtype in new_types:
            self.register_type(rtype)

    # -- update / patch ---------------------------------------------------------------------------

    def update(self, rtype: ResourceType, namespace: str | None, name: str, body: dict,
               subresource: str | None = None, dry_run: bool = False) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        body_name = (body.get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({body_name}) does not match the name "
                                              f"on the URL ({name})")
        return self._replace(rtype, namespace, name, body, subresource, dry_run)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, patch: object,
              content_type: str, subresource: str | None = None, dry_run: bool = False) -> dict:
        current = self._objects[rtype.storage_key].get((namespace or "", name))
        if current is None:
            raise not_found(rtype, name)
        try:
            patched = apply_patch(current, patch, content_type)
        except PatchError as exc:
            raise ApiError(422 if "cannot be applied" in str(exc) else 400, "BadRequest", str(exc)) from exc
        # A resourceVersion inside the patch is a precondition, like on PUT; absent means unconditional.
        patch_meta = patch.get("metadata") if isinstance(patch, dict) else None
        if not (isinstance(patch_meta, dict) and patch_meta.get("resourceVersion")):
            patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self._replace(rtype, namespace, name, patched, subresource, dry_run)

    def _replace(self, rtype: ResourceType, namespace: str | None, name: str, body: dict,
                 subresource: str | None, dry_run: bool) -> dict:
        key = (namespace or "", name)
        current = self._objects[rtype.storage_key].get(key)
        if current is None:
            raise not_found(rtype, name)
        wanted_version = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_version and wanted_version != current["metadata"]["resourceVersion"]:
            raise conflict(rtype, name, "the object has been modified; please apply your changes to the "
                                        "latest version and try again")
        if subresource == "status":
            if not rtype.has_status:
                raise not_found(rtype, name)
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        elif subresource is not None:
            raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on "
                                                    f"{rtype.plural}/{subresource}")
        else:
            new = self._merge_main_resource(rtype, current, body)
            violations = immutability_violations(rtype, current, new)
            if violations:
                raise invalid(rtype, name, "; ".join(violations))
        if new == current:
            return self._served(rtype, current)  # no-op writes keep the resourceVersion, emit no event
        if rtype == CRD_TYPE:
            self._register_crd(new, dry_run=dry_run)
        if dry_run:
            return self._served(rtype, new)
        self._store(rtype, new, "MODIFIED", old=current)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not self._awaits_kubelet(rtype, new):
            self._remove(rtype, new)
        return self._served(rtype, new)

    def _merge_main_resource(self, rtype: ResourceType, current: dict, body: dict) -> dict:
        new = copy.deepcopy(body)
        new["kind"], new["apiVersion"] = rtype.kind, rtype.api_version
        meta, old_meta = new.setdefault("metadata", {}), current["metadata"]
        for immutable in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                          "generation", "resourceVersion", "name", "namespace"):
            if immutable in old_meta:
                meta[immutable] = old_meta[immutable]
            else:
                meta.pop(immutable, None)
        if rtype.has_status:
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        if rtype.group == "" and rtype.plural == "pods":
            # Pod specs are immutable apart from a few fields; the node binding never changes here.
            new.setdefault("spec", {})["nodeName"] = current.get("spec", {}).get("nodeName")
            if new["spec"]["nodeName"] is None:
                del new["spec"]["nodeName"]

        def content(obj: dict) -> dict:
            return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}

        if content(new) != content(current):
            meta["generation"] = old_meta.get("generation", 1) + 1
        return new

    def bind_pod(self, namespace: str, name: str, bound: dict) -> None:
        """The binding subresource: set spec.nodeName once (what a scheduler does)."""
        pod_type = self.find_type("", "v1", "pods")
        assert pod_type is not None
        current = self._objects[pod_type.storage_key].get((namespace, name))
        if current is None:
            raise not_found(pod_type, name)
        new = copy.deepcopy(current)
        new["spec"]["nodeName"] = bound["spec"]["nodeName"]
        new["status"] = copy.deepcopy(bound.get("status", {}))
        self._store(pod_type, new, "MODIFIED", old=current)

    # -- delete -----------------------------------------------------------------------------------

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, options: dict | None = None,
               dry_run: bool = False) -> dict:
        options = options or {}
        current = self._objects[rtype.storage_key].get((namespace or "", name))
        if current is None:
            raise not_found(rtype, name)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
            raise conflict(rtype, name, f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                        f"UID in object meta: {current['metadata']['uid']}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise conflict(rtype, name, "the object has been modified; please apply your changes to the "
                                        "latest version and try again")
        if dry_run:
            return self._served(rtype, current)
        propagation = options.get("propagationPolicy") or "Background"
        if propagation == "Orphan":
            self._orphan_dependents(current["metadata"]["uid"])
        grace = self._grace_period(rtype, current, options.get("gracePeriodSeconds"))
        meta = current["metadata"]
        needs_wait = bool(meta.get("finalizers")) or grace > 0
        if not needs_wait:
            if rtype == NAMESPACE_TYPE:
                return self._delete_namespace(current)
            return self._remove(rtype, current)
        already_terminating = bool(meta.get("deletionTimestamp"))
        new = copy.deepcopy(current)
        previous_grace = meta.get("deletionGracePeriodSeconds")
        if not already_terminating or (previous_grace is not None and grace < previous_grace):
            deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=grace)
            new["metadata"]["deletionTimestamp"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            if not already_terminating:
                new["metadata"]["generation"] = meta.get("generation", 1) + 1
            self._store(rtype, new, "MODIFIED", old=current)
        if rtype == NAMESPACE_TYPE:
            return self._delete_namespace(new)
        return self._served(rtype, new)

    @staticmethod
    def _awaits_kubelet(rtype: ResourceType, obj: dict) -> bool:
        """A pod on a node is removed only when its kubelet confirms (a delete with grace 0)."""
        return rtype.group == "" and rtype.plural == "pods" and (obj["metadata"].get("deletionGracePeriodSeconds") or 0) > 0

    @staticmethod
    def _grace_period(rtype: ResourceType, obj: dict, requested: object) -> int:
        if not (rtype.group == "" and rtype.plural == "pods"):
            return 0
        # Pods that never reached a node, or already finished, go at once (as in the API server).
        phase = (obj.get("status") or {}).get("phase")
        if not obj.get("spec", {}).get("nodeName") or phase in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, int(requested))
        return int(obj.get("spec", {}).get("terminationGracePeriodSeconds", 30))

    def _remove(self, rtype: ResourceType, obj: dict) -> dict:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        self._objects[rtype.storage_key].pop(key, None)
        self._by_uid.pop(meta["uid"], None)
        self._revision += 1
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = str(self._revision)
        self._publish(WatchEvent(self._revision, rtype.storage_key, "DELETED", final))
        if rtype == CRD_TYPE:
            self._unregister_crd(obj)
        self._collect_dependents(meta["uid"])
        if meta.get("namespace"):
            self._finish_namespace_if_empty(meta["namespace"])
        return self._served(rtype, final)

    def _unregister_crd(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group"), (spec.get("names") or {}).get("plural")
        for key in [key for key, t in self.types.items() if (t.group, t.plural) == (group, plural)]:
            rtype = self.types.pop(key)
            for obj in list(self._objects[rtype.storage_key].values()):
                self._remove(rtype, obj)

    def _collect_dependents(self, owner_uid: str) -> None:
        """Background garbage collection: delete objects whose owners are all gone."""
        for rtype, obj in self._all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            if any(ref.get("uid") in self._by_uid for ref in refs):
                continue
            if obj["metadata"].get("deletionTimestamp"):
                continue
            meta = obj["metadata"]
            if (meta.get("namespace", ""), meta["name"]) in self._objects[rtype.storage_key]:
                self.delete(rtype, meta.get("namespace"), meta["name"])

    def _orphan_dependents(self, owner_uid: str) -> None:
        for rtype, obj in self._all_objects():
            refs = obj["metadata"].get("ownerReferences") or []
            kept = [ref for ref in refs if ref.get("uid") != owner_uid]
            if len(kept) != len(refs):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = kept
                self._store(rtype, new, "MODIFIED", old=obj)

    def _all_objects(self) -> list[tuple[ResourceType, dict]]:
        by_key = {rtype.storage_key: rtype for rtype in self.types.values()}
        return [(by_key[storage_key], obj) for storage_key, objects in self._objects.items()
                if storage_key in by_key for obj in list(objects.values())]

    def _delete_namespace(self, namespace_obj: dict) -> dict:
        name = namespace_obj["metadata"]["name"]
        if not namespace_obj["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(namespace_obj)
            new["metadata"]["deletionTimestamp"] = defaults.now_rfc3339()
            new["status"] = {"phase": "Terminating"}
            self._store(NAMESPACE_TYPE, new, "MODIFIED", old=namespace_obj)
            namespace_obj = new
        for rtype, obj in self._all_objects():
            meta = obj["metadata"]
            if rtype.namespaced and meta.get("namespace") == name and not meta.get("deletionTimestamp"):
                if (name, meta["name"]) in self._objects[rtype.storage_key]:
                    self.delete(rtype, name, meta["name"])
        self._finish_namespace_if_empty(name)
        return self._served(NAMESPACE_TYPE, namespace_obj)

    def _finish_namespace_if_empty(self, name: str) -> None:
        namespace_obj = self._objects[NAMESPACE_TYPE.storage_key].get(("", name))
        if namespace_obj is None or not namespace_obj["metadata"].get("deletionTimestamp"):
            return
        if namespace_obj["metadata"].get("finalizers"):
            return
        if any(rtype.namespaced and obj["metadata"].get("namespace") == name for rtype, obj in self._all_objects()):
            return
        self._remove(NAMESPACE_TYPE, namespace_obj)

    # -- storage and watches ----------------------------------------------------------------------

    def _store(self, rtype: ResourceType, obj: dict, event_type: str, old: dict | None) -> None:
        self._revision += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._revision)
        self._objects[rtype.storage_key][(meta.get("namespace", ""), meta["name"])] = obj
        self._by_uid[meta["uid"]] = (rtype, meta.get("namespace", ""), meta["name"])
        self._publish(WatchEvent(self._revision, rtype.storage_key, event_type, copy.deepcopy(obj),
                                 copy.deepcopy(old) if old is not None else None))

    def _publish(self, event: WatchEvent) -> None:
        self._history.append(event)
        for watcher in list(self._watchers):
            watcher.offer(event)

    def watch(self, rtype: ResourceType, namespace: str | None, resource_version: str | None,
              label_selector: str | None = None, field_selector: str | None = None,
              initial_events_bookmark: bool = False) -> Watcher:
        """Open a watch. No/"0" resourceVersion: synthetic ADDED events for the current state first
        (then, for `sendInitialEvents`, a BOOKMARK annotated k8s.io/initial-events-end); otherwise every
        change after that version (410 Gone if it is older than the kept history)."""
        watcher = Watcher(rtype, namespace, parse_label_selector(label_selector),
                          parse_field_selector(field_selector))
        if resource_version in (None, "", "0"):
            for obj in sorted(self._iter(rtype, namespace), key=lambda o: int(o["metadata"]["resourceVersion"])):
                watcher.offer(WatchEvent(int(obj["metadata"]["resourceVersion"]), rtype.storage_key, "ADDED", obj))
            if initial_events_bookmark:
                watcher.queue.put_nowait({"type": "BOOKMARK", "object": {
                    "kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": {
                        "resourceVersion": str(self._revision),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}})
        else:
            try:
                since = int(resource_version)
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"invalid resourceVersion {resource_version!r}") from exc
            oldest_kept = self._history[0].revision if self._history else self._revision + 1
            if since + 1 < oldest_kept and len(self._history) == self._history.maxlen:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest_kept - 1})")
            for event in self._history:
                if event.revision > since:
                    watcher.offer(event)
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watches(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        self._watchers.clear()
