"""`m2f train` on a dataset with a truncated JPEG read in a DataLoader worker: one-line error, or skip and count."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from m2f_trainer.cli import main
from m2f_trainer.data import synthesize
from m2f_trainer.errors import DataError, one_line

BAD = "000003.jpg"
# setup_logging's records ("2024-01-01 12:00:00,123 INFO name: message"): the only other lines on stderr.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> tuple[Path, Path]:
    """(spec, training image folder): a copy of the images with one JPEG cut short; val keeps the intact ones."""
    out = tmp_path_factory.mktemp("corrupt")
    spec = synthesize("coco_panoptic", out, num_images=6, size=64)
    train_images = out / "train_images"
    shutil.copytree(out / "images", train_images)
    bad = train_images / BAD
    bad.write_bytes(bad.read_bytes()[:200])
    return spec, train_images


def train(corrupt, results: Path, *overrides: str) -> int:
    spec, train_images = corrupt
    return main(["train", "-e", str(spec), f"results_dir={results}", "train.num_epochs=1", "train.metrics_port=0",
                 f"dataset.train.img_dir={train_images}", "dataset.train.num_workers=1", *overrides])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]


def test_a_corrupt_image_in_a_worker_is_reported_in_one_line(corrupt, tmp_path, capsys):
    assert train(corrupt, tmp_path) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "worker process" not in err
    [line] = error_lines(err)
    assert line.startswith("error: image ") and f"{corrupt[1] / BAD} is corrupt or not an image" in line


def test_skip_corrupt_skips_warns_and_counts(corrupt, tmp_path, caplog):
    # Batch size 1: the bad image makes a batch of nothing, which the step passes over.
    assert train(corrupt, tmp_path, "dataset.skip_corrupt=true", "dataset.max_skipped_fraction=0.5",
                 "dataset.train.batch_size=1") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and BAD in r.getMessage()]
    assert len(warnings) == 1 and str(corrupt[1] / BAD) in warnings[0]
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    [epoch_end] = [r for r in records if r["event"] == "epoch_end"]
    assert epoch_end["skipped_samples"] == 1
    assert len([r for r in records if r["event"] == "step"]) == 5  # none for the empty batch
    assert any(r["event"] == "validation" for r in records)  # val reads the intact images


def test_skip_corrupt_fails_past_max_skipped_fraction(corrupt, tmp_path, capsys):
    assert train(corrupt, tmp_path, "dataset.skip_corrupt=true", "dataset.max_skipped_fraction=0.0") == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("error: 1 of the 6 training samples of epoch 0 were unreadable (16.7%)")
    assert "dataset.max_skipped_fraction=0" in line and line.endswith(f"first: {corrupt[1] / BAD}")


def test_validation_never_skips_a_corrupt_sample(corrupt, tmp_path, capsys):
    spec, train_images = corrupt
    # The bad folder as the val split: skip_corrupt is for training samples only.
    assert main(["train", "-e", str(spec), f"results_dir={tmp_path}", "train.num_epochs=1", "train.metrics_port=0",
                 f"dataset.train.img_dir={spec.parent / 'images'}", f"dataset.val.img_dir={train_images}",
                 "dataset.skip_corrupt=true", "dataset.max_skipped_fraction=1.0"]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("error: image ") and str(train_images / BAD) in line


def test_one_line_unwraps_a_worker_traceback():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nm2f_trainer.errors.DataError: image /d/a.jpg is bad\n")
    assert one_line(wrapped) == "image /d/a.jpg is bad"
    assert one_line(DataError("image /d/a.jpg is bad")) == "image /d/a.jpg is bad"
