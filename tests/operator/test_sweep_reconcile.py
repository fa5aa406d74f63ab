"""The sweep reconcile as a pure function: trials started, observed, pruned, failed, adopted; the search fixed."""

from __future__ import annotations

import copy
import math

import pytest
from reconcile_factories import NOW, TINY_EXPERIMENT

from m2f_operator import status as st
from m2f_operator.builders import meta
from m2f_operator.sweep.reconcile import SweepObserved, reconcile_sweep

LR = {"type": "float", "min": 1e-5, "max": 1e-2, "log": True}


def sweep(status: dict | None = None, name: str = "hp", **spec) -> dict:
    body = {"apiVersion": meta.API_VERSION, "kind": "Mask2FormerSweep",
            "metadata": {"name": name, "namespace": "ml", "uid": "0123456789abcdef", "generation": 1},
            "spec": {"template": {"experiment": copy.deepcopy(TINY_EXPERIMENT)},
                     "parameters": {"train.optim.lr": LR}, "objective": {"metric": "PQ", "goal": "maximize"},
                     "maxTrials": 4, "parallelTrials": 2, "seed": 3, **spec}}
    if status is not None:
        body["status"] = status
    return body


def child(manifest: dict, phase: str = "Running", validation: tuple[int, float] | None = None,
          metrics: dict | None = None) -> dict:
    """A created trial as the API returns it, in `phase`, with its last validation and final metrics."""
    body = copy.deepcopy(manifest)
    body["metadata"]["uid"] = "uid-" + body["metadata"]["name"]
    status: dict = {"phase": phase}
    if validation:
        status["progress"] = {"epoch": validation[0], "validation": {"epoch": validation[0],
                                                                     "metrics": {"PQ": validation[1], "SQ": 0.5}}}
    if metrics is not None:
        status["metrics"] = metrics
    body["status"] = status
    return body


def run(body: dict, trials: list[dict] = ()):
    plan = reconcile_sweep(SweepObserved(body, list(trials), NOW))
    status = {**(body.get("status") or {}), **plan.status_patch}
    return plan, {k: v for k, v in status.items() if v is not None}


def test_first_reconcile_starts_parallel_trials_inside_the_space():
    plan, status = run(sweep())
    names = [m["metadata"]["name"] for m in plan.creates]
    assert names == ["hp-000", "hp-001"]
    for manifest in plan.creates:
        lr = manifest["spec"]["experiment"]["train"]["optim"]["lr"]
        assert 1e-5 <= lr <= 1e-2
        assert manifest["spec"]["experiment"]["model"] == TINY_EXPERIMENT["model"]  # the template kept
        assert manifest["metadata"]["labels"][meta.LABEL_SWEEP] == "hp"
        assert manifest["metadata"]["ownerReferences"][0]["kind"] == "Mask2FormerSweep"
        assert manifest["spec"]["resultsDir"].startswith("/results/sweep/hp-01234567/")
    assert status["phase"] == st.RUNNING and status["trials"] == {
        "total": 2, "running": 2, "succeeded": 0, "pruned": 0, "failed": 0}
    assert [r["seen"] for r in status["history"]] == [0, 0]
    assert [e.reason for e in plan.events].count("TrialCreated") == 2


@pytest.mark.parametrize("parameters, message", [
    ({"train.optim.lrr": LR}, "spec.parameters[train.optim.lrr]: unknown experiment path"),
    ({"train.optim.lr": {"type": "float", "min": 0.0, "max": 1e-2}},
     "spec.parameters[train.optim.lr]: value 0.0 is not accepted by the experiment schema"),
    ({"train.optim.momentum": {"type": "float", "min": 0.5, "max": 1.5}},
     "spec.parameters[train.optim.momentum]: value 1.5 is not accepted"),
    ({"model.mask_former.num_object_queries": {"type": "categorical", "values": []}},
     "spec.parameters[model.mask_former.num_object_queries]: values: a non-empty list is required"),
    ({"model.mask_former.num_object_queries": {"type": "float", "min": 10, "max": 20}},
     "is an integer field; use type: int"),
    ({"train.optim": {"type": "float", "min": 1, "max": 2}}, "names a section, not a value"),
    ({"model.mask_former.hidden_dim": {"type": "int", "min": 250, "max": 256}},
     "spec.parameters[model.mask_former.hidden_dim]: value 250 is not accepted"),
    ({"train.optim.lr": {"type": "float", "min": 0.0, "max": 1e-2, "log": True}}, "log: true needs min > 0"),
])
def test_invalid_search_space_is_invalid_spec_naming_the_parameter_and_starts_nothing(parameters, message):
    plan, status = run(sweep(parameters=parameters))
    assert plan.creates == [] and status["phase"] == st.INVALID_SPEC
    assert message in status["message"] and message in plan.invalid_spec
    assert any(e.type == "Warning" and e.reason == "InvalidSpec" for e in plan.events)
    assert status["history"] == []


