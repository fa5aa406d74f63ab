"""Command-line parsing shared by every task: `-e spec.yaml` plus `section.key=value` overrides."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from m2f_spec.errors import SpecError, UserError
from m2f_spec.loader import load_spec
from m2f_spec.schema import ExperimentConfig

# The operator points every task at the results volume through this variable (pod env contract).
RESULTS_DIR_ENV = "M2F_RESULTS_DIR"
TASKS_WITH_RESULTS_DIR = ("train", "evaluate", "inference", "export", "gen_trt_engine", "quantize")


class _RaisingParser(argparse.ArgumentParser):
    """argparse that raises UserError instead of printing usage and exiting, so the CLI reports one line."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def raising_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser whose errors are UserErrors (one line, exit 2)."""
    return _RaisingParser(prog=prog, description=description)


def build_task_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """The parser every task starts from; tasks may add their own options before parsing."""
    parser = raising_parser(prog, description)
    parser.add_argument(
        "-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec_file", metavar="SPEC",
        help="experiment spec YAML (TAO-compatible)",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value",
        help="spec overrides, values read as YAML (e.g. train.num_gpus=2 train.gpu_ids=[0,1])",
    )
    return parser


def parse_task_args(
    argv: list[str],
    prog: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[ExperimentConfig, argparse.Namespace]:
    """Parse `-e SPEC [overrides...]`, load and validate the spec; raises SpecError / UserError.

    M2F_RESULTS_DIR, when set, replaces the spec's results_dir and clears the per-task results_dir
    fields, so every task writes to <M2F_RESULTS_DIR>/<task> (the operator's choice wins).
    """
    parser = build_task_parser(prog)
    if add_arguments is not None:
        add_arguments(parser)
    ns = parser.parse_intermixed_args(argv)
    if not ns.experiment_spec_file:
        raise SpecError(f"{prog}: missing the experiment spec: -e/--experiment_spec_file SPEC.yaml")
    bad = [o for o in ns.overrides if "=" not in o]
    if bad:
        raise SpecError(f"{prog}: argument {bad[0]!r} is not an override; use section.key=value")
    cfg = load_spec(ns.experiment_spec_file, ns.overrides)
    if os.environ.get(RESULTS_DIR_ENV):
        cfg.results_dir = os.environ[RESULTS_DIR_ENV]
        for task in TASKS_WITH_RESULTS_DIR:
            getattr(cfg, task).results_dir = None
    return cfg, ns


def task_results_dir(cfg: ExperimentConfig, task: str) -> Path:
    """`<task>.results_dir` when set, else `<results_dir>/<task>` (TAO's layout)."""
    own = getattr(getattr(cfg, task, None), "results_dir", None)
    return Path(own) if own else Path(cfg.results_dir) / task
