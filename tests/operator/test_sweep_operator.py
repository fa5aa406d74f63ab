"""Mask2FormerSweep through the API with the real operator, on both control planes: trials are Trains, a fake
trainer reports each trial's validations, median pruning stops the hopeless ones, an operator restart mid-sweep
loses, duplicates and re-runs nothing, and the result is the uninterrupted search's (same seed)."""

from __future__ import annotations

import json
import math
import time

import pytest
from operator_harness import BACKENDS, cluster_on, running_operator, wait_for
from reconcile_factories import TINY_EXPERIMENT

from m2f_operator.builders import meta
from m2f_spec.sweep import study
from m2f_spec.sweep.settings import settings_from

pytestmark = pytest.mark.xdist_group("m2f-operator-cluster")
TRAINS, SWEEPS = "mask2formertrains", meta.SWEEP.plural
EPOCHS = 3
EXPERIMENT = {**TINY_EXPERIMENT, "train": {"num_epochs": EPOCHS}}
SPEC = {
    "template": {"experiment": EXPERIMENT, "gpusPerNode": 0},
    "parameters": {"train.optim.lr": {"type": "float", "min": 1e-5, "max": 1e-1, "log": True}},
    "objective": {"metric": "PQ", "goal": "maximize"},
    "earlyStopping": {"algorithm": "median", "startupTrials": 1},
    "maxTrials": 6, "parallelTrials": 2, "seed": 2,  # the reference prunes 2 of the 6
}


def objective(lr: float, epoch: int) -> float:
    """The fake trainer's PQ after `epoch` epochs: best at lr 1e-3."""
    return round(epoch / EPOCHS * math.exp(-abs(math.log10(lr) + 3)), 6)


def reference_history() -> list[tuple]:
    """The same search run uninterrupted, trial after trial, without a cluster (what the sweep must equal)."""
    settings = settings_from({k: v for k, v in SPEC.items() if k != "template"}, EXPERIMENT)
    records: list[dict] = []
    while len(records) < settings.trial_budget:
        number = len(records)
        record = {"number": number, "name": f"hp-{number:03d}", "parameters": study.suggest(settings, records),
                  "state": study.RUNNING, "seen": study.seen_by(number, settings.parallel), "intermediate": []}
        records.append(record)
        for epoch in range(1, EPOCHS + 1):
            record["intermediate"].append([epoch, objective(record["parameters"]["train.optim.lr"], epoch)])
            if study.prune_reason(settings, records, record):
                record["state"] = study.PRUNED
                break
        else:
            record.update(state=study.SUCCEEDED, value=record["intermediate"][-1][1])
    return [(r["name"], r["parameters"], r["state"], r.get("value")) for r in records]


