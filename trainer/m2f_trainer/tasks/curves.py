"""`m2f curves PATH [-o curves.png]`: the training curves of a run (loss per step, validation metrics per
epoch) drawn from its metrics.jsonl, restarts marked. PATH is the metrics.jsonl, its train folder or the
run's results_dir."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from m2f_trainer.errors import UserError

SKIPPED_VALIDATION_KEYS = ("val/num_images",)


def _plotted(name: str) -> bool:
    """The headline metrics (PQ, SQ, RQ, AP, AP50, mIoU, ...): not the category counts (N, N_th) nor the
    things/stuff breakdowns (PQ_th, PQ_st), which metrics.json keeps."""
    return not (name == "N" or name.startswith("N_") or name.endswith(("_th", "_st")))


def find_metrics(path: Path) -> Path:
    for candidate in (path, path / "metrics.jsonl", path / "train" / "metrics.jsonl"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{path}: no metrics.jsonl there (give the file, its train folder or the run's results_dir)")


def read_curves(metrics: Path) -> tuple[dict[int, float], dict[str, dict[int, float]], list[int]]:
    """(loss by step, validation metric -> value by epoch, steps where a run (re)started). A resumed run
    rewrites the steps after its checkpoint: the last record of a step wins."""
    loss: dict[int, float] = {}
    validation: dict[str, dict[int, float]] = {}
    starts: list[int] = []
    for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UserError(f"{metrics}:{number}: not a JSON line") from None
        event = record.get("event")
        if event == "step" and isinstance(record.get("loss"), (int, float)):
            loss[int(record["step"])] = float(record["loss"])
        elif event == "validation":
            for key, value in record.items():
                if (key.startswith("val/") and key not in SKIPPED_VALIDATION_KEYS and _plotted(key.removeprefix("val/"))
                        and isinstance(value, (int, float))):
                    validation.setdefault(key.removeprefix("val/"), {})[int(record["epoch"]) + 1] = float(value)
        elif event == "start":
            starts.append(int(record.get("step", 0)))
    if not loss:
        raise UserError(f"{metrics}: no training steps recorded yet")
    return loss, validation, starts


def draw(metrics: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a node or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    loss, validation, starts = read_curves(metrics)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    steps = sorted(loss)
    left.plot(steps, [loss[s] for s in steps], color="tab:blue", linewidth=1, label="loss")
    window = max(1, len(steps) // 20)
    if window > 1:
        smooth = [sum(loss[s] for s in steps[max(0, i - window + 1):i + 1]) / len(steps[max(0, i - window + 1):i + 1])
                  for i in range(len(steps))]
        left.plot(steps, smooth, color="tab:orange", linewidth=2, label=f"mean of {window} steps")
    for step in starts[1:]:
        left.axvline(step, color="tab:red", linestyle="--", linewidth=1)
    if len(starts) > 1:
        left.plot([], [], color="tab:red", linestyle="--", label="restart (resumed)")
    left.set(title="training loss", xlabel="optimizer step", ylabel="total loss")
    values = [loss[s] for s in steps]
    if min(values) > 0 and max(values) / min(values) > 10:  # a long run's loss spans decades
        left.set_yscale("log")
    left.legend(loc="best")
    if validation:
        for name, values in sorted(validation.items()):
            epochs = sorted(values)
            right.plot(epochs, [values[e] for e in epochs], marker="o", label=name)
        right.set(title="validation", xlabel="epoch")
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.legend(loc="best")
    else:
        right.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    figure.suptitle(str(metrics.parent))
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="m2f curves", description=__doc__)
    parser.add_argument("path", type=Path, help="metrics.jsonl, its train folder, or the run's results_dir")
    parser.add_argument("-o", "--out", type=Path, help="PNG to write (default: curves.png beside metrics.jsonl)")
    args = parser.parse_args(argv)
    metrics = find_metrics(args.path)
    out = draw(metrics, args.out or metrics.parent / "curves.png")
    print(out)
    return 0
