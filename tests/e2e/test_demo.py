"""`make demo` as a new user runs it: green, a model that learned the shapes, and the two pictures it promises."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest
from e2e_helpers import KUBECTL
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow(minutes=3), pytest.mark.timeout(900)]


def test_make_demo_trains_exports_predicts_and_draws(tmp_path):
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (make install puts it in .venv/bin)")
    data_dir = tmp_path / "demo"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "m2f_devcluster.demo", "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=840)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Failed" not in output and "InvalidSpec" not in output, output[-4000:]

    # The model learned the synthetic shapes (the demo itself refuses less than PQ 0.5).
    pq = float(re.search(r"validation: PQ = ([0-9.]+) after epoch 12/12", output)[1])
    assert pq >= 0.5, output[-2000:]
    assert "TensorRT engine: skipped here" in output

    curves = data_dir / "demo-curves.png"
    overlay = data_dir / "pvc" / "default" / "results" / "inference" / "demo-infer" / "inference" / "overlays" / "000001.png"
    assert f"training curves: {curves}" in output and f"an overlay:      {overlay}" in output
    assert Image.open(curves).size[0] > 600
    # The overlay differs from the photo where segments are outlined (white edges).
    source = np.asarray(Image.open(data_dir / "pvc" / "default" / "datasets" / "demo" / "images" / "000001.jpg"))
    drawn = np.asarray(Image.open(overlay))
    assert drawn.shape == source.shape and (drawn == 255).all(axis=-1).sum() > 100
    print(f"demo: {elapsed:.0f} s, PQ {pq}")
