"""`m2f curves`: a run's metrics.jsonl (restarts included) drawn as a PNG; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from m2f_trainer.cli import main
from m2f_trainer.tasks.curves import read_curves


def _write_run(path, restart_at: int | None = None) -> None:
    records = [{"event": "start", "epoch": 0, "step": 0, "world_size": 2}]
    for step in range(1, 41):
        records.append({"event": "step", "epoch": (step - 1) // 10, "step": step, "loss": 30.0 / step})
        if step % 10 == 0:
            records.append({"event": "validation", "epoch": step // 10 - 1, "val/PQ": step / 50,
                            "val/SQ": 0.7, "val/num_images": 8, "val/N": 5, "val/N_th": 3, "val/PQ_th": 0.1})
        if step == restart_at:
            # Killed after step `restart_at`: the resumed run starts at the last checkpoint (step 20) and
            # rewrites steps 21.. with other values.
            records.append({"event": "start", "epoch": 2, "step": 20, "world_size": 2})
            records += [{"event": "step", "epoch": 2, "step": s, "loss": 99.0} for s in range(21, restart_at + 1)]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_curves_of_a_resumed_run_keep_the_last_record_of_each_step(tmp_path):
    metrics = tmp_path / "train" / "metrics.jsonl"
    metrics.parent.mkdir()
    _write_run(metrics, restart_at=25)
    loss, validation, starts = read_curves(metrics)
    assert sorted(loss) == list(range(1, 41)) and loss[21] == 99.0 and loss[26] == 30.0 / 26  # the resumed run wins
    assert validation["PQ"] == {1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8}
    assert set(validation) == {"PQ", "SQ"}  # not the counts nor the things/stuff breakdowns
    assert starts == [0, 20]


def test_m2f_curves_writes_a_png_beside_the_metrics(tmp_path, capsys):
    metrics = tmp_path / "train" / "metrics.jsonl"
    metrics.parent.mkdir()
    _write_run(metrics, restart_at=25)
    assert main(["curves", str(tmp_path)]) == 0  # the run's results_dir
    out = tmp_path / "train" / "curves.png"
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1100, 400)
        # Not blank: the curves put many colours on the canvas.
        assert len(set(image.convert("RGB").getdata())) > 50


@pytest.mark.parametrize(
    ("content", "error"),
    [(None, "no metrics.jsonl there"), ("", "no training steps recorded yet"), ("{oops\n", ":1: not a JSON line")],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, error):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert main(["curves", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0], err
