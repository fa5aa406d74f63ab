"""End-to-end Mask2FormerSweep on the dev cluster (both control planes), with real `m2f train` trials: 6 trials,
2 at a time, median early stopping on the validation loss, the operator SIGKILLed and restarted mid-sweep,
`kubectl get m2fsweep`, and `m2f sweep report`'s PNG."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import (
    LABEL_ATTEMPT,
    TRAINS,
    ClusterEnv,
    read_metrics,
    tiny_experiment,
    train_manifest,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("e2e"), pytest.mark.timeout(1200)]

NAME, TRIALS, EPOCHS = "zeta", 6, 3
SWEEP_TIMEOUT = 900
# Seed 14 draws (among others) two learning rates below 1e-5 after two useful ones: their validation loss
# stays near its start while the earlier trials' falls, so median stopping must end them.
SEED = 14


def _sweep_manifest(dataset: str) -> dict:
    experiment = tiny_experiment(dataset, epochs=EPOCHS)
    experiment["train"]["optim"]["monitor_name"] = "val_loss"  # the validation loss is the objective
    template = train_manifest("unused", experiment, nodes=1)["spec"]
    template["resultsDir"] = "/results/sweep"
    return {"apiVersion": "mask2former.io/v1alpha1", "kind": "Mask2FormerSweep", "metadata": {"name": NAME},
            "spec": {"template": template,
                     "parameters": {"train.optim.lr": {"type": "float", "min": 1e-7, "max": 1e-2, "log": True}},
                     "objective": {"metric": "loss", "goal": "minimize"},
                     "earlyStopping": {"algorithm": "median", "startupTrials": 1},
                     "maxTrials": TRIALS, "parallelTrials": 2, "seed": SEED}}


def _status(env: ClusterEnv) -> dict:
    return env.kubectl.json("get", "m2fsweep", NAME).get("status") or {}


def _report(env: ClusterEnv) -> str:
    return f"sweep status: {_status(env)}\n" + env.report(*[f"{NAME}-{n:03d}" for n in range(TRIALS)])


def test_sweep_of_six_trials_prunes_survives_an_operator_kill_and_reports(cluster_env: ClusterEnv, tmp_path):
    env = cluster_env
    env.kubectl.apply(_sweep_manifest(env.dataset))
    # Mid-sweep (the third trial exists, the first ones train or have finished) the operator is SIGKILLed.
    wait_for(lambda: (_status(env).get("trials") or {}).get("total", 0) >= 3, SWEEP_TIMEOUT, "the third trial",
             lambda: _report(env), interval=1.0)
    env.cluster.kill_operator()
    env.cluster.start_operator()
    wait_for(lambda: _status(env).get("phase") in ("Succeeded", "Failed"), SWEEP_TIMEOUT, "the sweep's end",
             lambda: _report(env), interval=1.0)
    status = _status(env)
    assert status["phase"] == "Succeeded", _report(env)
    history = status["history"]

    # Six trials, each created once and trained once: one Train uid, one pod, attempt 0.
    names = [f"{NAME}-{n:03d}" for n in range(TRIALS)]
    assert [r["name"] for r in history] == names
    for name in names:
        uids = {change.uid for change in env.recorder.history(TRAINS, name)}
        assert len(uids) == 1, f"{name} was created {len(uids)} times"
        pods = env.recorder.pod_uids(name)
        assert len(pods) == 1 and {p["metadata"]["labels"][LABEL_ATTEMPT] for p in pods.values()} == {"0"}, pods

    # Median stopping ended at least one trial early, and recorded why.
    pruned = [r for r in history if r["state"] == "Pruned"]
    finished = [r for r in history if r["state"] == "Succeeded"]
    assert pruned and len(pruned) + len(finished) == TRIALS, history
    assert all("median" in r["message"] and len(r["intermediate"]) < EPOCHS for r in pruned), pruned
    assert status["trials"] == {"total": TRIALS, "running": 0, "succeeded": len(finished), "pruned": len(pruned),
                                "failed": 0}
    wait_for(lambda: sorted(t["metadata"]["name"] for t in env.kubectl.json(
        "get", "m2ftrain", "-l", f"mask2former.io/sweep={NAME}")["items"]) == [r["name"] for r in finished],
        120, "the pruned trials' Trains deleted", lambda: _report(env))

    # Each finished trial's objective is its last validation loss, as the trainer wrote it (the status keeps six
    # significant digits).
    uid = env.kubectl.json("get", "m2fsweep", NAME)["metadata"]["uid"]
    for record in finished:
        train_dir = env.volume_path(f"/results/sweep/{NAME}-{uid[:8]}/{record['number']:03d}") / "train"
        validations = [r for r in read_metrics(train_dir) if r["event"] == "validation"]
        assert len(validations) == EPOCHS
        assert abs(validations[-1]["val/loss"] - record["value"]) <= 1e-5 * abs(validations[-1]["val/loss"])
    best = min(finished, key=lambda r: (r["value"], r["number"]))
    assert status["bestTrial"]["name"] == best["name"] and status["bestTrial"]["value"] == best["value"]
    assert status["bestTrial"]["parameters"] == best["parameters"]

    # What users look at: kubectl's columns and the report.
    header, row = (line.split() for line in env.kubectl("get", "m2fsweep", NAME).stdout.splitlines()[:2])
    assert header[:9] == ["NAME", "PHASE", "TRIALS", "RUNNING", "SUCCEEDED", "PRUNED", "FAILED", "METRIC", "BEST"]
    assert row[:3] == [NAME, "Succeeded", str(TRIALS)] and row[7] == "loss" and best["name"] in row
    png = tmp_path / "zeta.png"
    report = subprocess.run([sys.executable, "-m", "m2f_trainer.cli", "sweep", "report", NAME, "--kubeconfig",
                             str(env.cluster.kubeconfig), "-o", str(png)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                                                    f"{os.environ.get('PATH', '')}"})
    assert report.returncode == 0, report.stderr
    assert f"best: {best['name']}" in report.stdout and all(name in report.stdout for name in names)
    assert png.stat().st_size > 10_000
    if os.environ.get("M2F_KEEP_SWEEP_PNG"):  # for a person to look at
        shutil.copy(png, os.environ["M2F_KEEP_SWEEP_PNG"])
