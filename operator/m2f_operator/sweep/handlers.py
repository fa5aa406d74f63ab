"""Thin kopf handlers for Mask2FormerSweep: its spec changes and every event of its trials funnel into one
reconcile per sweep (the trials' status changes carry the progress and results it records)."""

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
from m2f_operator.sweep.reconcile import SweepObserved, SweepPlan, reconcile_sweep
from m2f_spec.sweep import study

log = logging.getLogger("m2f_operator.sweep")
SWEEP = meta.SWEEP
TRAINS = meta.KINDS["Mask2FormerTrain"].plural
_locks: dict[tuple[str, str], asyncio.Lock] = {}


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
            # The status must not claim a trial that does not exist: this one and later ones are asked again.
            number = int(manifest["metadata"]["labels"][meta.LABEL_TRIAL])
            log.warning("Mask2FormerSweep %s/%s: %s", namespace, name, outcome.message)
            _forget_trials_from(plan, number)
            plan.events.append(_warning("FailedCreate", outcome.message))
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
    if history is None:
        return
    kept = [record for record in history if record["number"] < number]
    plan.status_patch["history"] = kept
    trials = dict(plan.status_patch.get("trials") or {})
    trials["total"] = len(kept)
    trials["running"] = sum(1 for record in kept if record["state"] == study.RUNNING)
    plan.status_patch["trials"] = trials


def _warning(reason: str, message: str):
    from m2f_operator.status import Event

    return Event("Warning", reason, message)


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


async def on_sweep_deleted(namespace: str, name: str, **_) -> None:
    _locks.pop((namespace, name), None)


def _register() -> None:
    resource = (meta.GROUP, meta.VERSION, SWEEP.plural)
    retry = {"retries": 8, "backoff": 5}
    kopf.on.create(*resource, id="sweep-create", **retry)(on_sweep)
    kopf.on.resume(*resource, id="sweep-resume", **retry)(on_sweep)
    kopf.on.update(*resource, field="spec", id="sweep-update", **retry)(on_sweep)
    kopf.on.event(*resource, id="sweep-event",
                  when=lambda type, **_: type == "DELETED")(on_sweep_deleted)
    kopf.on.event(meta.GROUP, meta.VERSION, TRAINS, id="sweep-trial-event",
                  labels={meta.LABEL_SWEEP: kopf.PRESENT})(on_trial_event)


_register()
