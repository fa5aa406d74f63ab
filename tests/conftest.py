"""Shared test fixtures: the real COCO panoptic sample (skipped with a reason where absent), CPU threads."""

from __future__ import annotations

import logging
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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """pytest-xdist 3.8's `--dist loadgroup` tags grouped items through `item._nodeid`, which pytest 9 no
    longer reads (the id lives in `item._id`), so `xdist_group` silently did nothing: carry the tag over."""
    for item in items:
        tagged = item.__dict__.get("_nodeid")
        if tagged and tagged != item.nodeid:
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(tagged)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=_expected_minutes, reverse=True)


def _expected_minutes(item) -> float:
    """Longest first: xdist queues the groups (largest first), then single tests in collection order; a
    15-minute test that came last in that order ran alone at the end of the suite while the other worker idled.
    `@pytest.mark.slow(minutes=N)` names the few long ones; the sort is stable, so a group keeps its order."""
    slow = item.get_closest_marker("slow")
    if slow is None:
        return 0.0
    return float(slow.kwargs.get("minutes", 0.5))


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """CLI tasks attach one stderr log handler per process; drop it so the next test's capsys gets the logs."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_m2f", False)]:
        root.removeHandler(handler)
