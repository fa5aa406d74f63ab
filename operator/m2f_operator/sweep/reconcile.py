"""One sweep reconcile as a pure function: record what the trials did, stop the hopeless, start the next.

The status is written once, after the creates and before the deletes. Its `history` is the durable record of
the search (every trial's parameters, state, intermediate values, objective value and prune reason); the Optuna
study is rebuilt from it (m2f_spec.sweep.study), so an operator restart loses, duplicates and re-runs nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime

from m2f_operator import status as st
from m2f_operator import validation
from m2f_operator.builders import meta
from m2f_operator.policies.observe import format_time
from m2f_operator.sweep.builders import MAX_SWEEP_NAME_LENGTH, build_trial, trial_name
from m2f_spec.errors import SpecError
from m2f_spec.sweep import study
from m2f_spec.sweep.settings import SweepSettings, settings_from

NOT_TRAINING = (*st.TERMINAL_PHASES, st.INVALID_SPEC, st.SUSPENDED)  # trial phases in which nothing trains
SEARCH_CHANGED = "SearchChanged"  # a condition: the search was edited after trials started (not applied)
# The fields that define the search: fixed once the first trial exists (maxTrials, parallelTrials and
# maxFailedTrials may change at any time).
SEARCH_FIELDS = ("template", "parameters", "objective", "algorithm", "algorithmSettings", "earlyStopping", "seed")
OWNED_FIELDS = ("phase", "message", "conditions", "observedGeneration", "startTime", "completionTime", "trials",
                "bestTrial", "history", "searchDigest")


class SweepStatusDraft(st.StatusDraft):
    owned_fields = OWNED_FIELDS
    initial = {"history": ()}  # immutable: start() copies it into each draft


@dataclass
class SweepObserved:
    body: dict
    trials: list[dict]  # child Mask2FormerTrains (this sweep's uid is their controller)
    now: datetime


@dataclass
class SweepPlan:
    creates: list[dict] = field(default_factory=list)  # before the status: it never claims a missing trial
    deletes: list[str] = field(default_factory=list)  # after the status: a stopped trial is recorded first
    status_patch: dict = field(default_factory=dict)
    events: list[st.Event] = field(default_factory=list)
    phase: str = st.PENDING
    invalid_spec: str | None = None


def search_digest(spec: dict) -> str:
    search = {key: spec.get(key) for key in SEARCH_FIELDS}
    return hashlib.sha256(json.dumps(search, sort_keys=True).encode()).hexdigest()[:16]


def sweep_error(body: dict) -> tuple[SweepSettings | None, str | None]:
    """(settings, None) for a sweep that can run, else (None, the first problem naming its field)."""
    name = body["metadata"]["name"]
    if len(name) > MAX_SWEEP_NAME_LENGTH or not meta.NAME_PATTERN.match(name):
        return None, (f"metadata.name: {name!r} must be a DNS-1035 label of at most {MAX_SWEEP_NAME_LENGTH} "
                      "characters (trials are named <sweep>-NNN)")
    spec = body.get("spec") or {}
    template = spec.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("experiment"), dict):
        return None, "spec.template.experiment: required (the trials' experiment spec)"
    if template.get("suspend"):
        return None, "spec.template.suspend: trials cannot start suspended"
    if template.get("ttlSecondsAfterFinished") is not None:
        return None, ("spec.template.ttlSecondsAfterFinished: trials stay until their sweep is deleted (the sweep "
                      "reads their results; a trial deleted early would count as failed)")
    probe = {"apiVersion": meta.API_VERSION, "kind": "Mask2FormerTrain",
             "metadata": {"name": trial_name(body, 0), "namespace": body["metadata"].get("namespace", "")},
             "spec": template}
    error = validation.spec_error(probe)
    if error:
        return None, "spec.template." + error.removeprefix("spec.")
    try:
        search = {k: v for k, v in spec.items() if k not in ("template", "suspend")}
        return settings_from(search, template["experiment"]), None
    except SpecError as exc:
        return None, str(exc)


def reconcile_sweep(observed: SweepObserved) -> SweepPlan:
    body, now = observed.body, observed.now
    spec, status = body.get("spec") or {}, body.get("status") or {}
    draft = SweepStatusDraft.start(status, body["metadata"].get("generation"), now)
    plan = SweepPlan()
    children = _children_by_number(observed.trials)
    if draft.phase in st.TERMINAL_PHASES:
        plan.deletes = _stopped_but_present(draft.fields["history"], children)
        return _finish(plan, draft, status)

    # 1. The search: fixed once trials exist (the digest is taken when the first one starts).
    history = [dict(record) for record in draft.fields["history"]]
    changed = bool(history) and draft.fields.get("searchDigest") not in (None, search_digest(spec))
    settings, error = sweep_error(body)
    if changed:
        message = ("the search (template, parameters, objective, algorithm, earlyStopping, seed) is fixed once trials "
                   "exist: no new trial starts until the edit is reverted (or create a new sweep)")
        if not _was_true(status, SEARCH_CHANGED):
            draft.emit(SEARCH_CHANGED, message, warning=True)
        draft.set_condition(SEARCH_CHANGED, True, SEARCH_CHANGED, message)
    elif draft.condition(SEARCH_CHANGED):
        draft.set_condition(SEARCH_CHANGED, False, "Reverted", "the search is the one the trials started with")
    if settings is None:
        # Nothing is lost: the history stays, running trials go on, and reverting the edit resumes the sweep.
        draft.transition(st.INVALID_SPEC, "InvalidSpec", error, warning=True)
        draft.set_kstatus(body["metadata"].get("generation"))
        plan.invalid_spec = error
        return _finish(plan, draft, status)
    if not history:
        draft.fields["searchDigest"] = search_digest(spec)

    # 2. What the trials did.
    history = _adopt(history, children)
    plan.deletes = _stopped_but_present(history, children)
    for record in history:
        # An edited search leaves the trials unread: their results are recorded with the search they ran under,
        # once the edit is reverted.
        if record["state"] == study.RUNNING and not changed:
            _observe(record, children.get(record["number"]), settings, history, plan, draft, now)

    # 3. Too many failures end the sweep; otherwise start what the budget and the slots allow.
    failed = sum(1 for r in history if r["state"] == study.FAILED)
    if failed > settings.max_failed:
        for record in history:
            if record["state"] == study.RUNNING:
                _end(record, study.STOPPED, "SweepFailed", "stopped: the sweep failed", now)
                plan.deletes.append(record["name"])
    elif not changed and not spec.get("suspend"):
        while study.can_start(history, settings):
            number = len(history)
            parameters = study.suggest(settings, history)
            seen = study.seen_by(number, settings.parallel)
            plan.creates.append(build_trial(body, number, parameters, seen))
            history.append({"number": number, "name": trial_name(body, number), "parameters": parameters,
                            "state": study.RUNNING, "seen": seen, "intermediate": [],
                            "startTime": format_time(now)})
            draft.emit("TrialCreated", f"trial {trial_name(body, number)}: {_show(parameters)}")

    # 4. The status.
    draft.fields["history"] = history
    # With an edited search the records are not updated, so the trials still training are counted from the children.
    # A trial that ended (or waits for a person itself: InvalidSpec, suspended by hand) does not train.
    training = sum(1 for r in history if r["state"] == study.RUNNING and r["number"] in children
                   and (children[r["number"]].get("status") or {}).get("phase") not in NOT_TRAINING)
    _derive(draft, history, settings, failed, body, training if changed else None)
    return _finish(plan, draft, status)


def _stopped_but_present(history: list[dict], children: dict[int, dict]) -> list[str]:
    """Trials recorded as stopped whose delete did not happen (the operator stopped in between)."""
    return [r["name"] for r in history if r["state"] in (study.PRUNED, study.STOPPED) and r["number"] in children]


def _was_true(status: dict, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in status.get("conditions") or [])


def _children_by_number(trials: list[dict]) -> dict[int, dict]:
    out = {}
    for trial in trials:
        label = (trial["metadata"].get("labels") or {}).get(meta.LABEL_TRIAL, "")
        if label.isdigit() and not trial["metadata"].get("deletionTimestamp"):
            out[int(label)] = trial
    return out


def _adopt(history: list[dict], children: dict[int, dict]) -> list[dict]:
    """A trial created by a reconcile that could not write its status (an operator restart in between) is taken
    back from its own annotations, in number order, so it is neither lost nor created twice."""
    while len(history) in children:
        child = children[len(history)]
        annotations = child["metadata"].get("annotations") or {}
        try:
            parameters = json.loads(annotations.get(meta.ANNOTATION_TRIAL_PARAMETERS, "{}"))
            seen = int(annotations.get(meta.ANNOTATION_TRIAL_SEEN, "0"))
        except ValueError:
            break
        history.append({"number": len(history), "name": child["metadata"]["name"], "parameters": parameters,
                        "state": study.RUNNING, "seen": seen, "intermediate": [],
                        "startTime": child["metadata"].get("creationTimestamp")})
    return history


def _observe(record: dict, child: dict | None, settings: SweepSettings, history: list[dict], plan: SweepPlan,
             draft: SweepStatusDraft, now: datetime) -> None:
    """Record what a running trial did since the last reconcile; prune it when it is hopeless."""
    if child is None:
        _end(record, study.FAILED, "TrialDeleted", "its Mask2FormerTrain was deleted before it finished", now)
        draft.emit("TrialFailed", f"trial {record['name']}: {record['message']}", warning=True)
        return
    child_status = child.get("status") or {}
    phase, metric = child_status.get("phase"), settings.metric
    validation_ = (child_status.get("progress") or {}).get("validation") or {}
    value, epoch = (validation_.get("metrics") or {}).get(metric), validation_.get("epoch")
    seen_epochs = {step for step, _ in record["intermediate"]}
    if isinstance(value, (int, float)) and isinstance(epoch, int) and epoch not in seen_epochs:
        record["intermediate"] = sorted([*record["intermediate"], [epoch, float(value)]])
        new_value = True
    else:
        new_value = False
    if phase == st.SUCCEEDED:
        metrics = child_status.get("metrics") or {}
        if metric not in metrics:
            _end(record, study.FAILED, "MetricMissing",
                 f"the trial reported no {metric} (it reported: {', '.join(sorted(metrics)) or 'nothing'})", now)
            draft.emit("TrialFailed", f"trial {record['name']}: {record['message']}", warning=True)
            return
        record["value"] = float(metrics[metric])
        _end(record, study.SUCCEEDED, "TrialSucceeded", f"{metric} {record['value']:.4g}", now)
        draft.emit("TrialSucceeded", f"trial {record['name']}: {metric} {record['value']:.4g}")
    elif phase in (st.FAILED, st.INVALID_SPEC):
        _end(record, study.FAILED, "Trial" + phase, child_status.get("message") or phase, now)
        draft.emit("TrialFailed", f"trial {record['name']}: {record['message']}", warning=True)
    elif new_value:
        reason = study.prune_reason(settings, history, record)
        if reason:
            _end(record, study.PRUNED, "EarlyStopped", reason, now)
            plan.deletes.append(record["name"])
            draft.emit("TrialPruned", f"trial {record['name']}: {reason}")


def _end(record: dict, state: str, reason: str, message: str, now: datetime) -> None:
    record.update(state=state, reason=reason, message=message, completionTime=format_time(now))


def _derive(draft: SweepStatusDraft, history: list[dict], settings: SweepSettings, failed: int, body: dict,
            training_under_an_edited_search: int | None) -> None:
    counts = {state: sum(1 for r in history if r["state"] == state)
              for state in (study.RUNNING, study.SUCCEEDED, study.PRUNED, study.FAILED)}
    draft.fields["trials"] = {"total": len(history), "running": counts[study.RUNNING],
                              "succeeded": counts[study.SUCCEEDED], "pruned": counts[study.PRUNED],
                              "failed": counts[study.FAILED] + sum(1 for r in history if r["state"] == study.STOPPED)}
    top = study.best(history, settings.goal)
    suspended = bool((body.get("spec") or {}).get("suspend"))
    training = counts[study.RUNNING] if training_under_an_edited_search is None else training_under_an_edited_search
    if top is not None:
        draft.fields["bestTrial"] = {"name": top["name"], "number": top["number"], "parameters": top["parameters"],
                                     "metric": settings.metric, "value": top["value"]}
    else:
        draft.fields.pop("bestTrial", None)
    draft.fields.setdefault("startTime", format_time(draft.now))
    if failed > settings.max_failed:
        draft.transition(st.FAILED, "TooManyFailedTrials",
                         f"{failed} trials failed (maxFailedTrials {settings.max_failed})", warning=True)
    elif len(history) >= settings.trial_budget and not counts[study.RUNNING]:
        if top is None:
            draft.transition(st.FAILED, "NoTrialSucceeded", f"none of {len(history)} trials succeeded", warning=True)
        else:
            draft.transition(st.SUCCEEDED, "SweepSucceeded",
                             f"{len(history)} trials; best {top['name']}: {settings.metric} {top['value']:.4g}")
    elif training_under_an_edited_search is not None and (training or not suspended):
        # Still Running (the trials go on); Stalled once none trains: from then on only a person moves it on.
        draft.transition(st.RUNNING, SEARCH_CHANGED,
                         f"the search was edited after trials started: {training_under_an_edited_search} training, "
                         f"{len(history)}/{settings.trial_budget} started; revert the edit to go on")
    elif training or not suspended:
        best_text = f"; best {top['name']}: {settings.metric} {top['value']:.4g}" if top else ""
        draft.transition(st.RUNNING, "TrialsRunning",
                         f"{counts[study.RUNNING]} running, {len(history)}/{settings.trial_budget} started{best_text}")
    else:
        draft.transition(st.SUSPENDED, "Suspended", f"spec.suspend is true: {len(history)}/{settings.trial_budget} "
                                                    "trials started, none running")
    draft.set_kstatus(body["metadata"].get("generation"),
                      waiting_for_a_person=draft.phase == st.RUNNING and training_under_an_edited_search == 0)


def _finish(plan: SweepPlan, draft: SweepStatusDraft, status: dict) -> SweepPlan:
    plan.status_patch = draft.patch_against(status)
    plan.events = draft.events
    plan.phase = draft.phase
    return plan


def _show(parameters: dict) -> str:
    return ", ".join(f"{path}={value:.4g}" if isinstance(value, float) else f"{path}={value}"
                     for path, value in parameters.items())


