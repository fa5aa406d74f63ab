"""What GitOps tools read from a resource: Argo CD's health (the Lua of docs/gitops.md, run in lupa) and
kstatus's computed status (its rules for resources it has no special case for)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures" / "statuses"
# phase -> (Argo CD health, kstatus status)
EXPECTED = {
    "Pending": ("Progressing", "InProgress"), "Queued": ("Progressing", "InProgress"),
    "Created": ("Progressing", "InProgress"), "Running": ("Progressing", "InProgress"),
    "Restarting": ("Progressing", "InProgress"), "WaitingForTrain": ("Progressing", "InProgress"),
    "Succeeded": ("Healthy", "Current"), "Suspended": ("Suspended", "Current"),
    "Failed": ("Degraded", "Failed"), "InvalidSpec": ("Degraded", "Failed"), "FailedCreate": ("Degraded", "Failed"),
}
RETRIED_FAILED_CREATE = ("Progressing", "InProgress")  # a refused create the operator retries by itself


def expected(obj: dict) -> tuple[str, str]:
    """What Argo CD and kstatus should read from an object, by its phase (and, for FailedCreate, whether the
    operator retries it: Stalled=False)."""
    phase = obj["status"]["phase"]
    stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in obj["status"].get("conditions", []))
    return RETRIED_FAILED_CREATE if phase == "FailedCreate" and not stalled else EXPECTED[phase]


def health_lua() -> str:
    (block,) = re.findall(r"```lua\n(.*?)```", (REPO_ROOT / "docs" / "gitops.md").read_text(), re.S)
    return block


def argo_health(obj: dict) -> tuple[str, str]:
    """(status, message) as Argo CD computes them: the script runs with the object bound to `obj`."""
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    to_lua = lua.eval("function(json) return (load('return ' .. json))() end")
    # Argo CD hands the script the object as a Lua table; build it from the JSON through a Lua literal.
    table = to_lua(_lua_literal(obj))
    result = lua.eval(f"function(obj) {health_lua()} end")(table)
    return result["status"], result["message"]


def _lua_literal(value) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"[{json.dumps(str(k))}]={_lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ",".join(_lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def kstatus(obj: dict) -> str:
    """kstatus's generic rules (cli-utils pkg/kstatus/status, `checkGenericProperties`): an unreconciled
    generation is InProgress, Reconciling=True is InProgress, Stalled=True is Failed, anything else Current."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    if generation is not None and status.get("observedGeneration", generation) < generation:
        return "InProgress"
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    if (conditions.get("Reconciling") or {}).get("status") == "True":
        return "InProgress"
    if (conditions.get("Stalled") or {}).get("status") == "True":
        return "Failed"
    return "Current"


def record(obj: dict, backend: str, suffix: str = "") -> None:
    """With M2F_RECORD_STATUSES set, keep a live object as a fixture (how fixtures/statuses was made)."""
    if not os.environ.get("M2F_RECORD_STATUSES"):
        return
    kept = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": obj["metadata"]["name"], "generation": obj["metadata"]["generation"]},
            "spec": {k: v for k, v in obj["spec"].items() if k != "experiment"}, "status": obj["status"]}
    kept["status"].pop("kopf", None)
    name = f"{backend}-{obj['kind']}-{obj['status']['phase']}{suffix}.json"
    (FIXTURES / name).write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
