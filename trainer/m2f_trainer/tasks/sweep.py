"""`m2f sweep`: the Mask2FormerSweep search without a cluster, and `m2f sweep report` for either.

    m2f sweep -e spec.yaml --space space.yaml [section.key=value ...]
    m2f sweep report NAME [-n NAMESPACE] [--kubeconfig FILE] [-o sweep.png]
    m2f sweep report -f sweep.json|status-dump.yaml [-o sweep.png]

Locally, trials run one after another as `m2f train` processes (each in <results_dir>/sweep/<trial>), with the
same suggestions, the same early stopping (read from each trial's metrics.jsonl; a pruned trial gets SIGTERM and
saves its checkpoint) and the same record as the operator's status: <results_dir>/sweep/sweep.json, which also
lets an interrupted sweep continue where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from m2f_spec import parse_task_args, spec_to_dict, task_results_dir
from m2f_spec.args import RESULTS_DIR_ENV, raising_parser
from m2f_spec.errors import SpecError, UserError
from m2f_trainer.tasks import setup_logging

log = logging.getLogger("m2f_trainer.sweep")
POLL_S = 0.5
SEARCH_KEYS = ("parameters", "objective", "algorithm", "algorithmSettings", "earlyStopping", "seed")
RESUME_KEYS = (*SEARCH_KEYS, "experimentDigest")  # a continued sweep must search the same way over the same spec


def main(argv: list[str]) -> int:
    if argv and argv[0] == "report":
        return report(argv[1:])
    return run(argv)


# -- the local search -------------------------------------------------------------------------------------


def _read_space(path: str) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--space: file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a mapping of sweep settings is required")
    return raw


def run(argv: list[str]) -> int:
    from m2f_spec.sweep import study
    from m2f_spec.sweep.settings import settings_from

    cfg, ns = parse_task_args(argv, "m2f sweep", lambda p: p.add_argument("--space", default=None, metavar="FILE",
                                                                          help="search space and settings (YAML)"))
    setup_logging()
    space = _read_space(ns.space) if ns.space else {}
    settings = settings_from(space, spec_to_dict(cfg), where=ns.space or "sweep settings")
    sweep_dir = task_results_dir(cfg, "sweep")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record_file = sweep_dir / "sweep.json"
    experiment = json.dumps({k: v for k, v in spec_to_dict(cfg).items() if k != "results_dir"}, sort_keys=True,
                            default=str)
    spec = {"experimentSpec": str(Path(ns.experiment_spec_file).resolve()), "overrides": list(ns.overrides),
            "experimentDigest": hashlib.sha256(experiment.encode()).hexdigest()[:16],
            **{k: v for k, v in space.items() if k in SEARCH_KEYS or k in ("maxTrials", "parallelTrials",
                                                                            "maxFailedTrials")},
            "parameters": {p.path: p.to_dict() for p in settings.parameters},
            "objective": {"metric": settings.metric, "goal": settings.goal}}
    history = _resume(record_file, spec)
    log.info("sweep: %d trials (%s, early stopping %s) on %s; records in %s", settings.trial_budget,
             settings.algorithm, settings.early_stopping.algorithm, settings.metric, record_file)

    def save(phase: str) -> None:
        _write(record_file, spec, history, settings, phase)

    while True:
        failed = sum(1 for r in history if r["state"] == study.FAILED)
        if failed > settings.max_failed:
            phase = "Failed"
            log.error("sweep: %d trials failed (maxFailedTrials %d)", failed, settings.max_failed)
            break
        record = next((r for r in history if r["state"] == study.RUNNING), None)
        if record is None:
            if not study.can_start(history, settings):
                phase = "Succeeded" if study.best(history, settings.goal) else "Failed"
                break
            number = len(history)
            record = {"number": number, "name": f"trial-{number:03d}",
                      "parameters": study.suggest(settings, history), "state": study.RUNNING,
                      "seen": study.seen_by(number, settings.parallel), "intermediate": []}
            history.append(record)
        save("Running")
        _run_trial(record, history, settings, cfg, ns, sweep_dir, save)
    save(phase)
    return _print_report(spec, history, settings.metric, sweep_dir / "sweep.png", phase)


def _resume(record_file: Path, spec: dict) -> list[dict]:
    if not record_file.is_file():
        return []
    previous = json.loads(record_file.read_text(encoding="utf-8"))
    if {k: previous["spec"].get(k) for k in RESUME_KEYS} != {k: spec.get(k) for k in RESUME_KEYS}:
        raise UserError(f"{record_file} records another search or experiment; give another results_dir or remove it")
    history = previous["status"].get("history") or []
    if history:
        log.info("sweep: continuing from %s (%d trials recorded)", record_file, len(history))
    return history


def _write(record_file: Path, spec: dict, history: list[dict], settings, phase: str) -> None:
    from m2f_spec.sweep import study

    counts = {s: sum(1 for r in history if r["state"] == s) for s in (study.RUNNING, study.SUCCEEDED, study.PRUNED)}
    top = study.best(history, settings.goal)
    status = {"phase": phase, "history": history, "trials": {
        "total": len(history), "running": counts[study.RUNNING], "succeeded": counts[study.SUCCEEDED],
        "pruned": counts[study.PRUNED], "failed": len(history) - sum(counts.values())}}
    if top is not None:
        status["bestTrial"] = {"name": top["name"], "number": top["number"], "parameters": top["parameters"],
                               "metric": settings.metric, "value": top["value"]}
    temporary = record_file.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"kind": "Mask2FormerSweep", "spec": spec, "status": status}, indent=1))
    temporary.replace(record_file)  # atomic: an interrupted sweep never leaves half a record


def _run_trial(record: dict, history: list[dict], settings, cfg, ns, sweep_dir: Path, save) -> None:
    """One `m2f train` for the trial, watched through its metrics.jsonl; stopped early when it is hopeless."""
    from m2f_spec.sweep import study

    trial_dir = sweep_dir / record["name"]
    trial_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*ns.overrides, *[f"{path}={json.dumps(value)}" for path, value in record["parameters"].items()]]
    command = [sys.executable, "-m", "m2f_trainer.cli", "train", "-e", ns.experiment_spec_file, *overrides]
    # Its own results folder; no metrics port (trials run one after another, and nothing scrapes them here).
    env = {**os.environ, RESULTS_DIR_ENV: str(trial_dir), "M2F_METRICS_PORT": "0"}
    log.info("trial %s: %s", record["name"], ", ".join(f"{k}={v}" for k, v in record["parameters"].items()))
    log_path = trial_dir / "train.log"
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    metrics_file, offset, pruned = trial_dir / "train" / "metrics.jsonl", 0, None
    try:
        while True:
            exited = process.poll() is not None
            offset, validations = _new_validations(metrics_file, offset)
            for epoch, metrics in validations:
                value = metrics.get(settings.metric)
                if isinstance(value, (int, float)) and epoch not in {e for e, _ in record["intermediate"]}:
                    record["intermediate"].append([epoch, float(value)])
                    # Judged while it trains, as on a cluster: a trial that already finished is a result.
                    if not exited:
                        pruned = pruned or study.prune_reason(settings, history, record)
            if pruned and not exited:
                process.send_signal(signal.SIGTERM)  # the trainer saves a checkpoint and exits 143
                try:
                    process.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                exited = True
            if exited:
                break
            time.sleep(POLL_S)
    except BaseException:
        process.terminate()
        process.wait()
        raise
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if pruned:
        record.update(state=study.PRUNED, reason="EarlyStopped", message=pruned, completionTime=finished)
    elif process.returncode == 0:
        final = record["intermediate"][-1][1] if record["intermediate"] else None
        if final is None:
            record.update(state=study.FAILED, reason="MetricMissing",
                          message=f"the trial reported no {settings.metric}", completionTime=finished)
        else:
            record.update(state=study.SUCCEEDED, value=final, reason="TrialSucceeded",
                          message=f"{settings.metric} {final:.4g}", completionTime=finished)
    else:
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        last = next((line for line in reversed(lines) if line.startswith("error:")), f"see {log_path}")
        record.update(state=study.FAILED, reason="TrialFailed", completionTime=finished,
                      message=f"exit code {process.returncode}: {last}")
    log.info("trial %s: %s (%s)", record["name"], record["state"], record["message"])
    save("Running")


def _new_validations(metrics_file: Path, offset: int) -> tuple[int, list[tuple[int, dict]]]:
    """Validations appended to metrics.jsonl since `offset`: (1-based epoch, {metric: value})."""
    if not metrics_file.is_file():
        return offset, []
    with open(metrics_file, encoding="utf-8") as handle:
        handle.seek(offset)
        text = handle.read()
    complete = text[:text.rfind("\n") + 1]  # a line being written is read next time
    found = []
    for line in complete.splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("event") == "validation":
            found.append((int(event["epoch"]) + 1,
                          {k.removeprefix("val/"): v for k, v in event.items() if k.startswith("val/")}))
    return offset + len(complete.encode("utf-8")), found


# -- reports ----------------------------------------------------------------------------------------------


def report(argv: list[str]) -> int:
    parser = raising_parser("m2f sweep report")
    parser.add_argument("name", nargs="?", help="a Mask2FormerSweep in the cluster (read with kubectl)")
    parser.add_argument("-f", "--file", help="a sweep.json or a `kubectl get m2fsweep NAME -o yaml|json` dump")
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--kubeconfig")
    parser.add_argument("-o", "--output", help="PNG path (default <name>-sweep.png)")
    args = parser.parse_args(argv)
    if bool(args.name) == bool(args.file):
        raise UserError("m2f sweep report: give a sweep NAME or -f FILE")
    body = _read_dump(Path(args.file)) if args.file else _kubectl_get(args.name, args.namespace, args.kubeconfig)
    name = (body.get("metadata") or {}).get("name") or (Path(args.file).stem if args.file else args.name)
    spec, status = body.get("spec") or {}, body.get("status") or {}
    metric = (status.get("bestTrial") or {}).get("metric") or (spec.get("objective") or {}).get("metric", "objective")
    return _print_report(spec, status.get("history") or [], metric, Path(args.output or f"{name}-sweep.png"),
                         status.get("phase", ""))


def _read_dump(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
        # JSON first: YAML 1.1 would read a JSON number like 1e-05 as a string.
        body = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except FileNotFoundError:
        raise UserError(f"-f: file not found: {path}") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: neither JSON nor YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(body, dict) or "status" not in body:
        raise UserError(f"{path}: not a sweep (no status); expected sweep.json or a Mask2FormerSweep dump")
    return body


def _kubectl_get(name: str, namespace: str | None, kubeconfig: str | None) -> dict:
    command = ["kubectl", "get", "mask2formersweeps.mask2former.io", name, "-o", "json"]
    command += ["-n", namespace] if namespace else []
    command += ["--kubeconfig", kubeconfig] if kubeconfig else []
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError("kubectl is not installed; dump the sweep elsewhere and use -f FILE") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise UserError(f"kubectl get m2fsweep {name}: {lines[-1] if lines else 'failed'}")
    return json.loads(result.stdout)


def _print_report(spec: dict, history: list[dict], metric: str, png: Path, phase: str) -> int:
    from m2f_trainer.tasks.sweep_report import trials_table, write_png

    objective = spec.get("objective") or {}
    goal = objective.get("goal") or ("minimize" if str(metric).endswith("loss") else "maximize")
    best = min((r for r in history if r.get("state") == "Succeeded" and r.get("value") is not None),
               key=lambda r: (-r["value"] if goal == "maximize" else r["value"], r["number"]), default=None)
    print(trials_table(history, metric, best["name"] if best else None))
    if best is not None:
        print(f"best: {best['name']} {metric}={best['value']:.4g} "
              + " ".join(f"{k}={v}" for k, v in best["parameters"].items()))
    written = write_png(spec, history, png)
    if written is not None:
        print(f"plots: {written}")
    return 0 if phase in ("Succeeded", "Running", "") else 1
