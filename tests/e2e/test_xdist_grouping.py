"""The suite's CI budget relies on `xdist_group`: every e2e test on one xdist worker, sharing one dev cluster
and one set of concurrent scenarios. pytest 9 + pytest-xdist 3.8 silently ignored the mark (tests/conftest.py
carries the fix); this runs a small grouped suite under `-n 2 --dist loadgroup` with the repo's root conftest.
The same conftest starts the longest tests first (a 15-minute test queued last ended the suite alone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

GROUPED_TESTS = '''
import os
import time
from pathlib import Path

import pytest


@pytest.mark.xdist_group("together")
@pytest.mark.parametrize("index", range(6))
def test_grouped(index):
    Path(os.environ["WORKER_IDS"], f"grouped-{index}").write_text(os.environ["PYTEST_XDIST_WORKER"])


@pytest.mark.parametrize("index", range(4))
def test_short(index):
    Path(os.environ["STARTS"], f"short-{index}").write_text(repr(time.time()))
    time.sleep(0.2)


@pytest.mark.slow(minutes=15)
def test_long():  # collected last, started first
    Path(os.environ["STARTS"], "long").write_text(repr(time.time()))
    time.sleep(0.5)
'''


def test_xdist_group_keeps_a_group_on_one_worker(tmp_path: Path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "conftest.py", suite / "conftest.py")
    (suite / "test_grouped.py").write_text(GROUPED_TESTS)
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: long\n")
    ids, starts = tmp_path / "ids", tmp_path / "starts"
    ids.mkdir()
    starts.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q", str(suite)],
        cwd=suite, capture_output=True, text=True, timeout=300,
        env={**os.environ, "WORKER_IDS": str(ids), "STARTS": str(starts)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workers = {path.name: path.read_text() for path in ids.iterdir()}
    assert len(workers) == 6, workers
    assert len(set(workers.values())) == 1, f"one xdist_group ran on several workers: {workers}"

    started = {path.name: float(path.read_text()) for path in starts.iterdir()}
    assert len(started) == 5, started
    assert started["long"] < min(t for name, t in started.items() if name != "long"), started