@pytest.mark.parametrize("spec, message", [
    ({"objective": {"metric": "PQ", "goal": "up"}}, "spec.objective.goal: 'up' is not one of maximize, minimize"),
    ({"earlyStopping": {"algorithm": "asha"}}, "spec.earlyStopping.algorithm: 'asha'"),
    ({"algorithm": "grid"}, "algorithm grid needs values or a step for a float range"),
    ({"template": {"experiment": {"train": {"num_epochs": 0}}}}, "spec.template.experiment: train.num_epochs"),
    ({"template": {"experiment": TINY_EXPERIMENT, "nodes": 0}}, "spec.template.nodes"),
    ({"template": {"experiment": TINY_EXPERIMENT, "ttlSecondsAfterFinished": 0}},
     "spec.template.ttlSecondsAfterFinished: trials stay until their sweep is deleted"),
    ({"objective": {"metric": "Pq"}}, "spec.objective.metric: 'Pq' is not a validation metric of model.mode panoptic"),
    ({"maxTrials": 1000}, "spec.maxTrials: an integer in [1, 999] is required"),
    ({"algorithm": "grid", "parameters": {"model.mask_former.num_object_queries": {"type": "int", "min": 1,
                                                                                    "max": 20000}}},
     "algorithm grid spans 20000 points"),
])
def test_invalid_sweep_settings_name_their_field(spec, message):
    plan, status = run(sweep(**spec))
    assert plan.creates == [] and status["phase"] == st.INVALID_SPEC and message in status["message"]


def test_a_finished_trial_is_recorded_and_the_next_one_starts_with_what_it_learned():
    plan, status = run(sweep(parallelTrials=1))
    (first,) = plan.creates
    plan, status = run(sweep(status, parallelTrials=1), [child(first, st.SUCCEEDED, (2, 0.4), {"PQ": 0.41})])
    record = status["history"][0]
    assert record["state"] == "Succeeded" and record["value"] == 0.41 and record["intermediate"] == [[2, 0.4]]
    assert [m["metadata"]["name"] for m in plan.creates] == ["hp-001"]
    assert status["history"][1]["seen"] == 1  # trial 1 learned from trial 0
    assert status["bestTrial"] == {"name": "hp-000", "number": 0, "parameters": record["parameters"],
                                   "metric": "PQ", "value": 0.41}


def test_a_trial_worse_than_the_median_is_pruned_and_deleted():
    spec = {"parallelTrials": 1, "earlyStopping": {"algorithm": "median", "startupTrials": 1}}
    plan, status = run(sweep(**spec))
    first = plan.creates[0]
    plan, status = run(sweep(status, **spec), [child(first, st.SUCCEEDED, (1, 0.5), {"PQ": 0.6})])
    second = plan.creates[0]
    status["history"][0]["intermediate"] = [[1, 0.5], [2, 0.6]]
    plan, status = run(sweep(status, **spec), [child(second, validation=(1, 0.2))])
    record = status["history"][1]
    assert record["state"] == "Pruned" and plan.deletes == ["hp-001"]
    assert "epoch 1" in record["message"] and "median 0.5" in record["message"]
    assert status["trials"]["pruned"] == 1 and any(e.reason == "TrialPruned" for e in plan.events)
    # A trial at the median goes on.
    third = plan.creates[0]
    plan, status = run(sweep(status, **spec), [child(third, validation=(1, 0.55))])
    assert status["history"][2]["state"] == "Running" and plan.deletes == []


def test_deleted_and_failed_trials_count_and_too_many_fail_the_sweep_stopping_the_rest():
    spec = {"maxFailedTrials": 0, "maxTrials": 4}
    plan, status = run(sweep(**spec))
    running = plan.creates[1]
    plan, status = run(sweep(status, **spec), [child(running)])  # hp-000's Train is gone
    assert status["history"][0]["state"] == "Failed" and status["history"][0]["reason"] == "TrialDeleted"
    assert status["phase"] == st.FAILED and "maxFailedTrials 0" in status["message"]
    assert status["history"][1]["state"] == "Stopped" and plan.deletes == ["hp-001"] and plan.creates == []


def test_a_trial_that_reports_no_objective_fails_naming_what_it_reported():
    plan, status = run(sweep(parallelTrials=1, maxTrials=1))
    plan, status = run(sweep(status, parallelTrials=1, maxTrials=1),
                       [child(plan.creates[0], st.SUCCEEDED, metrics={"mIoU": 0.3})])
    assert status["history"][0]["reason"] == "MetricMissing" and "mIoU" in status["history"][0]["message"]
    assert status["phase"] == st.FAILED and "none of 1 trials succeeded" in status["message"]


