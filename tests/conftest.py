"""Shared test fixtures: the real COCO panoptic sample (skipped with a reason where absent), CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "coco_panoptic_sample"


@pytest.fixture(scope="session")
def coco_sample_dir() -> Path:
    """Two real COCO val2017 images with panoptic ground truth, kept outside the repo (licenses)."""
    override = os.environ.get("M2F_COCO_SAMPLE")
    path = Path(override) if override else COCO_SAMPLE
    if not (path / "panoptic_val.json").is_file():
        pytest.skip(f"real COCO panoptic sample not found at {path} (set M2F_COCO_SAMPLE to its folder)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
