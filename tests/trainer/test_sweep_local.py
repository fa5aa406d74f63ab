"""`m2f sweep` without a cluster: real `m2f train` trials on tiny synthetic data, early stopping by SIGTERM,
the record an interrupted sweep continues from, the trials table and the PNG, and `m2f sweep report`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from m2f_spec.sweep import study
from m2f_trainer.cli import main
from m2f_trainer.data.synth import synthesize

pytestmark = pytest.mark.slow
LRS = [1e-3, 1e-7, 5e-4]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    return synthesize("coco_panoptic", tmp_path_factory.mktemp("synth"), num_images=4, size=64)


def _space(path: Path, **extra) -> Path:
    path.write_text(yaml.safe_dump({
        "parameters": {"train.optim.lr": {"type": "categorical", "values": LRS}},
        "objective": {"metric": "loss", "goal": "minimize"},
        "algorithm": "grid", "earlyStopping": {"algorithm": "median", "startupTrials": 1},
        "maxTrials": 3, "parallelTrials": 1, "seed": 5, **extra}))
    return path


def test_local_sweep_trains_stops_a_trial_early_records_and_reports(spec, tmp_path, monkeypatch, capsys):
    judged = []

    def prune_trial_one(settings, history, record):
        judged.append((record["name"], len(record["intermediate"])))
        # The decision itself is tested with fake curves (tests/operator/test_sweep_*); here the runner must ask
        # at every validation and act on the answer. Real losses of a 2-epoch run would make the answer flaky.
        return "forced for the test" if record["name"] == "trial-001" else None

    monkeypatch.setattr(study, "prune_reason", prune_trial_one)
    results = tmp_path / "results"
    argv = ["sweep", "-e", str(spec), "--space", str(_space(tmp_path / "space.yaml")), f"results_dir={results}",
            "train.num_epochs=2", "train.optim.monitor_name=val_loss"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    record = json.loads((results / "sweep" / "sweep.json").read_text())
    history = record["status"]["history"]
    assert [r["state"] for r in history] == ["Succeeded", "Pruned", "Succeeded"]
    assert sorted(r["parameters"]["train.optim.lr"] for r in history) == sorted(LRS)  # the grid, once each
    # Every validation was seen, and the pruned trial was stopped after its first.
    assert [len(r["intermediate"]) for r in history] == [2, 1, 2]
    assert all(loss > 0 for r in history for _, loss in r["intermediate"])
    pruned_log = [json.loads(line) for line in
                  (results / "sweep" / "trial-001" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert not any(event["event"] == "end" for event in pruned_log)
    assert judged == [("trial-000", 1), ("trial-000", 2), ("trial-001", 1), ("trial-002", 1), ("trial-002", 2)]
    done = [r for r in history if r["state"] == "Succeeded"]
    assert all(r["value"] == r["intermediate"][-1][1] for r in done)
    best = min(done, key=lambda r: r["value"])
    assert record["status"]["bestTrial"]["name"] == best["name"] and record["status"]["phase"] == "Succeeded"
    # The table and the PNG.
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["TRIAL", "STATE", "LOSS", "EPOCHS"]
    assert any(line.startswith("trial-001") and "forced for the test" in line for line in lines)
    assert f"best: {best['name']}" in out
    png = results / "sweep" / "sweep.png"
    assert f"plots: {png}" in out
    with Image.open(png) as image:
        assert image.width >= 2 * image.height  # the history and the learning curves side by side

    # Run again: the record says everything is done, so nothing trains and the result is the same.
    assert main(argv) == 0
    again = json.loads((results / "sweep" / "sweep.json").read_text())
    assert again["status"]["history"] == history

    # The report of the record, as for a cluster sweep's dump.
    assert main(["sweep", "report", "-f", str(results / "sweep" / "sweep.json"), "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file() and "trial-002" in capsys.readouterr().out


def test_invalid_space_exits_2_naming_the_parameter(spec, tmp_path, capsys):
    space = _space(tmp_path / "space.yaml", parameters={"train.optim.lr": {"type": "float", "min": -1, "max": 1}})
    assert main(["sweep", "-e", str(spec), "--space", str(space), f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {space}.parameters[train.optim.lr]: value -1")
    assert not (tmp_path / "sweep" / "trial-000").exists()
