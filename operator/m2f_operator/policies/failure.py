"""Failure policy as data: ordered rules match the failed pod's exit code and disruption reasons to an action.

Actions: FailJob, RestartGang (the whole gang, counted against backoffLimit) and RestartGangIgnoringLimit
(not counted: a disruption is not the job's fault). Rules are evaluated in order, first match wins:

1. exit code 2 (the trainer's invalid spec or data) -> FailJob, always;
2. the user's `spec.failurePolicy.rules`;
3. `spec.permanentExitCodes` -> FailJob;
4. a disruption (evicted, preempted, node shutdown or lost, deleted by someone else) -> RestartGangIgnoringLimit;
5. with `spec.retryableExitCodes` set, any other exit code -> FailJob;
6. anything else -> RestartGang.

The first pod to fail (by finish time) is the cause and its action is taken, unless another failed pod's
action is FailJob: an explicit fatal signal is never hidden by a peer that merely lost its rendezvous.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from m2f_operator.builders import meta
from m2f_operator.policies.observe import STUCK_TERMINATING_MARGIN, PodView

DEFAULT_BACKOFF_LIMIT = 3
FAIL_JOB, RESTART_GANG, RESTART_IGNORING_LIMIT = "FailJob", "RestartGang", "RestartGangIgnoringLimit"
ACTIONS = (FAIL_JOB, RESTART_GANG, RESTART_IGNORING_LIMIT)
EXIT_CODE_OPERATORS = ("In", "NotIn")
# The disruption reasons a rule's `onReasons` can name, normalised from what the API and the kubelet report.
DISRUPTIONS = ("Evicted", "Preempted", "NodeShutdown", "NodeLost", "Deleted")
_STATUS_REASONS = {"Evicted": "Evicted", "Preempted": "Preempted", "Preempting": "Preempted",
                   "Shutdown": "NodeShutdown", "NodeShutdown": "NodeShutdown", "Terminated": "NodeShutdown",
                   "NodeLost": "NodeLost"}
# Reasons of the DisruptionTarget pod condition (Kubernetes 1.26+).
_DISRUPTION_TARGET_REASONS = {"PreemptionByScheduler": "Preempted", "PreemptionByKubeScheduler": "Preempted",
                              "EvictionByEvictionAPI": "Evicted", "TerminationByKubelet": "NodeShutdown",
                              "DeletionByTaintManager": "NodeLost", "DeletionByPodGC": "NodeLost"}
_REASONS = {FAIL_JOB: "PermanentError", RESTART_GANG: "GangRestart", RESTART_IGNORING_LIMIT: "GangRestartIgnoringLimit"}


@dataclass(frozen=True)
class FailureDecision:
    action: str  # "restart" | "fail"
    reason: str
    message: str
    force_delete: frozenset[str] = frozenset()
    counted: bool = True  # a restart that counts against backoffLimit


@dataclass(frozen=True)
class Failure:
    """What a rule can match about one failed (or lost) pod."""

    pod: str
    exit_code: int | None
    reasons: frozenset[str]  # normalised disruption reasons (DISRUPTIONS)
    conditions: frozenset[str]  # pod condition types that are True (e.g. DisruptionTarget)
    description: str


@dataclass(frozen=True)
class FailureRule:
    action: str
    exit_codes: tuple[str, frozenset[int]] | None = None  # (In | NotIn, codes)
    reasons: frozenset[str] = frozenset()  # any of these disruption reasons
    conditions: frozenset[str] = frozenset()  # any of these pod conditions
    name: str = ""

    def matches(self, failure: Failure) -> bool:
        if self.exit_codes is not None:
            operator, codes = self.exit_codes
            if failure.exit_code is None or (failure.exit_code in codes) != (operator == "In"):
                return False
        if self.reasons and not self.reasons & failure.reasons:
            return False
        return not self.conditions or bool(self.conditions & failure.conditions)

    @classmethod
    def from_spec(cls, rule: dict, index: int) -> FailureRule:
        """A validated `spec.failurePolicy.rules[index]` (validation.failure_policy_error checks it first)."""
        codes = rule.get("onExitCodes")
        return cls(
            action=rule["action"],
            exit_codes=(codes.get("operator", "In"), frozenset(codes["values"])) if codes else None,
            reasons=frozenset(rule.get("onReasons") or ()),
            conditions=frozenset(rule.get("onPodConditions") or ()),
            name=rule.get("name") or f"failurePolicy.rules[{index}]",
        )


def rules_for(spec: dict) -> list[FailureRule]:
    """The ordered rules of a resource: the built-in ones around the user's (see the module docstring)."""
    rules = [FailureRule(FAIL_JOB, ("In", frozenset(meta.BUILTIN_PERMANENT_EXIT_CODES)), name="exit code 2")]
    user = (spec.get("failurePolicy") or {}).get("rules") or []
    rules += [FailureRule.from_spec(rule, i) for i, rule in enumerate(user)]
    if spec.get("permanentExitCodes"):
        rules.append(FailureRule(FAIL_JOB, ("In", frozenset(spec["permanentExitCodes"])), name="permanentExitCodes"))
    rules.append(FailureRule(RESTART_IGNORING_LIMIT, reasons=frozenset(DISRUPTIONS), name="disruption"))
    rules.append(FailureRule(RESTART_IGNORING_LIMIT, conditions=frozenset({"DisruptionTarget"}), name="disruption"))
    if spec.get("retryableExitCodes"):
        rules.append(FailureRule(FAIL_JOB, ("NotIn", frozenset(spec["retryableExitCodes"])), name="retryableExitCodes"))
    rules.append(FailureRule(RESTART_GANG, name="default"))
    return rules


