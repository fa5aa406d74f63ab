"""Legacy discovery documents (/api, /apis, /apis/<group>, /apis/<group>/<version>, /api/v1) built from
the served resource types; kubectl 1.33 falls back to them from aggregated discovery."""

from __future__ import annotations

from m2f_devcluster.emulator.resources import ALL_VERBS, ResourceType

_SUBRESOURCE_VERBS = {"status": ["get", "patch", "update"], "log": ["get"], "scale": ["get", "patch", "update"],
                      "binding": ["create"], "eviction": ["create"]}
_SUBRESOURCE_KINDS = {"log": "Pod", "binding": "Binding", "eviction": "Eviction", "scale": "Scale"}


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _groups(types: list[ResourceType]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rtype in types:
        if rtype.group and rtype.version not in groups.setdefault(rtype.group, []):
            groups[rtype.group].append(rtype.version)
    return groups


def _group_entry(group: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def group_list(types: list[ResourceType]) -> dict:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_entry(group, versions) for group, versions in sorted(_groups(types).items())]}


def api_group(types: list[ResourceType], group: str) -> dict | None:
    versions = _groups(types).get(group)
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)} if versions else None


def resource_list(types: list[ResourceType], group: str, version: str) -> dict | None:
    served = sorted((t for t in types if (t.group, t.version) == (group, version)), key=lambda t: t.plural)
    if not served:
        return None
    resources = []
    for rtype in served:
        resources.append({
            "name": rtype.plural, "singularName": rtype.singular_name, "namespaced": rtype.namespaced,
            "kind": rtype.kind, "verbs": list(ALL_VERBS), "shortNames": list(rtype.short_names),
            "categories": list(rtype.categories),
        })
        for subresource in rtype.subresources:
            resources.append({"name": f"{rtype.plural}/{subresource}", "singularName": "",
                              "namespaced": rtype.namespaced,
                              "kind": _SUBRESOURCE_KINDS.get(subresource, rtype.kind),
                              "verbs": _SUBRESOURCE_VERBS.get(subresource, ["get"])})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}
