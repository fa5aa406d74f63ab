"""The Grafana dashboard and the PodMonitor: every query names a metric the code exports, every selector matches
the pods the operator builds."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from reconcile_factories import resource
from test_helm import HELM, by_kind, render

from m2f_operator import metrics
from m2f_operator.builders import build_gang, build_stages

DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
            "properties": {
                "id": {"type": "integer"},
                "type": {"enum": ["timeseries", "bargauge", "stat", "table"]},
                "gridPos": {"type": "object", "required": ["x", "y", "w", "h"],
                            "properties": {k: {"type": "integer", "minimum": 0} for k in "xywh"}},
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"expr": {"type": "string", "minLength": 1}}}},
            },
        }},
        "templating": {"type": "object", "required": ["list"]},
    },
}
_METRIC = re.compile(r"\b(m2f_[a-z0-9_]+)")


def _exported() -> set[str]:
    """Sample names the operator's registry and rank 0's exporter can serve."""
    from m2f_trainer.engine.prometheus import TrainingExporter

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exporter = TrainingExporter(port=0, addr="127.0.0.1")
    try:
        families = [*metrics.REGISTRY.collect(), *exporter.registry.collect()]
    finally:
        exporter.close()
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


@pytest.fixture(scope="module")
def dashboard(repo_root) -> dict:
    return json.loads((repo_root / "charts" / "mask2former-operator" / "dashboards" / "mask2former.json").read_text())


def test_the_dashboard_is_a_grafana_dashboard_whose_queries_name_exported_metrics(dashboard):
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    exported = _exported()
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for query in queries:
        named = set(_METRIC.findall(query))
        assert named, f"no m2f metric in {query!r}"
        assert named <= exported, f"{query!r} names {sorted(named - exported)}, which nothing exports"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    # What the readers look at: jobs by phase, restarts, queue wait, loss, validation metric, images/s, GPU memory.
    everything = " ".join(queries)
    for metric in ("m2f_operator_resources", "m2f_operator_gang_restarts_total", "m2f_operator_gang_startup_seconds_bucket",
                   "m2f_train_loss", "m2f_validation_metric", "m2f_train_images_per_second",
                   "m2f_gpu_memory_allocated_bytes"):
        assert metric in everything, metric


def test_no_two_panels_overlap(dashboard):
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.skipif(HELM is None, reason="helm binary not installed (make install puts it in .venv/bin)")
def test_the_chart_ships_the_dashboard_and_a_pod_monitor_that_selects_rank_zero(repo_root, dashboard):
    docs = render(repo_root, "metrics.podMonitor.enabled=true", "dashboards.enabled=true")
    (config_map,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["mask2former.json"]) == dashboard
    (monitor,) = by_kind(docs, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    body = resource(nodes=2)
    (stage,) = build_stages(body)
    rank0, rank1 = build_gang(body, stage, attempt=0)
    assert selector.items() <= rank0["metadata"]["labels"].items()
    assert not selector.items() <= rank1["metadata"]["labels"].items()  # only rank 0 serves training metrics
    assert endpoint["port"] in {p["name"] for p in rank0["spec"]["containers"][0]["ports"]}
    job_label = next(r for r in endpoint["relabelings"] if r["targetLabel"] == "job_name")
    assert job_label["sourceLabels"] == ["__meta_kubernetes_pod_label_mask2former_io_job_name"]
    assert not by_kind(render(repo_root), "PodMonitor")  # off by default: it needs the monitoring CRDs
