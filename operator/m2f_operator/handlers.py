"""Thin kopf handlers: every trigger funnels into one reconcile per resource (`kopf run -m m2f_operator.handlers`).

Triggers: the resource's create/resume/spec update (kopf change handlers: progress in status.kopf,
bounded retries, PermanentError for an invalid spec), any event of its pods (kept in a kopf index,
so a reconcile lists nothing), and a resync loop for time-based policies (deadline, TTL, lost
nodes). kopf timers are not used: they would put a finalizer on every resource, and nothing here
needs cleanup on deletion (owner references cascade), so resources carry no finalizer.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from datetime import datetime, timedelta, timezone

import kopf

from m2f_operator import metrics, progress
from m2f_operator import status as st
from m2f_operator.builders import meta
from m2f_operator.client import CREATED, Cluster, load_api_client
from m2f_operator.policies import creation
from m2f_operator.policies.creation import CreateBlocked
from m2f_operator.reconcile import Observed, Plan, blocked_creation, reconcile
from m2f_operator.settings import OperatorConfig, configure_kopf

log = logging.getLogger("m2f_operator")


class _State:
    """Process-wide state, created at startup."""

    config: OperatorConfig | None = None
    cluster: Cluster | None = None
    pod_index: kopf.Index | None = None
    resync_task: asyncio.Task | None = None
    locks: dict[tuple[str, str, str], asyncio.Lock] = {}
    # (plural, namespace, name) -> (phase, has a clock running (deadline/TTL/waiting), trainRef)
    known: dict[tuple[str, str, str], tuple[str, bool, str | None]] = {}
    # (plural, namespace, name) -> monotonic time of the last read of its rank 0's progress
    progress_read: dict[tuple[str, str, str], float] = {}
    # (plural, namespace, name) -> (monotonic time of the next create retry, retries so far)
    retry: dict[tuple[str, str, str], tuple[float, int]] = {}


STATE = _State()


@kopf.on.login()
def login(**kwargs) -> kopf.ConnectionInfo | None:
    """The same credentials as our own client: in-cluster service account, else $KUBECONFIG read now
    (the kubernetes library's default path is fixed at import time, before tests/dev cluster set it)."""
    if not os.environ.get("KUBECONFIG"):
        info = kopf.login_with_service_account(**kwargs)
        if info is not None:
            return info
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_) -> None:
    configure_kopf(settings)
    STATE.config = OperatorConfig.from_env()
    STATE.cluster = Cluster(load_api_client())
    STATE.locks, STATE.known, STATE.progress_read, STATE.retry = {}, {}, {}, {}
    metrics.serve(STATE.config.metrics_port)
    STATE.resync_task = asyncio.get_running_loop().create_task(_resync_forever())


@kopf.on.cleanup()
async def cleanup(**_) -> None:
    if STATE.resync_task is not None:
        STATE.resync_task.cancel()
        STATE.resync_task = None


@kopf.index("pods", labels={meta.LABEL_MANAGED_BY: meta.MANAGED_BY})
def m2f_pods(body: kopf.Body, namespace: str, labels: kopf.Labels, **_) -> dict:
    """(namespace, kind label, job name) -> the pod's metadata and status (all the policies read)."""
    key = (namespace, labels.get(meta.LABEL_KIND, ""), labels.get(meta.LABEL_JOB_NAME, ""))
    metadata = body.get("metadata", {})
    summary = {
        "metadata": {
            "name": metadata.get("name"),
            "uid": metadata.get("uid"),
            "labels": dict(metadata.get("labels") or {}),
            "ownerReferences": copy.deepcopy(list(metadata.get("ownerReferences") or [])),
            "deletionTimestamp": metadata.get("deletionTimestamp"),
            "creationTimestamp": metadata.get("creationTimestamp"),  # the startup policy's clock and histogram
        },
        # A scheduling gate (Kueue) holds the gang: the phase is Queued until it is lifted.
        "spec": {"schedulingGates": copy.deepcopy(list((body.get("spec") or {}).get("schedulingGates") or []))},
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }
    return {key: summary}


# -- the reconcile funnel ---------------------------------------------------------------------------


async def reconcile_resource(plural: str, namespace: str, name: str, trigger: str, pod_index: kopf.Index) -> Plan | None:
    """One reconcile at a time per resource; the pod snapshot is taken on the event loop under its lock."""
    STATE.pod_index = pod_index
    lock = STATE.locks.setdefault((plural, namespace, name), asyncio.Lock())
    async with lock:
        task = meta.KIND_BY_PLURAL[plural].task
        pods = [copy.deepcopy(pod) for pod in pod_index.get((namespace, task, name), [])]
        return await asyncio.to_thread(_reconcile_sync, plural, namespace, name, pods, trigger)


