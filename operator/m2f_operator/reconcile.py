"""The reconcile, JobSet style: observed state -> desired children -> what to create/delete -> status.

`reconcile(Observed) -> Plan` is pure: it reads the resource, its pods (and, for an Export, the
referenced Train) and returns the API calls to make and the status to write once. The handlers
apply plans; nothing here talks to the API.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from m2f_operator import status as st
from m2f_operator.builders import build_configmap, build_gang, build_service, build_stages, meta
from m2f_operator.builders.pods import PodDefaults, Stage
from m2f_operator.builders.scheduling import build_pod_group
from m2f_operator.builders.stages import engine_path, onnx_path, quantized_onnx_path
from m2f_operator.policies import (
    PodView,
    deadline_remaining,
    decide_failure,
    decide_suspend,
    pods_to_clean,
    stage_succeeded,
    startup,
    ttl_remaining,
    views,
)
from m2f_operator.policies.creation import FAILED_CREATE, CreateBlocked
from m2f_operator.policies.observe import STUCK_TERMINATING_MARGIN, format_time, parse_time
from m2f_operator.policies.success import ALL_WORKERS, RANK0
from m2f_operator.validation import spec_error

# The startup policy's bookkeeping in the status (policies/startup.py).
STARTUP_FIELDS = ("startupStartTime", "startupRetries", "nextAttemptTime")
# What defines a gang: editable only while suspended (or before any pod runs).
SHAPE_FIELDS = ("nodes", "gpusPerNode", "image", "resources")
# Export stages whose completion is recorded as a condition (the pods may be cleaned up later).
STAGE_CONDITIONS = {"onnx": "OnnxExported", "quantize": "Quantized", "trt": "EngineBuilt"}
# The status.artifacts key of each export stage's file.
STAGE_ARTIFACTS = {"onnx": "onnxFile", "quantize": "quantizedOnnxFile", "trt": "engineFile"}


@dataclass
class Observed:
    body: dict
    pods: list[dict]
    now: datetime
    train: dict | None = None  # the Export's trainRef target, when it exists
    defaults: PodDefaults = field(default_factory=PodDefaults)
    # How long past its deletion deadline a pod may stay before its node counts as lost.
    stuck_margin: timedelta = STUCK_TERMINATING_MARGIN
    # A Train's rank 0 progress, read from its metrics endpoint by the handler (progress.py); None: not read.
    progress: dict | None = None


@dataclass
class Plan:
    creates: list[dict] = field(default_factory=list)
    deletes: list[tuple[str, bool]] = field(default_factory=list)  # (pod name, force)
    status_patch: dict = field(default_factory=dict)
    events: list[st.Event] = field(default_factory=list)
    phase: str = st.PENDING
    delete_resource: bool = False
    invalid_spec: str | None = None
    gang_restarted: bool = False
    restart_cause: str = ""  # GangRestart | GangRestartIgnoringLimit | StartupTimeout
    finished: tuple[str, str] | None = None  # (Succeeded | Failed, reason) when this reconcile finished the job
    startup_seconds: float | None = None  # when this reconcile saw the gang all Running: since its pods' creation
    blocked: CreateBlocked | None = None  # set by the handler when the API refused a create


def experiment_digest(experiment: object) -> str:
    return hashlib.sha256(json.dumps(experiment, sort_keys=True).encode()).hexdigest()[:16]


def blocked_creation(observed: Observed, blocked: CreateBlocked) -> Plan:
    """The plan's status replaced by what happened: a child could not be created (policies/creation.py).
    Nothing else changes; the Warning Event is emitted once per distinct cause, not on every retry."""
    status = observed.body.get("status") or {}
    draft = st.StatusDraft.start(status, observed.body["metadata"].get("generation"), observed.now)
    # The experiment this resource started with is recorded even when its first creates are refused.
    draft.fields.setdefault("experimentDigest", experiment_digest((observed.body.get("spec") or {}).get("experiment")))
    previous = draft.condition(st.CREATED)
    repeated = bool(previous and previous["status"] == "False" and previous.get("message") == blocked.message)
    draft.set_condition(st.CREATED, False, blocked.reason, blocked.message)
    if blocked.reason == FAILED_CREATE:
        draft.transition(st.FAILED_CREATE, FAILED_CREATE, blocked.message, warning=True)
    elif draft.phase not in (st.PENDING, st.RESTARTING):
        draft.fields["phase"] = st.PENDING
        draft.clear_exclusive(blocked.reason, blocked.message)
    draft.fields["message"] = blocked.message
    draft.events = [] if repeated else [st.Event("Warning", blocked.reason, blocked.message)]
    draft.set_kstatus(observed.body["metadata"].get("generation"), retrying=blocked.retry)
    return Plan(status_patch=draft.patch_against(status), events=draft.events, phase=draft.phase)


def reconcile(observed: Observed) -> Plan:
    body, now = observed.body, observed.now
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    draft = st.StatusDraft.start(status, body["metadata"].get("generation"), now)
    pods = views(observed.pods)
    plan = Plan()
    _Reconciler(observed, spec, status, draft, pods, plan).run()
    if observed.progress is not None and draft.phase == st.RUNNING:
        draft.fields["progress"] = observed.progress
    if draft.phase in st.TERMINAL_PHASES and status.get("phase") not in st.TERMINAL_PHASES:
        plan.finished = (draft.phase, (draft.condition(draft.phase) or {}).get("reason", draft.phase))
    if draft.phase in st.TERMINAL_PHASES:
        for key in STARTUP_FIELDS:  # no gang will start again: no clock to keep
            draft.fields.pop(key, None)
    draft.set_kstatus(body["metadata"].get("generation"))
    # One delete per pod (several steps may doom the same one); a forced one wins.
    forced = {name for name, force in plan.deletes if force}
    plan.deletes = [(name, name in forced) for name in dict.fromkeys(name for name, _ in plan.deletes)]
    plan.status_patch = draft.patch_against(status)
    plan.events = draft.events
    plan.phase = draft.phase
    return plan


@dataclass
class _Reconciler:
    observed: Observed
    spec: dict
    status: dict
    draft: st.StatusDraft
    pods: list[PodView]
    plan: Plan
    # The resource as its pods are built: its gang shape is the recorded one until the job is suspended.
    body: dict = field(default_factory=dict)

    def run(self) -> None:
        # 1. A spec that cannot run: say which field, run nothing, never retry.
        recorded = self.status.get("experimentDigest")
        changed = recorded is not None and recorded != experiment_digest(self.spec.get("experiment"))
        # The shape in use is judged, not an edit that waits for a suspend (it must never fail a running gang).
        self.body = self._guard_gang_shape()
        error = spec_error(self.body, experiment_changed=changed)
        if error:
            if self.draft.phase not in st.TERMINAL_PHASES:
                self.draft.transition(st.INVALID_SPEC, "InvalidSpec", error, warning=True)
                self._delete(p for p in self.pods if not p.terminating)
                self._count_workers(self.pods)
            self.plan.invalid_spec = error
            return
        if self.draft.phase == st.INVALID_SPEC:
            self.draft.transition(st.PENDING, "SpecFixed", "the spec is valid again")
        self._guard_experiment()
        if self.draft.phase == st.FAILED_CREATE:
            # Written only if the creates succeed this time; otherwise blocked_creation replaces the status.
            self.draft.transition(st.PENDING, "CreateRetried", "the children could be created")

        # 2. Finished: clean up pods per cleanPodPolicy, delete the resource after its TTL.
        if self.draft.phase in st.TERMINAL_PHASES:
            self._finish_cleanup()
            return

        # 3. Suspended: no pods; resuming restarts the deadline clock.
        suspend = decide_suspend(self.spec, self.draft.phase)
        if suspend == "suspend" or (suspend is None and self.draft.phase == st.SUSPENDED):
            self._delete(p for p in self.pods if not p.terminating)
            self._delete_stuck(self.pods)
            self.draft.transition(st.SUSPENDED, "Suspended", "spec.suspend is true: the gang is deleted")
            for key in ("startupStartTime", "nextAttemptTime"):
                self.draft.fields.pop(key, None)
            self._count_workers([])
            return
        if suspend == "resume":
            self.draft.transition(st.PENDING, "Resumed", "spec.suspend is false: recreating the gang")
            self.draft.fields.pop("startTime", None)

        # 4. Which gangs to run (an Export waits for its Train's checkpoint first).
        checkpoint, ready = self._export_source()
        if not ready:
            return
        stages = build_stages(self.body, self.observed.defaults, checkpoint)
        self._record_results_dir()

        # 5. activeDeadlineSeconds since the (last resumed) start.
        remaining = deadline_remaining(self.spec, self.draft.fields.get("startTime"), self.observed.now)
        if remaining is not None and remaining <= 0:
            limit = self.spec["activeDeadlineSeconds"]
            self.draft.transition(st.FAILED, "DeadlineExceeded", f"activeDeadlineSeconds {limit} exceeded", True)
            self._finish_cleanup(force_all_running=True)
            return

        # 6. Pods of earlier attempts must be gone before the next gang starts.
        attempt = max([int(self.draft.fields.get("restarts", 0))] + [p.attempt for p in self.pods])
        self.draft.fields["restarts"] = attempt
        stale = [p for p in self.pods if p.attempt < attempt]
        current = [p for p in self.pods if p.attempt == attempt]
        self._delete(p for p in stale if not p.terminating)
        self._delete_stuck(stale)

        for stage in stages:
            if stage.role in STAGE_CONDITIONS and self.draft.is_true(STAGE_CONDITIONS[stage.role]):
                continue
            stage_pods = [p for p in current if p.role == stage.role]
            # 7. Success policy: this gang is done (under Rank0, whatever its other workers still do); go on to
            # the next stage or finish.
            success_policy = self.spec.get("successPolicy", ALL_WORKERS)
            if stage_succeeded(stage, stage_pods, success_policy):
                self._record_stage(stage, stage_pods)
                if success_policy == RANK0:
                    # The others may hang in teardown: they hold GPUs, whatever cleanPodPolicy keeps.
                    self._delete(p for p in stage_pods if p.active)
                continue
            # 8. Failure policy: rules from the failed pod to FailJob or a whole-gang restart.
            vanished = self._vanished(stage, stage_pods)
            # Restarts after a disruption are attempts too, but do not count against backoffLimit.
            counted = int(self.draft.fields.get("restartsCountTowardsLimit", attempt))
            decision = decide_failure(self.spec, counted, stage_pods, self.observed.now, self.observed.stuck_margin,
                                      vanished)
            if decision is not None:
                self._apply_failure(decision, current, attempt)
                return
            # 9. Create what is missing, then derive the phase from what runs.
            self._run_stage(stage, stage_pods, attempt, waiting_for_stale=bool(stale))
            return
        message = "worker 0 exited 0 (successPolicy Rank0)" if self.spec.get("successPolicy") == RANK0 else "all pods exited 0"
        self.draft.transition(st.SUCCEEDED, "Succeeded", message)
        self._count_workers(current)
        self._finish_cleanup()

    # -- steps -------------------------------------------------------------------------------------

    def _export_source(self) -> tuple[str | None, bool]:
        if meta.kind_info(self.observed.body).task != "export":
            return None, True
        if self.spec.get("checkpoint"):
            return self.spec["checkpoint"], True
        ref = self.spec["trainRef"]
        train = self.observed.train
        if train is None:
            self._wait_for_train("TrainNotFound", f"Mask2FormerTrain {ref!r} does not exist (yet)")
            return None, False
        train_status = train.get("status") or {}
        phase = train_status.get("phase", st.PENDING)
        if phase == st.FAILED:
            self.draft.transition(st.FAILED, "TrainFailed", f"Mask2FormerTrain {ref!r} failed", warning=True)
            self._finish_cleanup()
            return None, False
        if phase != st.SUCCEEDED:
            self._wait_for_train("TrainNotSucceeded", f"waiting for Mask2FormerTrain {ref!r} (phase {phase})")
            return None, False
        checkpoint = (train_status.get("artifacts") or {}).get("latestCheckpoint")
        if not checkpoint:
            message = f"Mask2FormerTrain {ref!r} succeeded without reporting a checkpoint (status.artifacts.latestCheckpoint)"
            self.draft.transition(st.FAILED, "NoCheckpoint", message, warning=True)
            return None, False
        if self.draft.is_true(st.WAITING_FOR_TRAIN):
            self.draft.set_condition(st.WAITING_FOR_TRAIN, False, "TrainSucceeded", f"exporting {checkpoint}")
        return checkpoint, True

    def _wait_for_train(self, reason: str, message: str) -> None:
        self.draft.transition(st.WAITING_FOR_TRAIN, reason, message)
        self._count_workers([])

    def _apply_failure(self, decision, current: list[PodView], attempt: int) -> None:
        if decision.action == "fail":
            self.draft.transition(st.FAILED, decision.reason, decision.message, warning=True)
            self._count_workers(current)
            self._finish_cleanup(forced=decision.force_delete)
            return
        # Whole-gang restart: every pod of this attempt goes (force where its node is lost); the next
        # reconcile that sees none of them left creates attempt+1, which resumes from the checkpoint.
        self.draft.fields["restarts"] = attempt + 1
        self.draft.fields.pop("startupStartTime", None)
        counted = int(self.draft.fields.get("restartsCountTowardsLimit", attempt))
        self.draft.fields["restartsCountTowardsLimit"] = counted + 1 if decision.counted else counted
        self.draft.transition(st.RESTARTING, decision.reason, f"restart {attempt + 1}: {decision.message}", True)
        self.plan.gang_restarted, self.plan.restart_cause = True, decision.reason
        for pod in current:
            if pod.name in decision.force_delete:
                self.plan.deletes.append((pod.name, True))
            elif not pod.terminating:
                self.plan.deletes.append((pod.name, False))
        self._count_workers(current)

    def _vanished(self, stage: Stage, stage_pods: list[PodView]) -> tuple[str, ...]:
        """Pods of a gang that was Running and are gone (our index drops a pod only once it is deleted)."""
        if self.draft.phase != st.RUNNING or not stage_pods:
            return ()
        present = {p.index for p in stage_pods}
        name = self.observed.body["metadata"]["name"]
        return tuple(meta.pod_name(name, stage.role, i) for i in range(stage.replicas) if i not in present)

    def _record_stage(self, stage: Stage, stage_pods: list[PodView]) -> None:
        rank0 = next((p for p in stage_pods if p.index == 0), None)
        summary = st.parse_summary(rank0.message if rank0 else "")
        artifacts = dict(self.draft.fields.get("artifacts") or {})
        reported = summary.get("artifacts") if isinstance(summary.get("artifacts"), dict) else {}
        if reported.get("checkpoint"):
            artifacts["latestCheckpoint"] = str(reported["checkpoint"])
        elif stage.task == "train":
            artifacts["latestCheckpoint"] = f"{artifacts['resultsDir']}/{meta.TRAIN_LATEST_CHECKPOINT}"
        if reported.get("metrics_file"):
            artifacts["metricsFile"] = str(reported["metrics_file"])
        if stage.role == "onnx":
            artifacts["onnxFile"] = str(reported.get("onnx_file") or onnx_path(self.observed.body, self.observed.defaults))
        if stage.role == "quantize":
            artifacts["quantizedOnnxFile"] = str(reported.get("quantized_model") or
                                                 quantized_onnx_path(self.observed.body, self.observed.defaults))
        if stage.role == "trt":
            artifacts["engineFile"] = str(reported.get("trt_engine") or engine_path(self.observed.body, self.observed.defaults))
        self.draft.fields["artifacts"] = artifacts
        metrics = summary.get("metrics")
        if isinstance(metrics, dict):
            # Six significant digits: short in printer columns and dashboards, yet precise enough to rank a sweep's
            # trials by (a small loss keeps its digits); metrics.json in the results keeps full precision.
            self.draft.fields["metrics"] = {
                str(k): float(f"{float(v):.6g}") for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            # The last progress read may predate the final validation (rank 0 ended before the next read): the
            # printer column shows the final value.
            progress = self.draft.fields.get("progress") or {}
            if stage.task == "train" and progress.get("totalEpochs"):
                progress = {**progress, "epoch": progress["totalEpochs"]}  # exit 0: every epoch was trained
                self.draft.fields["progress"] = progress
            last = progress.get("lastMetric") or {}
            if last.get("name") in self.draft.fields["metrics"]:
                self.draft.fields["progress"] = {**self.draft.fields["progress"], "lastMetric": {
                    **last, "value": round(self.draft.fields["metrics"][last["name"]], 4)}}
        condition = STAGE_CONDITIONS.get(stage.role)
        if condition:
            path = artifacts[STAGE_ARTIFACTS[stage.role]]
            self.draft.set_condition(condition, True, condition, path)
            self.draft.emit(condition, f"{stage.task} wrote {path}")

    def _run_stage(self, stage: Stage, stage_pods: list[PodView], attempt: int, waiting_for_stale: bool) -> None:
        body = self.body
        if waiting_for_stale:
            # Still Restarting: the previous gang has not released its names yet.
            self._count_workers(stage_pods)
            return
        present = {p.index for p in stage_pods}
        missing = [i for i in range(stage.replicas) if i not in present]
        if missing and not stage_pods and self._backing_off():
            return
        if missing:
            gang = build_gang(body, stage, attempt, self.observed.defaults)
            # ConfigMap and Service are idempotent creates (AlreadyExists is fine): no read needed.
            self.plan.creates += [build_configmap(body, self.observed.defaults.results_root), build_service(body)]
            pod_group = build_pod_group(body, stage.role, stage.replicas, attempt)  # before its pods
            if pod_group is not None:
                self.plan.creates.append(pod_group)
            self.plan.creates += [gang[i] for i in missing]
            self.draft.fields.setdefault("startTime", format_time(self.observed.now))
            if not self.draft.is_true(st.CREATED) or self.draft.phase in (st.PENDING, st.RESTARTING):
                self.draft.set_condition(st.CREATED, True, "GangCreated", f"{stage.role} gang, attempt {attempt}")
                self.draft.emit("GangCreated", f"created {len(missing)} {stage.role} pod(s), attempt {attempt}")
            if self.draft.phase != st.RUNNING:
                self.draft.fields["phase"] = st.CREATED
        self._record_scheduling(stage_pods)
        running = [p for p in stage_pods if p.phase == "Running" and not p.terminating]
        if len(running) == stage.replicas:
            if self.draft.phase != st.RUNNING:
                created = [p.created_at for p in stage_pods if p.created_at is not None]
                if created:
                    self.plan.startup_seconds = max((self.observed.now - min(created)).total_seconds(), 0.0)
            self.draft.transition(st.RUNNING, "AllPodsRunning", f"{stage.replicas} {stage.role} pod(s) running")
            if self.draft.condition(st.STARTED) is not None:
                self.draft.set_condition(st.STARTED, True, "AllPodsRunning", "every pod is running")
            for key in ("startupStartTime", "startupRetries"):
                self.draft.fields.pop(key, None)
        elif not missing and self.draft.phase != st.RUNNING:
            # Once Running, a worker that finished first is not a gang that failed to start.
            self._watch_startup(stage, stage_pods, attempt, len(running))
        self._count_workers(stage_pods, created=len(missing))

    def _backing_off(self) -> bool:
        """After a startup timeout, the next gang waits for its jittered backoff (policies/startup.py)."""
        next_at = parse_time(self.draft.fields.get("nextAttemptTime"))
        if next_at is not None and self.observed.now < next_at:
            self._count_workers([])
            return True
        self.draft.fields.pop("nextAttemptTime", None)
        return False

    def _watch_startup(self, stage: Stage, stage_pods: list[PodView], attempt: int, running: int) -> None:
        """A gang not yet running: queued behind a scheduling gate, blocked (reason in the Started condition),
        or past its startup timeout (deleted and retried later, not counted against backoffLimit)."""
        if any(p.gated for p in stage_pods):
            self.draft.transition(st.QUEUED, "WaitingForAdmission",
                                  f"the {stage.role} pods are held by a scheduling gate until a queue admits them")
            self.draft.fields.pop("startupStartTime", None)  # queue time is not startup time
            return
        if self.draft.phase == st.QUEUED:
            self.draft.fields["phase"] = st.CREATED
            self.draft.set_condition(st.QUEUED, False, "Admitted", "the scheduling gates are lifted")
            self.draft.emit("Admitted", "the scheduling gates are lifted")
        blocked = startup.not_started(stage_pods)
        if blocked is None:  # every pod started (some may have finished already)
            self.draft.fields.pop("startupStartTime", None)
            return
        previous = self.draft.condition(st.STARTED) or {}
        if blocked is not None and blocked.reason in startup.BLOCKING_WAITING_REASONS:  # Unschedulable: Scheduled
            # One Event per pod and cause while it lasts: the kubelet alternates ErrImagePull and ImagePullBackOff.
            cause = (blocked.message.split(":", 1)[0], startup.same_cause(blocked.reason))
            seen = (previous.get("message", "").split(":", 1)[0], startup.same_cause(previous.get("reason", "")))
            if previous.get("status") != "False" or cause != seen:
                self.draft.emit(blocked.reason, blocked.message, warning=True)
            self.draft.set_condition(st.STARTED, False, blocked.reason, blocked.message)
        elif previous.get("status") == "False":
            self.draft.set_condition(st.STARTED, True, "NotBlocked", "no container is blocked from starting")
        since = parse_time(self.draft.fields.setdefault("startupStartTime", format_time(self.observed.now)))
        timeout = startup.startup_timeout(self.spec, stage.replicas)
        if timeout is None or (self.observed.now - since).total_seconds() < timeout:
            return
        retries = int(self.draft.fields.get("startupRetries", 0))
        delay = startup.retry_delay(self.observed.body["metadata"].get("uid", ""), retries)
        why = f": {blocked.message}" if blocked is not None else ""
        message = (f"{running}/{stage.replicas} {stage.role} pod(s) running after startupTimeoutSeconds {timeout}{why}; "
                   f"the gang is deleted and retried in {delay:.0f} s (not counted against backoffLimit)")
        # Written before `restarts` moves: counted restarts fall back to the attempt number where the field is absent.
        self.draft.fields.setdefault("restartsCountTowardsLimit", attempt)
        self.draft.fields.update(restarts=attempt + 1, startupRetries=retries + 1,
                                 nextAttemptTime=format_time(self.observed.now + timedelta(seconds=delay)))
        self.draft.fields.pop("startupStartTime", None)
        self.draft.transition(st.RESTARTING, "StartupTimeout", message, warning=True)
        self.plan.gang_restarted, self.plan.restart_cause = True, "StartupTimeout"
        self._delete(p for p in stage_pods if not p.terminating)

    def _guard_experiment(self) -> None:
        """spec.experiment is immutable. Servers with CEL (1.25+) refuse the edit; older ones store it, so the
        operator keeps the experiment it started with (its ConfigMap is never rewritten) and says so once."""
        digest = experiment_digest(self.spec.get("experiment"))
        recorded = self.draft.fields.setdefault("experimentDigest", digest)
        if recorded != digest and not self.draft.is_true(st.EXPERIMENT_CHANGED):
            message = ("spec.experiment was edited after creation and is immutable: this resource keeps the "
                       "experiment it was created with; create a new resource to run the edited one")
            self.draft.set_condition(st.EXPERIMENT_CHANGED, True, "Immutable", message)
            self.draft.emit("ExperimentImmutable", message, warning=True)

    def _guard_gang_shape(self) -> dict:
        """The gang's shape (nodes, gpusPerNode, image, resources) changes only while suspended, or before the
        first gang exists: an edit while pods run would start workers of another WORLD_SIZE beside the old ones. Where
        CEL did not refuse it (servers before 1.25, or `resources`), the job keeps its recorded shape and says so;
        the edit applies once the job is suspended."""
        shape = {key: self.spec[key] for key in SHAPE_FIELDS if key in self.spec}
        recorded = self.draft.fields.get("gangShape")
        # Not started yet (or its creates refused): nothing runs that the edit could contradict.
        idle = self.draft.phase == st.SUSPENDED or bool(self.spec.get("suspend")) or (
            self.draft.phase in (st.PENDING, st.WAITING_FOR_TRAIN, st.FAILED_CREATE, st.INVALID_SPEC) and not self.pods)
        if recorded is None or recorded == shape or idle:
            self.draft.fields["gangShape"] = shape
            if self.draft.is_true(st.SHAPE_CHANGED):
                self.draft.set_condition(st.SHAPE_CHANGED, False, "Applied", "the edited gang shape is in use")
            return self.observed.body
        if not self.draft.is_true(st.SHAPE_CHANGED):
            edited = ", ".join(f"spec.{key}" for key in SHAPE_FIELDS if recorded.get(key) != shape.get(key))
            message = (f"{edited} changed while the gang runs: it keeps its shape until suspended "
                       "(spec.suspend: true applies the edit; resuming starts the new gang from the checkpoint)")
            self.draft.set_condition(st.SHAPE_CHANGED, True, "ImmutableWhileRunning", message)
            self.draft.emit("GangShapeImmutable", message, warning=True)
        spec = {key: value for key, value in self.spec.items() if key not in SHAPE_FIELDS}
        return {**self.observed.body, "spec": {**spec, **recorded}}

    def _record_scheduling(self, stage_pods: list[PodView]) -> None:
        """While the scheduler cannot place a pod, its message is the Scheduled=False condition (e.g. "0/2 nodes
        are available: 2 Insufficient nvidia.com/gpu."); once every pod is placed, Scheduled=True."""
        unplaced = [p for p in stage_pods if p.unschedulable and p.phase == "Pending" and not p.terminating]
        if unplaced:
            message = f"pod {unplaced[0].name}: {unplaced[0].unschedulable}"
            if not (self.draft.condition(st.SCHEDULED) or {}).get("message") == message:
                self.draft.emit("Unschedulable", message, warning=True)
            self.draft.set_condition(st.SCHEDULED, False, "Unschedulable", message)
        elif self.draft.condition(st.SCHEDULED) is not None and stage_pods:
            self.draft.set_condition(st.SCHEDULED, True, "Scheduled", "every pod is placed on a node")

    def _record_results_dir(self) -> None:
        artifacts = dict(self.draft.fields.get("artifacts") or {})
        artifacts.setdefault("resultsDir", meta.results_dir(self.observed.body, self.observed.defaults.results_root))
        self.draft.fields["artifacts"] = artifacts

    def _finish_cleanup(self, forced: frozenset[str] = frozenset(), force_all_running: bool = False) -> None:
        doomed = set(pods_to_clean(self.spec, self.pods))
        if force_all_running:
            doomed |= {p.name for p in self.pods if p.active}
        for pod in self.pods:
            if pod.name in forced:
                self.plan.deletes.append((pod.name, True))
            elif pod.name in doomed:
                self.plan.deletes.append((pod.name, False))
        self._delete_stuck(p for p in self.pods if p.name not in forced)
        remaining = ttl_remaining(self.spec, self.draft.fields.get("completionTime"), self.observed.now)
        if remaining is not None and remaining <= 0:
            self.plan.delete_resource = True
        if "workers" not in self.draft.fields:
            self._count_workers(self.pods)

    def _delete(self, pods) -> None:
        self.plan.deletes += [(p.name, False) for p in pods]

    def _delete_stuck(self, pods) -> None:
        margin = self.observed.stuck_margin
        self.plan.deletes += [(p.name, True) for p in pods if p.stuck_terminating(self.observed.now, margin)]

    def _count_workers(self, pods: list[PodView], created: int = 0) -> None:
        self.draft.fields["workers"] = {
            "active": sum(1 for p in pods if p.active) + created,
            "succeeded": sum(1 for p in pods if p.phase == "Succeeded"),
            "failed": sum(1 for p in pods if p.phase == "Failed"),
        }