def failure_of(pod: PodView, now: datetime, stuck_margin: timedelta = STUCK_TERMINATING_MARGIN) -> Failure:
    reasons = set()
    if pod.reason in _STATUS_REASONS:
        reasons.add(_STATUS_REASONS[pod.reason])
    if "DisruptionTarget" in pod.conditions and pod.disruption_reason in _DISRUPTION_TARGET_REASONS:
        reasons.add(_DISRUPTION_TARGET_REASONS[pod.disruption_reason])
    # The operator deletes a gang's pods only after it moved on (another attempt, suspended, finished): a pod
    # of the current attempt being deleted was deleted by someone else (a drain, a person, a controller).
    if pod.terminating:
        reasons.add("NodeLost" if pod.stuck_terminating(now, stuck_margin) else "Deleted")
    return Failure(pod.name, pod.exit_code if pod.phase == "Failed" else None, frozenset(reasons), pod.conditions,
                   _describe(pod, now, stuck_margin))


def _describe(pod: PodView, now: datetime, stuck_margin: timedelta) -> str:
    if pod.phase != "Failed" and pod.stuck_terminating(now, stuck_margin):
        return f"pod {pod.name} is stuck terminating (node lost)"
    if pod.reason == "Evicted":
        return f"pod {pod.name} was evicted: {pod.message}".rstrip(": ")
    if pod.reason in _STATUS_REASONS or pod.disruption_reason in _DISRUPTION_TARGET_REASONS:
        why = pod.disruption_reason if pod.disruption_reason in _DISRUPTION_TARGET_REASONS else pod.reason
        code = f" and exited with code {pod.exit_code}" if pod.exit_code is not None else ""
        return f"pod {pod.name} was disrupted ({why}){code}"
    deleted = " was deleted and" if pod.terminating else ""
    if pod.exit_code is not None:
        detail = f": {pod.message}" if pod.message else ""
        return f"pod {pod.name}{deleted} exited with code {pod.exit_code}{detail}"
    return f"pod {pod.name}{deleted} failed{': ' + pod.message if pod.message else ''}"


def _failure_order(pod: PodView) -> tuple:
    """By finish time (second resolution, as the API has it), then replica index; no time (evicted) last."""
    return (pod.finished_at is None, pod.finished_at or datetime.min, pod.index)


def first_match(rules: list[FailureRule], failure: Failure) -> FailureRule:
    return next(rule for rule in rules if rule.matches(failure))  # the last rule matches everything


def decide_failure(spec: dict, counted_restarts: int, pods: list[PodView], now: datetime,
                   stuck_margin: timedelta = STUCK_TERMINATING_MARGIN,
                   vanished: tuple[str, ...] = ()) -> FailureDecision | None:
    """`pods` are the current attempt's pods; `counted_restarts` the gang restarts counted against backoffLimit;
    `vanished` the pods of a gang that was running and are gone (force-deleted with their lost node, or by
    hand): their peers would wait in the rendezvous until a collective timeout, so the gang restarts."""
    failed = sorted((pod for pod in pods if pod.phase == "Failed"), key=_failure_order)
    stuck = [pod for pod in pods if pod.stuck_terminating(now, stuck_margin) and pod.phase != "Succeeded"]
    if not failed and not stuck and not vanished:
        return None
    force = frozenset(pod.name for pod in stuck)
    failures = [failure_of(pod, now, stuck_margin) for pod in failed + [p for p in stuck if p.phase != "Failed"]]
    failures += [Failure(name, None, frozenset({"Deleted"}), frozenset(), f"pod {name} of the running gang disappeared")
                 for name in vanished]
    rules = rules_for(spec)
    matched = [(failure, first_match(rules, failure)) for failure in failures]
    # The cause (first to fail) decides, unless a later failure is explicitly fatal.
    failure, rule = next((pair for pair in matched if pair[1].action == FAIL_JOB), matched[0])
    named = f" (rule {rule.name})" if rule.name not in ("default", "exit code 2") else ""
    if rule.action == FAIL_JOB:
        return FailureDecision("fail", _REASONS[FAIL_JOB], failure.description + named, force)
    if rule.action == RESTART_IGNORING_LIMIT:
        message = f"{failure.description}{named}; not counted against backoffLimit"
        return FailureDecision("restart", _REASONS[rule.action], message, force, counted=False)
    backoff_limit = int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    if counted_restarts >= backoff_limit:
        message = f"{failure.description}{named}; backoffLimit {backoff_limit} reached"
        return FailureDecision("fail", "BackoffLimitExceeded", message, force)
    return FailureDecision("restart", _REASONS[RESTART_GANG], failure.description + named, force)