def _reconcile_sync(plural: str, namespace: str, name: str, pods: list[dict], trigger: str) -> Plan | None:
    cluster, config = STATE.cluster, STATE.config
    kind = meta.KIND_BY_PLURAL[plural].kind
    started = time.perf_counter()
    metrics.RECONCILES.labels(kind, trigger).inc()
    try:
        # Always the fresh resource: a status we wrote a moment ago must not be decided on again.
        body = cluster.get_resource(plural, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        # Children belong to this incarnation by uid, never by name: the pods of a deleted resource of the same
        # name (garbage collection is asynchronous) are neither counted nor finished on.
        pods = [pod for pod in pods if creation.controller_uid(pod) == body["metadata"]["uid"]]
        train = None
        train_ref = (body.get("spec") or {}).get("trainRef")
        if kind == "Mask2FormerExport" and train_ref and not (body.get("spec") or {}).get("checkpoint"):
            train = cluster.get_resource(meta.KINDS["Mask2FormerTrain"].plural, namespace, train_ref)
        now = datetime.now(timezone.utc)
        rank_zero, key = None, (plural, namespace, name)
        # Progress is read once per progress interval, whatever triggered this reconcile: an unreachable rank 0
        # (a NetworkPolicy, a lost node) costs one bounded read per interval, not one per pod event.
        due = time.monotonic() - STATE.progress_read.get(key, 0.0) >= config.progress_seconds
        if kind == "Mask2FormerTrain" and (body.get("status") or {}).get("phase") == st.RUNNING and due:
            rank_zero = progress.rank_zero_endpoint(pods)
            STATE.progress_read[key] = time.monotonic()
        observed = Observed(body, pods, now, train, config.pod_defaults,
                            timedelta(seconds=config.stuck_terminating_seconds),
                            progress=progress.scrape(rank_zero, now) if rank_zero else None)
        plan = _apply(cluster, plural, body, reconcile(observed), observed)
        _schedule_retry((plural, namespace, name), plan.blocked)
        return plan
    except Exception:
        metrics.RECONCILE_ERRORS.labels(kind).inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


def _apply(cluster: Cluster, plural: str, body: dict, plan: Plan, observed: Observed) -> Plan:
    namespace, name, kind = body["metadata"]["namespace"], body["metadata"]["name"], body["kind"]
    for manifest in plan.creates:
        outcome = cluster.create(manifest)
        if isinstance(outcome, CreateBlocked):
            # Nothing after it is created (pods need their ConfigMap and Service); the status says why.
            log.warning("%s %s/%s: %s", kind, namespace, name, outcome.message)
            blocked = blocked_creation(observed, outcome)
            plan = Plan(deletes=plan.deletes, status_patch=blocked.status_patch, events=blocked.events,
                        phase=blocked.phase, blocked=outcome)
            metrics.CREATE_FAILURES.labels(kind, namespace, outcome.reason).inc()
            break
        if outcome == CREATED and manifest["kind"] == "Pod":
            metrics.PODS_CREATED.labels(kind, namespace).inc()
    for pod_name, force in plan.deletes:
        cluster.delete_pod(namespace, pod_name, force)
    if plan.gang_restarted:
        metrics.GANG_RESTARTS.labels(kind, namespace, plan.restart_cause).inc()
    if plan.finished is not None:
        metrics.FINISHED.labels(kind, namespace, *plan.finished).inc()
    if plan.startup_seconds is not None:
        metrics.STARTUP_SECONDS.labels(kind, namespace).observe(plan.startup_seconds)
    # The status is written once, after the children: it never claims pods that do not exist.
    if plan.status_patch:
        cluster.patch_status(plural, namespace, name, plan.status_patch)
    for event in plan.events:
        try:
            cluster.post_event(body, event)
        except Exception as exc:  # an Event is informative: never fail a reconcile over it
            log.warning("could not post event %s for %s/%s: %s", event.reason, namespace, name, exc)
    if plan.delete_resource:
        log.info("ttlSecondsAfterFinished reached: deleting %s %s/%s", kind, namespace, name)
        cluster.delete_resource(plural, namespace, name)
    return plan


def _schedule_retry(key: tuple[str, str, str], blocked: CreateBlocked | None) -> None:
    """A refused create that waiting can fix is retried by the resync with bounded exponential backoff
    (garbage collection, a missing ServiceAccount, a quota); one that needs a spec edit waits for the edit."""
    if blocked is None or not blocked.retry:
        STATE.retry.pop(key, None)
        return
    attempts = STATE.retry.get(key, (0.0, -1))[1] + 1
    STATE.retry[key] = (time.monotonic() + creation.retry_delay(attempts), attempts)


# -- triggers -------------------------------------------------------------------------------------


async def on_spec(body: kopf.Body, namespace: str, name: str, m2f_pods: kopf.Index, reason: str, **_) -> None:
    plural = meta.KINDS[body["kind"]].plural
    plan = await reconcile_resource(plural, namespace, name, str(reason), m2f_pods)
    if plan is not None and plan.invalid_spec:
        # Recorded as the InvalidSpec condition and an Event already; no retry can fix a spec.
        raise kopf.PermanentError(plan.invalid_spec)
    if plan is not None and plan.blocked is not None and not plan.blocked.retry:
        # FailedCreate that only a spec edit fixes (e.g. 422): recorded; the edit re-runs this handler.
        raise kopf.PermanentError(plan.blocked.message)


async def on_resource_event(body: kopf.Body, type: str | None, namespace: str, name: str, **_) -> None:
    """Bookkeeping only: which resources exist, their phase (metrics) and who waits for a Train."""
    plural = meta.KINDS[body["kind"]].plural
    key = (plural, namespace, name)
    if type == "DELETED":
        STATE.known.pop(key, None)
        STATE.locks.pop(key, None)
        STATE.progress_read.pop(key, None)
        STATE.retry.pop(key, None)
        metrics.PHASES.observe(body["kind"], namespace, name, None)
        return
    spec, status = body.get("spec") or {}, body.get("status") or {}
    phase = status.get("phase", st.PENDING)
    if phase in st.TERMINAL_PHASES:
        needs_time = spec.get("ttlSecondsAfterFinished") is not None
    else:
        needs_time = (spec.get("activeDeadlineSeconds") is not None or phase in (st.RESTARTING, st.WAITING_FOR_TRAIN)
                      or "startupStartTime" in status or "nextAttemptTime" in status)
    previous = STATE.known.get(key)
    STATE.known[key] = (phase, needs_time, spec.get("trainRef"))
    metrics.PHASES.observe(body["kind"], namespace, name, phase)
    if body["kind"] == "Mask2FormerTrain" and previous and previous[0] != phase and STATE.pod_index is not None:
        exports = meta.KINDS["Mask2FormerExport"].plural
        for (other_plural, other_ns, other_name), (_, _, ref) in list(STATE.known.items()):
            if other_plural == exports and other_ns == namespace and ref == name:
                asyncio.get_running_loop().create_task(
                    _safe_reconcile(exports, other_ns, other_name, "train-changed", STATE.pod_index))


@kopf.on.event("pods", labels={meta.LABEL_MANAGED_BY: meta.MANAGED_BY})
async def on_pod_event(body: kopf.Body, type: str | None, labels: kopf.Labels, namespace: str,
                       m2f_pods: kopf.Index, **_) -> None:
    pod_status = body.get("status") or {}
    if type == "ADDED" and pod_status.get("phase", "Pending") == "Pending" and not body.get("metadata", {}).get("deletionTimestamp"):
        return  # our own create, already counted by the reconcile that made it
    task, job_name = labels.get(meta.LABEL_KIND), labels.get(meta.LABEL_JOB_NAME)
    info = next((i for i in meta.KINDS.values() if i.task == task), None)
    if info is None or not job_name:
        return
    await _safe_reconcile(info.plural, namespace, job_name, "pod", m2f_pods)


async def _safe_reconcile(plural: str, namespace: str, name: str, trigger: str, pod_index: kopf.Index) -> None:
    # Pod events and the resync have no kopf retry bookkeeping: log, and the next event/resync retries.
    try:
        await reconcile_resource(plural, namespace, name, trigger, pod_index)
    except Exception as exc:
        log.warning("reconcile of %s %s/%s (%s) failed: %s", plural, namespace, name, trigger, exc)


async def _resync_forever() -> None:
    while True:
        await asyncio.sleep(STATE.config.resync_seconds)
        await sweep_handlers.resync_once()  # sweeps: a refused create retried, an error after the last trial event
        if STATE.pod_index is None:
            continue
        for plural, namespace, name in _due_for_resync(STATE.pod_index):
            await _safe_reconcile(plural, namespace, name, "resync", STATE.pod_index)


def _due_for_resync(pod_index: kopf.Index) -> list[tuple[str, str, str]]:
    """Resources whose state can change with time alone: a clock (deadline, TTL, waiting), a pod
    being deleted (its node may be lost), or a running Train whose progress was last read a progress
    interval ago. Everything else changes only through watch events."""
    due = []
    trains = meta.KINDS["Mask2FormerTrain"].plural
    for (plural, namespace, name), (phase, has_clock, _) in list(STATE.known.items()):
        key = (plural, namespace, name)
        stale = time.monotonic() - STATE.progress_read.get(key, 0.0) >= STATE.config.progress_seconds
        retry_due = key in STATE.retry and STATE.retry[key][0] <= time.monotonic()
        if has_clock or retry_due or (plural == trains and phase == st.RUNNING and stale):
            due.append(key)
            continue
        pods = pod_index.get((namespace, meta.KIND_BY_PLURAL[plural].task, name), [])
        if any(pod["metadata"].get("deletionTimestamp") for pod in pods):
            due.append((plural, namespace, name))
    return due


def _register() -> None:
    for info in meta.KINDS.values():
        resource = (meta.GROUP, meta.VERSION, info.plural)
        retry = {"retries": 8, "backoff": 5}
        kopf.on.create(*resource, id=f"{info.task}-create", **retry)(on_spec)
        kopf.on.resume(*resource, id=f"{info.task}-resume", **retry)(on_spec)
        kopf.on.update(*resource, field="spec", id=f"{info.task}-update", **retry)(on_spec)
        kopf.on.event(*resource, id=f"{info.task}-event")(on_resource_event)


_register()

# Mask2FormerSweep's handlers live beside their reconcile; importing them registers them with kopf.
from m2f_operator.sweep import handlers as sweep_handlers  # noqa: E402