def test_a_trial_created_before_a_lost_status_write_is_adopted_not_created_again():
    plan, _ = run(sweep())
    # The operator died after creating the trials and before writing the status.
    again, status = run(sweep(), [child(m) for m in plan.creates])
    assert again.creates == []
    assert [(r["name"], r["parameters"]) for r in status["history"]] == [
        (m["metadata"]["name"], {"train.optim.lr": m["spec"]["experiment"]["train"]["optim"]["lr"]})
        for m in plan.creates]


def test_the_search_is_fixed_once_trials_exist():
    plan, status = run(sweep(parallelTrials=1))
    edited = sweep(status, parallelTrials=1, seed=4)
    edited["metadata"]["generation"] = 2
    plan2, status2 = run(edited, [child(plan.creates[0], st.SUCCEEDED, metrics={"PQ": 0.3})])
    # Neither a new trial nor a result read with the edited search (it would enter the record for good).
    assert plan2.creates == [] and status2["history"][0]["state"] == "Running"
    changed = next(c for c in status2["conditions"] if c["type"] == "SearchChanged")
    assert changed["status"] == "True" and any(e.reason == "SearchChanged" for e in plan2.events)
    # Nothing trains any more: the sweep waits for a person, and says so to GitOps tools.
    assert status2["phase"] == st.RUNNING and "revert the edit" in status2["message"]
    assert {c["type"]: c["status"] for c in status2["conditions"]}["Stalled"] == "True"
    _, still_training = run(edited, [child(plan.creates[0], validation=(1, 0.2))])
    assert {c["type"]: c["status"] for c in still_training["conditions"]}["Stalled"] == "False"
    assert "1 training" in still_training["message"]
    # A trial that waits for a person itself (InvalidSpec) does not train either.
    _, invalid_trial = run(edited, [child(plan.creates[0], st.INVALID_SPEC)])
    assert {c["type"]: c["status"] for c in invalid_trial["conditions"]}["Stalled"] == "True"
    # A suspended sweep that nothing runs is what was asked for: Suspended, edit or not.
    suspended = sweep(status, parallelTrials=1, seed=4, suspend=True)
    _, idle = run(suspended, [child(plan.creates[0], st.SUCCEEDED, metrics={"PQ": 0.3})])
    assert idle["phase"] == st.SUSPENDED, idle
    assert {c["type"]: c["status"] for c in idle["conditions"]}["Stalled"] == "False"
    # Reverted: the sweep goes on.
    plan3, status3 = run(sweep(status2, parallelTrials=1), [child(plan.creates[0], st.SUCCEEDED, metrics={"PQ": 0.3})])
    assert status3["history"][0]["state"] == "Succeeded" and status3["history"][0]["value"] == 0.3
    assert [m["metadata"]["name"] for m in plan3.creates] == ["hp-001"]
    assert next(c for c in status3["conditions"] if c["type"] == "SearchChanged")["status"] == "False"


def test_suspend_starts_no_trial_but_follows_the_running_ones():
    plan, status = run(sweep(parallelTrials=1))
    first = plan.creates[0]
    plan, status = run(sweep(status, parallelTrials=1, suspend=True), [child(first, validation=(1, 0.2))])
    assert plan.creates == [] and status["phase"] == st.RUNNING and status["history"][0]["intermediate"] == [[1, 0.2]]
    plan, status = run(sweep(status, parallelTrials=1, suspend=True), [child(first, st.SUCCEEDED, metrics={"PQ": 0.3})])
    assert plan.creates == [] and status["phase"] == st.SUSPENDED and status["history"][0]["state"] == "Succeeded"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["status"] == "True"
    plan, status = run(sweep(status, parallelTrials=1), [child(first, st.SUCCEEDED, metrics={"PQ": 0.3})])
    assert [m["metadata"]["name"] for m in plan.creates] == ["hp-001"] and status["phase"] == st.RUNNING


def _objective(parameters: dict, epoch: int) -> float:
    """A fake trainer's learning curve: best near lr 1e-3."""
    lr = parameters["train.optim.lr"]
    return round(epoch / 3 * math.exp(-abs(math.log10(lr) + 3)), 6)


