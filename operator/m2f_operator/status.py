"""Status bookkeeping: phases, conditions (lastTransitionTime moves only on change), transitions, events."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import datetime

from m2f_operator.policies.observe import format_time

PENDING = "Pending"
CREATED = "Created"
RUNNING = "Running"
RESTARTING = "Restarting"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
INVALID_SPEC = "InvalidSpec"
WAITING_FOR_TRAIN = "WaitingForTrain"
EXPERIMENT_CHANGED = "ExperimentChanged"  # a condition: spec.experiment edited where no CEL rule refused it
SHAPE_CHANGED = "GangShapeChanged"  # a condition: the shape was edited while pods ran (kept until suspended)
SCHEDULED = "Scheduled"  # a condition only: False with the scheduler's message while a pod cannot be placed
QUEUED = "Queued"  # the gang's pods are held by scheduling gates until a queue manager (Kueue) admits them
STARTED = "Started"  # a condition only: False with the kubelet's or scheduler's reason while a pod cannot start
FAILED_CREATE = "FailedCreate"  # the API refused a child; not terminal (a spec edit or the missing object heals)
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED})
# kstatus conditions (set_kstatus): what Flux, kstatus and Argo CD read as in progress / current / failed.
READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
STALLED_PHASES = (FAILED, INVALID_SPEC, FAILED_CREATE)

# Conditions that describe "what is happening now": only one of them is True at a time.
_EXCLUSIVE = (RUNNING, RESTARTING, SUSPENDED, WAITING_FOR_TRAIN, INVALID_SPEC, FAILED_CREATE, QUEUED)

# Fields of .status the operator owns (`progress` too: it reads rank 0's metrics itself); `kopf` is kopf's.
OWNED_FIELDS = (
    "phase", "message", "conditions", "observedGeneration", "restarts", "restartsCountTowardsLimit", "startTime",
    "completionTime", "workers", "artifacts", "metrics", "progress", "experimentDigest",
    "startupStartTime", "startupRetries", "nextAttemptTime", "gangShape",
)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class StatusDraft:
    """The status being derived during one reconcile; written once at its end."""

    fields: dict
    now: datetime
    events: list[Event] = field(default_factory=list)
    # What this draft owns and starts from (a sweep's status has its own: sweep/reconcile.py).
    owned_fields = OWNED_FIELDS
    initial = {"restarts": 0}

    @classmethod
    def start(cls, status: dict | None, generation: int | None, now: datetime) -> StatusDraft:
        owned = {key: copy.deepcopy(value) for key, value in (status or {}).items() if key in cls.owned_fields}
        owned.setdefault("phase", PENDING)
        owned.setdefault("conditions", [])
        for key, value in cls.initial.items():
            owned.setdefault(key, copy.deepcopy(list(value) if isinstance(value, tuple) else value))
        if generation is not None:
            owned["observedGeneration"] = generation
        return cls(owned, now)

    @property
    def phase(self) -> str:
        return self.fields["phase"]

    def condition(self, type_: str) -> dict | None:
        return next((c for c in self.fields["conditions"] if c["type"] == type_), None)

    def is_true(self, type_: str) -> bool:
        cond = self.condition(type_)
        return bool(cond and cond["status"] == "True")

    def set_condition(self, type_: str, status: bool, reason: str, message: str = "") -> None:
        value = "True" if status else "False"
        cond = self.condition(type_)
        if cond is None:
            cond = {"type": type_, "lastTransitionTime": format_time(self.now)}
            self.fields["conditions"].append(cond)
        elif cond["status"] != value:
            cond["lastTransitionTime"] = format_time(self.now)
        cond.update(status=value, reason=reason, message=message)

    def transition(self, phase: str, reason: str, message: str = "", warning: bool = False) -> None:
        """Move to `phase` (its condition True, other 'now' conditions False); an Event when it changes."""
        changed = self.fields["phase"] != phase
        self.fields["phase"] = phase
        self.fields["message"] = message
        if phase != PENDING:
            self.set_condition(phase, True, reason, message)
        for other in _EXCLUSIVE:
            if other != phase and self.is_true(other):
                self.set_condition(other, False, reason, message)
        if changed:
            self.emit(reason, message or f"phase {phase}", warning)
        if phase in TERMINAL_PHASES and not self.fields.get("completionTime"):
            self.fields["completionTime"] = format_time(self.now)

    def set_kstatus(self, generation: int | None, retrying: bool = False, waiting_for_a_person: bool = False) -> None:
        """The kstatus conventions GitOps tools read (Flux health checks, `kstatus`, cli-utils): `Reconciling`
        while the job is on its way, `Stalled` when it cannot go on without a person, `Ready` once it is where it
        was asked to be (finished, or suspended), each with the generation it describes. `waiting_for_a_person`:
        stalled in a phase that is not a failure (a sweep whose search was edited, with no trial left running)."""
        phase = self.phase
        condition = self.condition(phase) or {}
        reason, message = condition.get("reason") or phase, self.fields.get("message") or condition.get("message", "")
        # A refused create the operator retries by itself (quota, a missing ServiceAccount) is still on its way.
        stalled = (phase in STALLED_PHASES and not (phase == FAILED_CREATE and retrying)) or waiting_for_a_person
        states = {
            READY: phase in (SUCCEEDED, SUSPENDED),
            RECONCILING: phase not in (SUCCEEDED, SUSPENDED) and not stalled,
            STALLED: stalled,
        }
        for type_, value in states.items():
            self.set_condition(type_, value, reason, message)
            if generation is not None:
                self.condition(type_)["observedGeneration"] = generation

    def clear_exclusive(self, reason: str, message: str) -> None:
        """Every 'what is happening now' condition False (the phase went back to Pending)."""
        for other in _EXCLUSIVE:
            if self.is_true(other):
                self.set_condition(other, False, reason, message)

    def emit(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def patch_against(self, status: dict | None) -> dict:
        """The merge patch turning the observed status into this draft (empty: nothing to write)."""
        current = status or {}
        patch = {key: value for key, value in self.fields.items() if current.get(key) != value}
        for key in self.owned_fields:
            if key in current and key not in self.fields:
                patch[key] = None
        return patch


def parse_summary(message: str) -> dict:
    """The trainer's termination message: a JSON object {"metrics": {...}, "artifacts": {...}}, or not JSON."""
    try:
        summary = json.loads(message)
    except (TypeError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
