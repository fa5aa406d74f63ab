"""`m2f train` end to end on a tiny synthetic dataset: checkpoints, resume, pretrained weights, exit codes,
then `m2f evaluate` and `m2f inference` on the trained checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
import yaml

from m2f_trainer.cli import main
from m2f_trainer.data.synth import synthesize

REPO = Path(__file__).resolve().parents[2]
LATEST = "mask2former_model_latest.pth"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def m2f_process(args: list[str], log: Path, new_session: bool = False, **env) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "M2F_METRICS_PORT": "0", **env}
    for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "NUM_GPU_PER_NODE", "LOCAL_RANK"):
        if name not in env:
            environment.pop(name, None)
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "m2f_trainer.cli", *args], cwd=REPO, env=environment,
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=new_session)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def synth_spec(tmp_path_factory) -> Path:
    return synthesize("coco_panoptic", tmp_path_factory.mktemp("synth"), num_images=4, size=64)


@pytest.fixture(scope="module")
def trained(synth_spec, tmp_path_factory) -> Path:
    """One in-process training run shared by the tests that need a checkpoint."""
    results = tmp_path_factory.mktemp("trained")
    rc = main(["train", "-e", str(synth_spec), f"results_dir={results}", "train.num_epochs=2",
               "train.metrics_port=0", "train.checkpoint_interval=1"])
    assert rc == 0
    return results


def test_training_writes_checkpoints_and_metrics(trained):
    train_dir = trained / "train"
    # TAO's names: 0-based epoch and the optimizer steps taken (4 images, batch 2: 2 steps an epoch).
    assert sorted(p.name for p in train_dir.glob("*.pth")) == ["mask2former_model_best.pth", LATEST,
                                                                "model_epoch_000_step_00002.pth",
                                                                "model_epoch_001_step_00004.pth"]
    checkpoint = torch.load(train_dir / LATEST, map_location="cpu", weights_only=False)
    epoch_1 = torch.load(train_dir / "model_epoch_001_step_00004.pth", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 4  # 4 images, batch 2, 2 epochs
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"] and "loops" in checkpoint
    # The model's own key layout (docs/model.md) plus its model_config: loadable by the model package.
    from m2f_trainer.model import build_model_from_config, load_model_checkpoint

    model, payload = load_model_checkpoint(train_dir / LATEST)
    assert set(checkpoint["state_dict"]) == set(build_model_from_config(payload["model_config"]).state_dict())
    assert all(torch.equal(checkpoint["state_dict"][k], epoch_1["state_dict"][k]) for k in epoch_1["state_dict"])

    records = read_jsonl(train_dir / "metrics.jsonl")
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["epoch"] for r in steps] == [0, 0, 1, 1]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["images_per_s"] > 0 and "train/loss_ce" in r for r in steps)
    assert all(abs(sum(v for k, v in r.items() if k.startswith("train/loss_")) - r["loss"]) < 1e-3 * r["loss"]
               for r in steps)
    validations = [r for r in records if r["event"] == "validation"]
    assert [r["epoch"] for r in validations] == [0, 1]
    assert all(0.0 <= r["val/PQ"] <= 1.0 and r["val/num_images"] == 4 for r in validations)
    assert records[-1]["event"] == "end"
    # The same curves as TensorBoard event files (Lightning's logger, rank 0).
    scalars = _tensorboard_scalars(train_dir / "tensorboard")
    assert len(scalars["train_loss"]) == 4 and all(v > 0 for v in scalars["train_loss"])
    assert len(scalars["val_PQ"]) == 2 and all(0.0 <= v <= 1.0 for v in scalars["val_PQ"])


def _tensorboard_scalars(folder: Path) -> dict[str, list[float]]:
    """tag -> values of the TFRecord event files in `folder` (length, crc, Event proto, crc per record)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[float]] = {}
    (events_file,) = folder.glob("events.out.tfevents.*")
    data, offset = events_file.read_bytes(), 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = Event.FromString(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append(value.simple_value)
    return scalars


def test_restart_of_a_finished_run_is_a_no_op_and_explicit_resume_wins(trained, synth_spec, tmp_path):
    train_dir = trained / "train"
    before = (train_dir / LATEST).stat().st_mtime_ns
    assert main(["train", "-e", str(synth_spec), f"results_dir={trained}", "train.num_epochs=2",
                 "train.metrics_port=0"]) == 0
    assert (train_dir / LATEST).stat().st_mtime_ns == before  # nothing retrained

    # resume_training_checkpoint_path wins over the latest in the results dir: resumes after epoch 0
    other = tmp_path / "other"
    (other / "train").mkdir(parents=True)
    (other / "train" / LATEST).write_bytes((train_dir / LATEST).read_bytes())  # would say "finished"
    assert main(["train", "-e", str(synth_spec), f"results_dir={other}", "train.num_epochs=2",
                 "train.metrics_port=0",
                 f"train.resume_training_checkpoint_path={train_dir / 'model_epoch_000_step_00002.pth'}"]) == 0
    records = read_jsonl(other / "train" / "metrics.jsonl")
    assert records[0]["event"] == "start" and records[0]["epoch"] == 1 and records[0]["step"] == 2
    assert [r["epoch"] for r in records if r["event"] == "step"] == [1, 1]


@pytest.mark.parametrize("with_latest", [True, False], ids=["latest", "epoch-file-only"])
def test_a_results_dir_with_the_old_epoch_names_still_resumes(trained, synth_spec, tmp_path, with_latest):
    """Earlier versions wrote model_epoch_NNN.pth. Such a results dir resumes from its latest checkpoint, or from
    its newest epoch file when a kill came before the latest was published; new files get TAO's names."""
    epoch_0 = (trained / "train" / "model_epoch_000_step_00002.pth").read_bytes()
    train_dir = tmp_path / "results" / "train"
    train_dir.mkdir(parents=True)
    (train_dir / "model_epoch_000.pth").write_bytes(epoch_0)
    if with_latest:
        (train_dir / LATEST).write_bytes(epoch_0)
    assert main(["train", "-e", str(synth_spec), f"results_dir={train_dir.parent}", "train.num_epochs=2",
                 "train.metrics_port=0"]) == 0
    records = read_jsonl(train_dir / "metrics.jsonl")
    assert records[0]["event"] == "start" and records[0]["epoch"] == 1 and records[0]["step"] == 2
    assert sorted(p.name for p in train_dir.glob("model_epoch_*.pth")) == ["model_epoch_000.pth",
                                                                          "model_epoch_001_step_00004.pth"]


def test_pretrained_weights_load_without_training_state(trained, synth_spec, tmp_path, caplog):
    caplog.set_level("INFO")
    fresh = tmp_path / "fresh"
    assert main(["train", "-e", str(synth_spec), f"results_dir={fresh}", "train.num_epochs=1",
                 "train.metrics_port=0", "train.optim.lr=1e-12", "train.optim.backbone_multiplier=1.0",
                 "train.iters_per_epoch=1", f"train.pretrained_model_path={trained / 'train' / LATEST}"]) == 0
    records = read_jsonl(fresh / "train" / "metrics.jsonl")
    assert records[0]["epoch"] == 0 and records[0]["step"] == 0  # weights only: epoch/step start at 0
    assert [r["step"] for r in records if r["event"] == "step"] == [1]  # iters_per_epoch caps the epoch
    assert "train.pretrained_model_path: loaded" in caplog.text
    before = torch.load(trained / "train" / LATEST, map_location="cpu", weights_only=False)["state_dict"]
    after = torch.load(fresh / "train" / LATEST, map_location="cpu", weights_only=False)["state_dict"]
    # lr ~0: the weights stay those of the pretrained file (BatchNorm running statistics do move)
    weights = [k for k in before if k.endswith("weight") and "bn" not in k and "norm" not in k]
    assert weights and all(torch.allclose(before[k], after[k], atol=1e-6) for k in weights)


def test_spec_and_environment_errors_exit_2_with_one_line(synth_spec, tmp_path, capsys, monkeypatch):
    assert main(["train", "-e", str(synth_spec), f"results_dir={tmp_path}", "train.precision=fp16"]) == 2
    assert "error: train.precision=fp16 needs a GPU" in capsys.readouterr().err
    monkeypatch.setenv("NUM_GPU_PER_NODE", "2")
    assert main(["train", "-e", str(synth_spec), f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: NUM_GPU_PER_NODE=2 disagrees with train.num_gpus=1") and "Traceback" not in err
    monkeypatch.delenv("NUM_GPU_PER_NODE")
    assert main(["train", "-e", str(synth_spec), f"results_dir={tmp_path}",
                 f"train.resume_training_checkpoint_path={tmp_path / 'missing.pth'}"]) == 2
    assert "train.resume_training_checkpoint_path: file not found" in capsys.readouterr().err
    assert main(["train", "-e", str(synth_spec), f"results_dir={tmp_path}", "train.is_dry_run=true"]) == 0
    assert not (tmp_path / "train" / "metrics.jsonl").exists()


def test_evaluate_and_inference_agree_with_scoring_the_written_predictions(trained, synth_spec, tmp_path):
    checkpoint = trained / "train" / LATEST
    results = tmp_path / "results"
    # One batch size for both: batched and unbatched GEMMs round differently, and the comparison below is exact.
    common = ["-e", str(synth_spec), f"results_dir={results}", "model.object_mask_threshold=0.05",
              "dataset.val.batch_size=1", "dataset.test.batch_size=1"]
    assert main(["evaluate", *common, f"evaluate.checkpoint={checkpoint}"]) == 0
    from_model = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert from_model["mode"] == "panoptic" and from_model["num_images"] == 4 and from_model["N"] == 5

    # Inference over the labelled split writes prediction files that `evaluate.predictions` scores.
    assert main(["inference", *common, f"inference.checkpoint={checkpoint}",
                 # relative paths on a command line mean the working directory, not the split's root_dir
                 f"dataset.test.panoptic_json={synth_spec.parent / 'annotations/panoptic.json'}",
                 f"dataset.test.panoptic_dir={synth_spec.parent / 'panoptic'}"]) == 0
    inference_dir = results / "inference"
    stems = sorted(p.stem for p in (inference_dir / "overlays").glob("*.png"))
    assert stems == ["000001", "000002", "000003", "000004"]
    assert sorted(p.stem for p in (inference_dir / "panoptic").glob("*.png")) == stems
    predictions = json.loads((inference_dir / "panoptic" / "predictions.json").read_text())
    assert len(predictions["annotations"]) == 4

    rescored = tmp_path / "rescored"
    assert main(["evaluate", "-e", str(synth_spec), f"results_dir={rescored}",
                 f"evaluate.predictions={inference_dir}"]) == 0
    from_files = json.loads((rescored / "evaluate" / "metrics.json").read_text())
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "N"):
        assert from_files[key] == pytest.approx(from_model[key], abs=1e-12), key


@pytest.mark.parametrize("monitor", ["train_loss", "val_loss"])
def test_best_checkpoint_follows_monitor_name(synth_spec, tmp_path, monitor):
    """train.optim.monitor_name ranks the epochs: the best file holds the epoch with the lowest value (as
    metrics.jsonl records them), and the value travels with the latest checkpoint, so a resumed run that trains
    two more epochs ranks all five."""
    results = tmp_path / "results"
    args = ["train", "-e", str(synth_spec), f"results_dir={results}", "train.metrics_port=0",
            f"train.optim.monitor_name={monitor}"]
    for epochs in (3, 5):
        assert main([*args, f"train.num_epochs={epochs}"]) == 0
        records = read_jsonl(results / "train" / "metrics.jsonl")
        if monitor == "val_loss":
            per_epoch = {r["epoch"]: r["val/loss"] for r in records if r["event"] == "validation"}
        else:  # the epoch's mean step loss (every step has one batch of the same size here)
            steps: dict[int, list[float]] = {}
            for r in records:
                if r["event"] == "step":
                    steps.setdefault(r["epoch"], []).append(r["loss"])
            per_epoch = {epoch: sum(losses) / len(losses) for epoch, losses in steps.items()}
        assert sorted(per_epoch) == list(range(epochs))
        lowest = min(per_epoch, key=per_epoch.get)
        best = torch.load(results / "train" / "mask2former_model_best.pth", map_location="cpu", weights_only=False)
        latest = torch.load(results / "train" / LATEST, map_location="cpu", weights_only=False)
        state = next(v for k, v in latest["callbacks"].items() if k.startswith("BestCheckpoint"))
        assert best["epoch"] == state["best_epoch"] == lowest, (per_epoch, state)
        assert abs(state["best"] - per_epoch[lowest]) <= 1e-4 * per_epoch[lowest]
        assert "optimizer_states" not in best and best["model_config"] == latest["model_config"]


def test_val_loss_without_a_labelled_val_split_warns_and_writes_no_best_file(synth_spec, tmp_path, caplog):
    """monitor_name val_loss needs validation: with no labelled val split, training goes on and says once why
    no best file will appear (it must not silently rank by nothing)."""
    spec = yaml.safe_load(synth_spec.read_text())
    del spec["dataset"]["val"]["panoptic_json"]  # images only: nothing to score
    unlabelled = tmp_path / "spec.yaml"
    unlabelled.write_text(yaml.safe_dump(spec))
    results = tmp_path / "results"
    caplog.set_level("INFO")
    assert main(["train", "-e", str(unlabelled), f"results_dir={results}", "train.num_epochs=1",
                 "train.iters_per_epoch=1", "train.metrics_port=0", "train.optim.monitor_name=val_loss"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "val_loss" in r.getMessage()]
    assert len(warnings) == 1 and "no labelled val split" in warnings[0], warnings
    assert (results / "train" / LATEST).is_file()
    assert not (results / "train" / "mask2former_model_best.pth").exists()
    assert not [r for r in read_jsonl(results / "train" / "metrics.jsonl") if r["event"] == "validation"]


def test_inference_on_an_image_folder(trained, synth_spec, tmp_path):
    from PIL import Image

    checkpoint = trained / "train" / LATEST
    out = tmp_path / "out"
    assert main(["inference", "-e", str(synth_spec), f"results_dir={out}", f"inference.checkpoint={checkpoint}",
                 "model.object_mask_threshold=0.0", "model.overlap_threshold=0.0"]) == 0
    overlay = Image.open(out / "inference" / "overlays" / "000001.png")
    source = Image.open(synth_spec.parent / "images" / "000001.jpg")
    assert overlay.size == source.size
    import numpy as np

    assert np.abs(np.asarray(overlay, dtype=np.int16) - np.asarray(source, dtype=np.int16)).max() > 20
    assert main(["inference", "-e", str(synth_spec), f"results_dir={out}"]) == 2  # no model given


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_restart_resumes_at_next_epoch(tmp_path):
    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=4, size=64)
    results = tmp_path / "results"
    args = ["train", "-e", str(spec), f"results_dir={results}", "train.num_epochs=4",
            "dataset.val.panoptic_json=null", "dataset.val.img_dir=null"]
    proc = m2f_process(args, tmp_path / "first.log")
    try:
        # LATEST is published after the epoch file, and the saved epoch is read from it below.
        wait_for(lambda: (results / "train" / LATEST).exists(), 240, proc, "the first checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved_epoch = torch.load(results / "train" / LATEST, map_location="cpu", weights_only=False)["epoch"]
    assert saved_epoch < 3, "the run finished before it could be killed"

    second = m2f_process(args, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    records = read_jsonl(results / "train" / "metrics.jsonl")
    starts = [i for i, r in enumerate(records) if r["event"] == "start"]
    assert len(starts) == 2
    resumed = records[starts[1]:]
    assert resumed[0]["epoch"] == saved_epoch + 1 and resumed[0]["step"] == 2 * (saved_epoch + 1)
    resumed_epochs = sorted({r["epoch"] for r in resumed if r["event"] == "step"})
    assert resumed_epochs == list(range(saved_epoch + 1, 4))
    assert (results / "train" / "model_epoch_003_step_00008.pth").exists()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_saves_a_checkpoint_and_exits_143(target, tmp_path):
    """`process`: SIGTERM to the trainer alone (the container's PID 1). `group`: to its whole process
    group, which also kills the DataLoader workers under it (e.g. `timeout`, a shell's job control)."""
    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=8, size=64)
    results = tmp_path / "results"
    proc = m2f_process(["train", "-e", str(spec), f"results_dir={results}", "train.num_epochs=50",
                        "train.checkpoint_interval=100", "dataset.train.num_workers=1"], tmp_path / "train.log",
                       new_session=True)
    jsonl = results / "train" / "metrics.jsonl"
    try:
        wait_for(lambda: jsonl.exists() and '"event": "step"' in jsonl.read_text(), 240, proc, "the first step")
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        proc.kill()
    assert (results / "train" / LATEST).exists(), (tmp_path / "train.log").read_text()[-3000:]
    checkpoint = torch.load(results / "train" / LATEST, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] >= 1 and checkpoint["optimizer_states"]
    assert not list((results / "train").glob("model_epoch_*.pth"))  # interval 100: only the SIGTERM save
    assert "SIGTERM: saved checkpoint" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("kind, metric, output", [("coco", "AP", "instance/instances.json"),
                                                  ("semantic", "mIoU", "semantic/000001.png")])
def test_instance_and_semantic_modes_validate_evaluate_and_infer(kind, metric, output, tmp_path):
    spec = synthesize(kind, tmp_path / "data", num_images=2, size=64)
    results = tmp_path / "results"
    common = ["-e", str(spec), f"results_dir={results}"]
    assert main(["train", *common, "train.num_epochs=1", "train.metrics_port=0"]) == 0
    validation = [r for r in read_jsonl(results / "train" / "metrics.jsonl") if r["event"] == "validation"]
    assert len(validation) == 1 and f"val/{metric}" in validation[0] and validation[0]["val/num_images"] == 2

    checkpoint = results / "train" / LATEST
    assert main(["evaluate", *common, f"evaluate.checkpoint={checkpoint}"]) == 0
    metrics = json.loads((results / "evaluate" / "metrics.json").read_text())
    assert metrics["mode"] == ("instance" if kind == "coco" else "semantic") and metrics["num_images"] == 2
    assert metric in metrics and metrics["per_class"]
    assert main(["inference", *common, f"inference.checkpoint={checkpoint}"]) == 0
    assert (results / "inference" / output).is_file()
    assert len(list((results / "inference" / "overlays").glob("*.png"))) == 2


@pytest.mark.slow
def test_rank_zero_serves_the_progress_the_operator_reads(tmp_path):
    """The pod-side half of progress: rank 0's metrics endpoint, read the way the operator reads it (no API
    credentials in the pod). Polled while a 3-epoch run trains, then the run must finish cleanly."""
    from m2f_operator.progress import scrape

    spec = synthesize("coco_panoptic", tmp_path / "data", num_images=4, size=64)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = m2f_process(["train", "-e", str(spec), f"results_dir={tmp_path / 'results'}", "train.num_epochs=3"],
                       tmp_path / "train.log", M2F_METRICS_PORT=str(port))
    seen = []
    try:
        while proc.poll() is None:
            progress = scrape(f"127.0.0.1:{port}", datetime.now(timezone.utc), timeout=1.0)
            if progress is not None:
                seen.append(progress)
            time.sleep(0.2)
    finally:
        proc.kill()
    assert proc.returncode == 0, (tmp_path / "train.log").read_text()[-3000:]
    assert seen, "rank 0 never served training progress"
    assert all(p["totalEpochs"] == 3 and 1 <= p["epoch"] <= 3 and p["step"] >= 1 for p in seen), seen
    assert [p["step"] for p in seen] == sorted(p["step"] for p in seen) and seen[-1]["loss"] > 0
    assert seen[-1]["updateTime"].endswith("Z") and seen[-1]["imagesPerSecond"] > 0
    # Every scalar of the last validation and its epoch: what a sweep's early stopping reads.
    validated = [p["validation"] for p in seen if "validation" in p]
    assert validated and all(1 <= v["epoch"] <= 3 and {"PQ", "SQ", "RQ"} <= set(v["metrics"]) for v in validated)




def test_rank_zero_leaves_the_last_validation_in_its_termination_message(synth_spec, tmp_path, monkeypatch):
    message = tmp_path / "termination-log"
    monkeypatch.setenv("M2F_TERMINATION_MESSAGE_PATH", str(message))
    results = tmp_path / "results"
    assert main(["train", "-e", str(synth_spec), f"results_dir={results}", "train.num_epochs=1",
                 "train.metrics_port=0"]) == 0
    summary = json.loads(message.read_text())
    last = [r for r in read_jsonl(results / "train" / "metrics.jsonl") if r["event"] == "validation"][-1]
    assert summary["metrics"]["PQ"] == last["val/PQ"] and "num_images" in summary["metrics"]
    assert summary["artifacts"] == {"checkpoint": str(results / "train" / LATEST),
                                    "metrics_file": str(results / "train" / "metrics.jsonl")}
