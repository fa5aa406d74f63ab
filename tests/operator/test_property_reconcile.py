"""Property test: random custom resources never crash the reconcile; each ends Running or InvalidSpec."""

from __future__ import annotations

import copy
from datetime import timedelta

import kubernetes_validate
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reconcile_factories import NOW, TINY_EXPERIMENT

from m2f_operator.builders import meta
from m2f_operator.reconcile import Observed, reconcile

WILD_INT = st.one_of(st.none(), st.integers(-3, 12), st.text(max_size=3), st.booleans())
WILD_EXIT_CODES = st.one_of(st.none(), st.lists(st.integers(-1, 300), max_size=3), st.text(max_size=2))
EXIT_CODES = st.lists(st.sampled_from([1, 3, 42, 137, 143]), max_size=3, unique=True)
EXPERIMENT_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["model.mode", "model.sem_seg_head.num_classes", "train.num_epochs", "train.optim.lr",
                         "dataset.train.batch_size", "model.bogus_key", "train"]),
        st.one_of(st.none(), st.integers(-2, 300), st.sampled_from(["panoptic", "instance", "nope", ""]),
                  st.floats(-1, 1, allow_nan=False)),
    ),
    max_size=2,
)


@st.composite
def custom_resources(draw):
    kind = draw(st.sampled_from(sorted(meta.KINDS)))
    # One resource in four is wild (any type anywhere); the others are plausible user input.
    wild = draw(st.integers(0, 3)) == 0
    experiment = copy.deepcopy(TINY_EXPERIMENT)
    for dotted, value in draw(EXPERIMENT_EDITS) if wild else []:
        *parents, leaf = dotted.split(".")
        node = experiment
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = value
    spec = {"experiment": experiment}
    for key, strategy in {
        "nodes": WILD_INT if wild else st.integers(1, 4) if kind == "Mask2FormerTrain" else st.just(1),
        "gpusPerNode": WILD_INT if wild else st.integers(0, 8),
        "backoffLimit": WILD_INT if wild else st.integers(0, 5),
        "ttlSecondsAfterFinished": WILD_INT if wild else st.integers(0, 100),
        "permanentExitCodes": WILD_EXIT_CODES if wild else EXIT_CODES,
        "retryableExitCodes": WILD_EXIT_CODES if wild else EXIT_CODES,
        "cleanPodPolicy": st.sampled_from(["Running", "All", "None", "Sometimes"] if wild else ["Running", "All", "None"]),
        "activeDeadlineSeconds": st.one_of(st.none(), st.integers(-5, 5)) if wild else st.integers(60, 10**6),
        "resources": st.fixed_dictionaries({}, optional={"requests": st.fixed_dictionaries(
            {}, optional={"cpu": st.sampled_from([1, "500m", "2"]), "memory": st.sampled_from(["1Gi", 2**30])})}),
        "podLabels": st.dictionaries(st.sampled_from(["team", "app.kubernetes.io/part-of"]), st.sampled_from(["a", "b-1"]), max_size=2),
    }.items():
        value = draw(strategy)
        if value is not None and draw(st.booleans()):
            spec[key] = value
    if kind == "Mask2FormerExport":
        choice = draw(st.sampled_from(["checkpoint", "trainRef", "both", "neither"] if wild else ["checkpoint", "trainRef"]))
        if choice in ("checkpoint", "both"):
            spec["checkpoint"] = "/results/model.pth"
        if choice in ("trainRef", "both"):
            spec["trainRef"] = "run"
        spec["tensorRT"] = {"enabled": draw(st.booleans()),
                            "precision": draw(st.sampled_from(["fp16", "FP32", "int4"] if wild else ["fp16", "FP32"])),
                            "maxBatch": draw(st.integers(0 if wild else 1, 4))}
    name = "run" if not wild else draw(st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,60}[a-z0-9]", fullmatch=True), st.sampled_from(["UPPER", "1abc", "a.b"])))
    return {"apiVersion": meta.API_VERSION, "kind": kind,
            "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": 1}, "spec": spec}


TRAIN_DONE = {"kind": "Mask2FormerTrain", "metadata": {"name": "run"},
              "status": {"phase": "Succeeded", "artifacts": {"latestCheckpoint": "/results/train/run/ckpt.pth"}}}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(custom_resources())
def test_random_resources_end_running_or_invalid(body):
    pods: dict[str, dict] = {}
    now = NOW
    plan = None
    for _ in range(6):
        plan = reconcile(Observed(body, list(pods.values()), now, train=TRAIN_DONE))
        status = body.setdefault("status", {})
        for key, value in plan.status_patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        if plan.invalid_spec:
            event(f"InvalidSpec: {plan.invalid_spec.split(':')[0]}")
            assert plan.phase == "InvalidSpec" and not plan.creates
            assert plan.invalid_spec.split(":")[0].startswith(("spec", "metadata.name"))
            return
        for name, _force in plan.deletes:
            pods.pop(name, None)
        for manifest in plan.creates:
            kubernetes_validate.validate(manifest, "1.30", strict=True)
            if manifest["kind"] == "Pod":
                running = copy.deepcopy(manifest)
                running["status"] = {"phase": "Running"}
                pods[manifest["metadata"]["name"]] = running
        now += timedelta(seconds=1)
    if isinstance(body["spec"].get("activeDeadlineSeconds"), int) and body["spec"]["activeDeadlineSeconds"] < 6:
        # A deadline shorter than the simulated 6 s is the one legitimate way to fail here.
        event("Failed: DeadlineExceeded")
        assert plan.phase == "Failed"
        assert next(c for c in body["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
        return
    event(f"Running: {body['kind']}")
    assert plan.phase == "Running", (plan.phase, body["status"])
    assert plan.creates == [] and plan.deletes == []
