"""Server-side `Table` responses (what `kubectl get` asks for), including CRD additionalPrinterColumns."""

from __future__ import annotations

import datetime
import re

from m2f_devcluster.emulator.resources import ResourceType

_FILTER = re.compile(r"^\[\?\(@\.([\w.]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")
_INDEX = re.compile(r"^\[(\d+)\]")
_KEY = re.compile(r"^\.?([\w-]+)")


def wants_table(headers: dict) -> bool:
    accept = next((value for key, value in headers.items() if key.lower() == "accept"), "")
    return "as=Table" in accept


def json_path(obj: object, path: str) -> object:
    """Evaluate the JSONPath subset printer columns use: .a.b, [N], [?(@.k=="v")]."""
    nodes = [obj]
    rest = path.strip()
    rest = rest[1:-1] if rest.startswith("{") and rest.endswith("}") else rest
    while rest and nodes:
        if match := _FILTER.match(rest):
            key, value = match.groups()
            nodes = [item for node in nodes if isinstance(node, list) for item in node
                     if str(_dotted(item, key)) == value]
        elif match := _INDEX.match(rest):
            index = int(match.group(1))
            nodes = [node[index] for node in nodes if isinstance(node, list) and index < len(node)]
        elif match := _KEY.match(rest):
            nodes = [node[match.group(1)] for node in nodes if isinstance(node, dict) and match.group(1) in node]
        else:
            return None
        rest = rest[match.end():]
    return nodes[0] if nodes else None


def _dotted(obj: object, path: str) -> object:
    for key in path.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def human_age(timestamp: str | None) -> str:
    """kubectl's short duration format (5s, 3m20s, 2h, 4d)."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<invalid>"
    seconds = max(0, int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _pod_cells(pod: dict) -> list:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for status in statuses if status.get("ready"))
    phase = (pod.get("status") or {}).get("phase", "Pending")
    reason = phase
    for status in statuses:
        state = status.get("state") or {}
        if "terminated" in state:
            reason = state["terminated"].get("reason") or reason
        elif "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(status.get("restartCount", 0)) for status in statuses)
    return [f"{ready}/{len(containers)}", reason, restarts]


def _columns(rtype: ResourceType) -> list[dict]:
    name = {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
    age = {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}
    if rtype.group == "" and rtype.plural == "pods":
        return [name, *({"name": n, "type": t, "format": "", "description": n, "priority": 0}
                         for n, t in (("Ready", "string"), ("Status", "string"), ("Restarts", "integer"))), age,
                *({"name": n, "type": "string", "format": "", "description": n, "priority": 1}
                  for n in ("IP", "Node"))]
    if rtype.group == "" and rtype.plural == "events":
        return [{"name": n, "type": "string", "format": "", "description": n, "priority": 0}
                for n in ("Last Seen", "Type", "Reason", "Object", "Message")] + [dict(name, priority=1)]
    if rtype.group == "" and rtype.plural == "nodes":
        return [name, *({"name": n, "type": "string", "format": "", "description": n, "priority": 0}
                         for n in ("Status", "Roles")), age,
                {"name": "Version", "type": "string", "format": "", "description": "Version", "priority": 0}]
    if rtype.printer_columns:
        return [name, *({"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                         "description": c.get("description", ""), "priority": c.get("priority", 0)}
                        for c in rtype.printer_columns)]
    return [name, age]


def _cells(rtype: ResourceType, obj: dict) -> list:
    name = obj["metadata"]["name"]
    age = human_age(obj["metadata"].get("creationTimestamp"))
    if rtype.group == "" and rtype.plural == "pods":
        return [name, *_pod_cells(obj), age, (obj.get("status") or {}).get("podIP") or "<none>",
                (obj.get("spec") or {}).get("nodeName") or "<none>"]
    if rtype.group == "" and rtype.plural == "events":
        involved = obj.get("involvedObject") or {}
        last = obj.get("lastTimestamp") or obj.get("eventTime") or obj["metadata"].get("creationTimestamp")
        last = last[:19] + "Z" if isinstance(last, str) and len(last) > 20 else last
        return [human_age(last), obj.get("type", ""), obj.get("reason", ""),
                f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}", obj.get("message", ""), name]
    if rtype.group == "" and rtype.plural == "nodes":
        ready = {c.get("type"): c.get("status") for c in (obj.get("status") or {}).get("conditions", [])}.get("Ready")
        version = ((obj.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
        return [name, {"True": "Ready", "False": "NotReady"}.get(ready, "NotReady"), "<none>", age, version]
    if rtype.printer_columns:
        cells: list = [name]
        for column in rtype.printer_columns:
            value = json_path(obj, column.get("jsonPath", ""))
            if column.get("type") == "date" and isinstance(value, str):
                value = human_age(value)
            cells.append(value if value is not None else None)
        return cells
    return [name, age]


def table(rtype: ResourceType, items: list[dict], revision: str | None) -> dict:
    """A meta.k8s.io/v1 Table; rows carry the full object so kubectl can add namespace/label columns."""
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision} if revision else {},
        "columnDefinitions": _columns(rtype),
        "rows": [{"cells": _cells(rtype, obj), "object": obj} for obj in items],
    }