class FakeTrainer:
    """Acts as the trials' kubelet and trainer: runs their pods, reports one validation at a time (the next only
    once the sweep recorded the last), and ends each trial after EPOCHS with its PQ."""

    def __init__(self, cluster, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace
        self.reported: dict[str, int] = {}
        self.created: dict[str, str] = {}  # trial name -> uid: a re-created trial would show a new uid

    def sweep_status(self) -> dict:
        body = self.cluster.custom.get_namespaced_custom_object(meta.GROUP, meta.VERSION, self.ns, SWEEPS, "hp")
        return body.get("status") or {}

    def step(self) -> None:
        history = {r["name"]: r for r in self.sweep_status().get("history") or []}
        trials = self.cluster.custom.list_namespaced_custom_object(
            meta.GROUP, meta.VERSION, self.ns, TRAINS, label_selector=f"{meta.LABEL_SWEEP}=hp")["items"]
        pods = {p.metadata.name: p for p in self.cluster.pods(self.ns) if not p.metadata.deletion_timestamp}
        for trial in sorted(trials, key=lambda t: t["metadata"]["name"]):
            name, status = trial["metadata"]["name"], trial.get("status") or {}
            assert self.created.setdefault(name, trial["metadata"]["uid"]) == trial["metadata"]["uid"], \
                f"trial {name} was created twice"
            pod, record = pods.get(f"{name}-worker-0"), history.get(name)
            if trial["metadata"].get("deletionTimestamp") or pod is None or record is None:
                continue
            if record["state"] != study.RUNNING or status.get("phase") in ("Succeeded", "Failed"):
                continue
            if pod.status.phase != "Running":
                self.cluster.set_pod(self.ns, pod.metadata.name, "Running")
                continue
            if status.get("phase") != "Running" or self.reported.get(name, 0) > len(record["intermediate"]):
                continue  # the sweep has not recorded the last validation yet
            lr = trial["spec"]["experiment"]["train"]["optim"]["lr"]
            done = len(record["intermediate"])
            if done == EPOCHS:
                summary = json.dumps({"metrics": {"PQ": objective(lr, EPOCHS)}, "artifacts": {}})
                self.cluster.set_pod(self.ns, pod.metadata.name, "Succeeded", exit_code=0, message=summary)
                continue
            epoch = done + 1
            self.reported[name] = epoch
            self.cluster.custom.patch_namespaced_custom_object_status(
                meta.GROUP, meta.VERSION, self.ns, TRAINS, name, {"status": {"progress": {
                    "epoch": epoch, "totalEpochs": EPOCHS, "step": epoch,
                    "validation": {"epoch": epoch, "metrics": {"PQ": objective(lr, epoch), "SQ": 0.8}}}}})

    def run_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.sweep_status()):
            assert time.monotonic() < deadline, f"sweep status: {self.sweep_status()}"
            self.step()
            time.sleep(0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sweep_prunes_survives_an_operator_restart_and_equals_the_uninterrupted_search(backend, tmp_path):
    with cluster_on(backend, tmp_path / "cluster") as (cluster, _):
        ns = cluster.namespace()
        trainer = FakeTrainer(cluster, ns)
        cluster.custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, SWEEPS, {
            "apiVersion": meta.API_VERSION, "kind": "Mask2FormerSweep", "metadata": {"name": "hp"}, "spec": SPEC})
        with running_operator() as first:
            # Stop the operator mid-sweep: trials 0-2 exist, at least one finished.
            trainer.run_until(lambda s: (s.get("trials") or {}).get("total", 0) >= 3, timeout=120)
        assert first.exception is None
        with running_operator() as second:
            trainer.run_until(lambda s: s.get("phase") in ("Succeeded", "Failed"), timeout=240)
            table = cluster.kubectl("get", "m2fsweep", "-n", ns)
        assert second.exception is None

        status = trainer.sweep_status()
        history = status["history"]
        assert status["phase"] == "Succeeded"
        # Nothing lost, duplicated or re-run: six trials, each created once (FakeTrainer checks uids), numbered.
        assert [r["name"] for r in history] == [f"hp-{n:03d}" for n in range(6)] == sorted(trainer.created)
        assert [(r["name"], r["parameters"], r["state"], r.get("value")) for r in history] == reference_history()
        assert status["trials"]["pruned"] >= 1 and status["trials"]["succeeded"] + status["trials"]["pruned"] == 6
        pruned = [r for r in history if r["state"] == "Pruned"]
        assert all("median" in r["message"] and len(r["intermediate"]) < EPOCHS for r in pruned)
        # The pruned trials' Trains are gone; the finished ones stay.
        wait_for(lambda: {t["metadata"]["name"] for t in cluster.custom.list_namespaced_custom_object(
            meta.GROUP, meta.VERSION, ns, TRAINS)["items"]} == {r["name"] for r in history if r["state"] == "Succeeded"},
            60, "the pruned trials deleted")
        best = max((r for r in history if r["state"] == "Succeeded"), key=lambda r: r["value"])
        assert status["bestTrial"]["name"] == best["name"] and status["bestTrial"]["value"] == best["value"]
        header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
        assert header[:8] == ["NAME", "PHASE", "TRIALS", "RUNNING", "SUCCEEDED", "PRUNED", "FAILED", "METRIC"]
        assert row[:3] == ["hp", "Succeeded", "6"] and best["name"] in row
        assert ("Normal", "TrialPruned") in cluster.events(ns, "hp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_search_space_is_invalid_spec_with_no_trial(backend, tmp_path):
    with cluster_on(backend, tmp_path / "cluster") as (cluster, _), running_operator() as runner:
        ns = cluster.namespace()
        spec = {**SPEC, "parameters": {"model.mask_former.num_object_queries": {"type": "categorical", "values": []}}}
        cluster.custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, SWEEPS, {
            "apiVersion": meta.API_VERSION, "kind": "Mask2FormerSweep", "metadata": {"name": "bad"}, "spec": spec})

        def status():
            body = cluster.custom.get_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, SWEEPS, "bad")
            return body.get("status") or {}

        wait_for(lambda: status().get("phase") == "InvalidSpec", 30, "InvalidSpec")
        assert "spec.parameters[model.mask_former.num_object_queries]: values: a non-empty list" in status()["message"]
        assert ("Warning", "InvalidSpec") in cluster.events(ns, "bad")
        assert cluster.custom.list_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, TRAINS)["items"] == []
    assert runner.exception is None
