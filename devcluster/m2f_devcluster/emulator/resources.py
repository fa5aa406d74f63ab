"""Resource types served by the emulator: the built-in table and the ones CRDs register."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served resource (group/version/plural) with what discovery and the store need to know."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # CRD printer columns: ({"name","type","jsonPath",...}, ...) as in the CRD version entry.
    printer_columns: tuple[dict, ...] = field(default=(), compare=False, hash=False)
    # (field path, message) of CEL transition rules `self == oldSelf`: the only rule form enforced.
    immutable_rules: tuple[tuple[tuple[str, ...], str], ...] = field(default=(), compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are stored per (group, plural): every served version sees the same objects."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


def _core(plural: str, kind: str, *, namespaced: bool = True, short: tuple[str, ...] = (),
          sub: tuple[str, ...] = (), categories: tuple[str, ...] = ()) -> ResourceType:
    return ResourceType("", "v1", plural, kind, namespaced, kind.lower(), short, categories, sub)


def _grouped(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
             short: tuple[str, ...] = (), sub: tuple[str, ...] = ()) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, kind.lower(), short, (), sub)


# What the operator, the trainer's progress reporter, kopf (peering, events) and kubectl touch.
BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _core("namespaces", "Namespace", namespaced=False, short=("ns",), sub=("status",)),
    _core("nodes", "Node", namespaced=False, short=("no",), sub=("status",)),
    _core("pods", "Pod", short=("po",), sub=("status", "log", "binding", "eviction"), categories=("all",)),
    _core("services", "Service", short=("svc",), sub=("status",), categories=("all",)),
    _core("endpoints", "Endpoints", short=("ep",)),
    _core("configmaps", "ConfigMap", short=("cm",)),
    _core("secrets", "Secret"),
    _core("serviceaccounts", "ServiceAccount", short=("sa",)),
    _core("persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), sub=("status",)),
    _core("persistentvolumes", "PersistentVolume", namespaced=False, short=("pv",), sub=("status",)),
    _core("events", "Event", short=("ev",)),
    _grouped("events.k8s.io", "v1", "events", "Event", short=("ev",)),
    _grouped("coordination.k8s.io", "v1", "leases", "Lease"),
    _grouped("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _grouped("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _grouped("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _grouped("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _grouped("apps", "v1", "deployments", "Deployment", short=("deploy",), sub=("status", "scale")),
    _grouped("batch", "v1", "jobs", "Job", sub=("status",)),
    _grouped("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced=False, short=("pc",)),
    _grouped("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), sub=("status",)),
    _grouped("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", short=("smon",)),
    _grouped("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short=("crd", "crds"), sub=("status",)),
)


def types_from_crd(crd: dict) -> list[ResourceType]:
    """The resource types (one per served version) that a CustomResourceDefinition registers."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not group or not plural or not kind:
        raise ValueError("spec.group, spec.names.plural and spec.names.kind are required")
    result = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = tuple(sorted((version.get("subresources") or {}).keys()))
        result.append(ResourceType(
            group=group,
            version=version["name"],
            plural=plural,
            kind=kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular") or kind.lower(),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            subresources=subresources,
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            immutable_rules=tuple(_immutable_rules((version.get("schema") or {}).get("openAPIV3Schema") or {})),
        ))
    return result


def _immutable_rules(schema: dict, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(object-property path, message) of each CEL rule `self == oldSelf` (immutable once set)."""
    found = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "".join(str(rule.get("rule", "")).split()) == "self==oldSelf" and path:
            found.append((path, rule.get("message") or "Invalid value: failed rule: self == oldSelf"))
    for name, child in (schema.get("properties") or {}).items():
        if isinstance(child, dict):
            found += _immutable_rules(child, (*path, name))
    return found


_MISSING = object()


def _lookup(obj: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def immutability_violations(rtype: ResourceType, old: dict, new: dict) -> list[str]:
    """`<path>: Invalid value: "object": <message>` for each immutable field an update changes."""
    return [f'{".".join(path)}: Invalid value: "object": {message}'
            for path, message in rtype.immutable_rules
            if _lookup(old, path) is not _MISSING and _lookup(old, path) != _lookup(new, path)]
