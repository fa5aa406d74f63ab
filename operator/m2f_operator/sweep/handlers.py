"""Thin kopf handlers for Mask2FormerSweep: spec changes, trial events and a resync funnel into one reconcile.

The trials' status changes carry the progress and results the sweep records; the resync retries what no event
will (a create refused for a while, a reconcile that failed on an API error after the last trial's event).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import kopf

from m2f_operator import metrics
from m2f_operator.builders import meta
from m2f_operator.client import Cluster
from m2f_operator.policies import creation
from m2f_operator.policies.creation import CreateBlocked
from m2f_operator.status import TERMINAL_PHASES, Event
from m2f_operator.sweep.reconcile import SweepObserved, SweepPlan, reconcile_sweep
from m2f_spec.sweep import study

log = logging.getLogger("m2f_operator.sweep")
SWEEP = meta.SWEEP
TRAINS = meta.KINDS["Mask2FormerTrain"].plural
_locks: dict[tuple[str, str], asyncio.Lock] = {}
_active: set[tuple[str, str]] = set()  # sweeps not yet finished: the resync's list


def _cluster() -> Cluster:
    from m2f_operator.handlers import STATE  # created at the operator's startup

    return STATE.cluster


async def reconcile_sweep_resource(namespace: str, name: str, trigger: str) -> SweepPlan | None:
    async with _locks.setdefault((namespace, name), asyncio.Lock()):
        return await asyncio.to_thread(_reconcile_sync, namespace, name, trigger)


def _reconcile_sync(namespace: str, name: str, trigger: str) -> SweepPlan | None:
    cluster = _cluster()
    metrics.RECONCILES.labels(SWEEP.kind, trigger).inc()
    with metrics.RECONCILE_SECONDS.labels(SWEEP.kind).time():
        try:
            body = cluster.get_resource(SWEEP.plural, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            # Always a fresh list: a trial created a moment ago must be seen (never created twice).
            trials = [t for t in cluster.list_resources(TRAINS, namespace, f"{meta.LABEL_SWEEP}={name}")
                      if creation.controller_uid(t) == body["metadata"]["uid"]]
            plan = reconcile_sweep(SweepObserved(body, trials, datetime.now(timezone.utc)))
            return _apply(cluster, body, plan)
        except Exception:
            metrics.RECONCILE_ERRORS.labels(SWEEP.kind).inc()
            raise


def _apply(cluster: Cluster, body: dict, plan: SweepPlan) -> SweepPlan:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for manifest in plan.creates:
        outcome = cluster.create(manifest)
        if isinstance(outcome, CreateBlocked):
            number = int(manifest["metadata"]["labels"][meta.LABEL_TRIAL])
            log.warning("Mask2FormerSweep %s/%s: %s", namespace, name, outcome.message)
            plan.events.append(Event("Warning", "FailedCreate", outcome.message))
            if outcome.retry:
                # The status must not claim a trial that does not exist: it and later ones are asked again (resync).
                _forget_trials_from(plan, number)
            else:
                # Refused for what it is (422): the same suggestion would be refused again; it is a failed trial.
                _fail_trial(plan, number, outcome.message)
            break
    if plan.status_patch:
        cluster.patch_status(SWEEP.plural, namespace, name, plan.status_patch)
    # After the status: a trial deleted before its prune was recorded would read as deleted by someone else.
    for trial in plan.deletes:
        cluster.delete_resource(TRAINS, namespace, trial)
    for event in plan.events:
        try:
            cluster.post_event(body, event)
        except Exception as exc:  # an Event is informative: never fail a reconcile over it
            log.warning("could not post event %s for %s/%s: %s", event.reason, namespace, name, exc)
    return plan


def _forget_trials_from(plan: SweepPlan, number: int) -> None:
    history = plan.status_patch.get("history")
    if history is not None:
        _set_history(plan, [record for record in history if record["number"] < number])


def _fail_trial(plan: SweepPlan, number: int, message: str) -> None:
    history = plan.status_patch.get("history")
    if history is None:
        return
    kept = [record for record in history if record["number"] <= number]
    kept[-1] = {**kept[-1], "state": study.FAILED, "reason": "FailedCreate", "message": message}
    _set_history(plan, kept)


def _set_history(plan: SweepPlan, history: list[dict]) -> None:
    plan.status_patch["history"] = history
    trials = dict(plan.status_patch.get("trials") or {})
    trials.update(total=len(history), running=sum(1 for r in history if r["state"] == study.RUNNING),
                  failed=sum(1 for r in history if r["state"] in (study.FAILED, study.STOPPED)))
    plan.status_patch["trials"] = trials


async def on_sweep(namespace: str, name: str, reason: str, **_) -> None:
    plan = await reconcile_sweep_resource(namespace, name, str(reason))
    if plan is not None and plan.invalid_spec:
        # Recorded as the InvalidSpec condition and a Warning Event; only a spec edit can fix it.
        raise kopf.PermanentError(plan.invalid_spec)


async def on_trial_event(namespace: str, labels: kopf.Labels, type: str | None, **_) -> None:
    """A trial changed (progress, phase, deletion): its sweep records it and may start the next one."""
    sweep = labels.get(meta.LABEL_SWEEP)
    if not sweep:
        return
    try:
        await reconcile_sweep_resource(namespace, sweep, "trial")
    except Exception as exc:  # no kopf retry bookkeeping here: the next trial event retries
        log.warning("reconcile of sweep %s/%s after a trial event failed: %s", namespace, sweep, exc)


async def on_sweep_event(namespace: str, name: str, type: str | None, body: kopf.Body, **_) -> None:
    """Bookkeeping for the resync: which sweeps are not finished."""
    if type == "DELETED" or (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
        _active.discard((namespace, name))
        if type == "DELETED":
            _locks.pop((namespace, name), None)
    else:
        _active.add((namespace, name))


async def resync_once() -> None:
    """Every unfinished sweep once (called by the operator's resync loop)."""
    for namespace, name in sorted(_active):
        try:
            await reconcile_sweep_resource(namespace, name, "resync")
        except Exception as exc:  # logged; the next resync retries
            log.warning("resync of sweep %s/%s failed: %s", namespace, name, exc)


def _register() -> None:
    resource = (meta.GROUP, meta.VERSION, SWEEP.plural)
    retry = {"retries": 8, "backoff": 5}
    kopf.on.create(*resource, id="sweep-create", **retry)(on_sweep)
    kopf.on.resume(*resource, id="sweep-resume", **retry)(on_sweep)
    kopf.on.update(*resource, field="spec", id="sweep-update", **retry)(on_sweep)
    kopf.on.event(*resource, id="sweep-event")(on_sweep_event)
    kopf.on.event(meta.GROUP, meta.VERSION, TRAINS, id="sweep-trial-event",
                  labels={meta.LABEL_SWEEP: kopf.PRESENT})(on_trial_event)


_register()
