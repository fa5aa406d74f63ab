"""GitOps readers on statuses recorded from real runs (fixtures/statuses, from the real control plane) and on
statuses the reconcile derives: Argo CD's health Lua (docs/gitops.md) and kstatus."""

from __future__ import annotations

import json

import pytest
from gitops_health import EXPECTED, FIXTURES, argo_health, expected, kstatus
from reconcile_factories import NOW, gang, pod, resource

from m2f_operator.reconcile import Observed, reconcile

RECORDED = sorted(FIXTURES.glob("*.json"))


def test_statuses_were_recorded_for_every_kind_of_outcome():
    phases = {json.loads(path.read_text())["status"]["phase"] for path in RECORDED}
    assert {"Running", "Succeeded", "Failed", "InvalidSpec", "Suspended", "FailedCreate"} <= phases


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_a_recorded_status_reads_as_its_phase_means(path):
    obj = json.loads(path.read_text())
    phase = obj["status"]["phase"]
    status, message = argo_health(obj)
    assert (status, kstatus(obj)) == expected(obj)
    assert message.startswith(f"{phase}: ")


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_an_unreconciled_edit_is_in_progress_for_both(path):
    obj = json.loads(path.read_text())
    obj["metadata"]["generation"] += 1  # edited; the operator has not looked yet
    assert argo_health(obj)[0] == "Progressing" and kstatus(obj) == "InProgress"


def _applied(body: dict, plan) -> dict:
    status = dict(body.get("status") or {})
    for key, value in plan.status_patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return {**body, "status": status}


@pytest.mark.parametrize(
    ("pods", "spec", "phase"),
    [
        ([], {}, "Created"),
        ([pod(index=0, phase="Pending", gated=True), pod(index=1, phase="Pending", gated=True)], {}, "Queued"),
        (gang(), {}, "Running"),
        ([pod(index=0), pod(index=1, phase="Failed", exit_code=1)], {}, "Restarting"),
        ([], {"suspend": True}, "Suspended"),
    ],
)
def test_derived_statuses_read_as_their_phase_means(pods, spec, phase):
    body = resource(nodes=2, **spec)
    body = _applied(body, reconcile(Observed(body, [], NOW)))
    plan = reconcile(Observed(body, pods, NOW))
    obj = _applied(body, plan)
    assert obj["status"]["phase"] == phase
    assert (argo_health(obj)[0], kstatus(obj)) == EXPECTED[phase]


def test_an_object_the_operator_has_not_seen_is_progressing_for_argo_cd():
    assert argo_health({"metadata": {"generation": 1}}) == ("Progressing", "Waiting for the operator")
