"""A sweep's trials as a table and one PNG of Optuna's matplotlib plots.

The PNG shows the objective per trial with the best so far, the learning curves early stopping judged, and
parameter importance.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from m2f_spec.sweep.space import parse_parameters

log = logging.getLogger(__name__)


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(history: Sequence[Mapping], metric: str, best_name: str | None) -> str:
    """One row per trial: name, state, objective, last epoch seen, parameters, and why it ended early."""
    paths = sorted({path for record in history for path in record.get("parameters") or {}})
    header = ["TRIAL", "STATE", metric.upper(), "EPOCHS", *paths, "NOTE"]
    rows = []
    for record in history:
        intermediate = record.get("intermediate") or []
        value = record.get("value")
        if value is None and intermediate:
            value = intermediate[-1][1]
        note = "best" if record.get("name") == best_name else ""
        if record.get("state") in ("Pruned", "Failed", "Stopped"):
            note = record.get("message") or record.get("reason") or ""
        rows.append([record.get("name", ""), record.get("state", ""), "" if value is None else _show(value),
                     str(intermediate[-1][0]) if intermediate else "",
                     *[_show((record.get("parameters") or {}).get(path, "")) for path in paths], note])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    widths[-1] = 0  # the note is left unpadded
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def write_png(spec: Mapping, history: Sequence[Mapping], path: Path) -> Path | None:
    """The three plots side by side in `path`; None (with a log line) when fewer than two trials have values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov
    from matplotlib.ticker import MaxNLocator
    from PIL import Image

    from m2f_spec.sweep.study import study_of

    objective = spec.get("objective") or {}
    metric = objective.get("metric", "objective")
    goal = objective.get("goal", "minimize" if str(metric).endswith("loss") else "maximize")
    parameters = parse_parameters(spec.get("parameters"), {}, validate_values=False)
    study = study_of(parameters, goal, history)
    finished = [t for t in study.trials if t.value is not None]
    if len(finished) < 2:
        log.info("sweep report: fewer than two trials with a value; no PNG")
        return None
    panels = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        labels = {f"Trial{r['number']}": f"{r.get('name', r['number'])} ({str(r.get('state', '')).lower()})"
                  for r in history}
        plots = [(lambda: ov.plot_optimization_history(study, target_name=metric),
                  f"{metric} of each finished trial, and the best so far", "trial", metric),
                 (lambda: ov.plot_intermediate_values(study),
                  f"{metric} at each observed validation (pruned trials stop early)", "epoch", metric)]
        if len(parameters) > 1 and len([t for t in study.trials if t.state.name == "COMPLETE"]) >= 2:
            plots.append((lambda: ov.plot_param_importances(study, target_name=metric),
                          f"parameter importance for {metric}", None, None))
        for draw, title, xlabel, ylabel in plots:
            try:
                axes = draw()
            except Exception as exc:  # noqa: BLE001 (one plot that cannot be drawn must not lose the others)
                log.info("sweep report: a plot was skipped: %s", exc)
                continue
            for side in ("left", "right"):  # Optuna puts some titles at a side; ours replaces them
                axes.set_title("", loc=side)
            axes.set_title(title, fontsize=10)
            if xlabel:  # trials and epochs are whole numbers: no 1.5 on the axis
                axes.set_xlabel(xlabel)
                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if ylabel:
                axes.set_ylabel(ylabel)
            handles, names = axes.get_legend_handles_labels()
            if handles and any(name in labels for name in names):
                axes.legend(handles, [labels.get(name, name) for name in names], fontsize=8,
                            bbox_to_anchor=(1.02, 1.0), loc="upper left")
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(6.4, 4.6)
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100)
            plt.close(figure)
            panels.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    if not panels:
        return None
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