def _simulate(lose_status_every: int | None) -> list[dict]:
    """A whole sweep driven by a fake trainer (one epoch per step, trials finishing in a varying order);
    `lose_status_every`: every n-th reconcile's status write is lost (an operator killed after its creates)."""
    spec = {"maxTrials": 6, "parallelTrials": 2, "earlyStopping": {"algorithm": "median", "startupTrials": 1}}
    status, children, epochs, tick = None, {}, {}, 0
    for _ in range(200):
        tick += 1
        observed = [child(m, *state) for m, state in children.values()]
        plan, new_status = run(sweep(status, **spec), observed)
        for manifest in plan.creates:
            children[manifest["metadata"]["name"]] = (manifest, ("Running",))
            epochs[manifest["metadata"]["name"]] = 0
        if lose_status_every is not None and not tick % lose_status_every:
            continue  # killed after the creates: neither the status nor the deletes that follow it happen
        status = new_status
        for name in plan.deletes:
            children.pop(name, None)
        if new_status["phase"] in (st.SUCCEEDED, st.FAILED):
            return new_status["history"]
        # The fake trainer: running trials advance one epoch, in an order that changes with the tick.
        for name in sorted(children, reverse=bool(tick % 2)):
            manifest, state = children[name]
            if state[0] != "Running":
                continue
            epochs[name] += 1
            params = {"train.optim.lr": manifest["spec"]["experiment"]["train"]["optim"]["lr"]}
            value = _objective(params, epochs[name])
            done = epochs[name] == 3
            children[name] = (manifest, (st.SUCCEEDED if done else "Running", (epochs[name], value),
                                         {"PQ": value} if done else None))
            break
    raise AssertionError("the sweep did not finish")


def test_a_sweep_whose_status_writes_are_lost_decides_exactly_like_an_uninterrupted_one():
    uninterrupted = _simulate(None)
    interrupted = _simulate(3)
    assert len(uninterrupted) == 6 and any(r["state"] == "Pruned" for r in uninterrupted)
    key = [(r["name"], r["parameters"], r["state"], r.get("value")) for r in uninterrupted]
    assert [(r["name"], r["parameters"], r["state"], r.get("value")) for r in interrupted] == key


def test_the_example_sweep_conforms_to_its_crd_and_its_trials_to_the_train_crd(repo_root):
    import jsonschema
    import kubernetes_validate
    import yaml
    from test_crds import _openapi_to_jsonschema

    from m2f_operator import crds
    from m2f_operator.builders import build_gang, build_stages
    from m2f_operator.validation import spec_error

    body = yaml.safe_load((repo_root / "examples" / "sweep.yaml").read_text())
    schema = crds.build_crd(meta.SWEEP)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(body, _openapi_to_jsonschema(schema))
    body["metadata"].update(namespace="ml", uid="0123456789abcdef", generation=1)
    plan, status = run(body)
    assert status["phase"] == st.RUNNING and len(plan.creates) == body["spec"]["parallelTrials"]
    train_schema = crds.build_crd(meta.KINDS["Mask2FormerTrain"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for trial in plan.creates:
        jsonschema.validate(trial, _openapi_to_jsonschema(train_schema))
        trial["metadata"]["uid"] = "trial-uid"
        assert spec_error(trial) is None
        for stage in build_stages(trial):
            for pod in build_gang(trial, stage, attempt=0):
                kubernetes_validate.validate(pod, "1.30", strict=True)


@pytest.mark.parametrize("retry", [True, False])
def test_a_refused_trial_is_asked_again_or_recorded_failed(retry):
    """A create refused for a while (a quota, garbage collection) leaves no trace: the resync asks again. One the
    API refuses for what it is (422) would be refused again: it is a failed trial."""
    from m2f_operator.policies.creation import CreateBlocked
    from m2f_operator.sweep.handlers import _apply

    class Refusing:
        def __init__(self):
            self.created, self.patched, self.deleted, self.events = [], [], [], []

        def create(self, manifest):
            if manifest["metadata"]["name"] == "hp-001":
                return CreateBlocked("Mask2FormerTrain", "hp-001", "FailedCreate", "refused: test", retry=retry)
            self.created.append(manifest["metadata"]["name"])
            return "created"

        def patch_status(self, plural, namespace, name, patch):
            self.patched.append(patch)

        def delete_resource(self, plural, namespace, name):
            self.deleted.append(name)

        def post_event(self, body, event):
            self.events.append((event.type, event.reason))

    body = sweep()
    cluster = Refusing()
    _apply(cluster, body, reconcile_sweep(SweepObserved(body, [], NOW)))
    (patch,) = cluster.patched
    assert cluster.created == ["hp-000"] and ("Warning", "FailedCreate") in cluster.events
    if retry:
        assert [r["name"] for r in patch["history"]] == ["hp-000"] and patch["trials"]["total"] == 1
    else:
        assert [(r["name"], r["state"]) for r in patch["history"]] == [("hp-000", "Running"), ("hp-001", "Failed")]
        assert patch["history"][1]["reason"] == "FailedCreate" and patch["trials"]["failed"] == 1
