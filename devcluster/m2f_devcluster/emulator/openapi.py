"""A minimal OpenAPI v3 discovery: enough for kubectl to see that the server validates fields itself.

kubectl (apply/create/replace) checks whether the PATCH operation of the object's kind accepts the
`fieldValidation` query parameter; if so it skips client-side schema validation. The emulator
declares that for every served kind (it accepts, but does not enforce, field validation).
"""

from __future__ import annotations

import hashlib
import json

from m2f_devcluster.emulator.resources import ResourceType


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _gv_document(group: str, version: str, types: list[ResourceType]) -> dict:
    paths = {}
    for rtype in types:
        prefix = f"/{_gv_path(group, version)}" + ("/namespaces/{namespace}" if rtype.namespaced else "")
        gvk = {"group": group, "version": version, "kind": rtype.kind}
        parameters = [{"name": name, "in": "query", "schema": {"type": "string"}}
                      for name in ("dryRun", "fieldManager", "fieldValidation", "force")]
        paths[f"{prefix}/{rtype.plural}/{{name}}"] = {
            "patch": {"operationId": f"patch{rtype.kind}", "x-kubernetes-action": "patch",
                      "x-kubernetes-group-version-kind": gvk, "parameters": parameters,
                      "responses": {"200": {"description": "OK"}}},
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (m2f emulator)", "version": "v1.33.0"},
            "paths": paths, "components": {"schemas": {}}}


def openapi_v3_index(types: list[ResourceType]) -> dict:
    """The /openapi/v3 root: one entry per group/version with a content hash as kubectl expects."""
    paths = {}
    for group, version in sorted({(t.group, t.version) for t in types}):
        document = gv_document(types, group, version)
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32].upper()
        paths[_gv_path(group, version)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"}
    return {"paths": paths}


def gv_document(types: list[ResourceType], group: str, version: str) -> dict | None:
    selected = [t for t in types if (t.group, t.version) == (group, version)]
    return _gv_document(group, version, selected) if selected else None
