"""The operator's Prometheus metrics (prometheus-client) on its own /metrics endpoint."""

from __future__ import annotations

import threading
from collections import Counter as TallyCounter

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("m2f_operator_reconciles_total", "Reconciles run, by kind and trigger.",
                     ["kind", "trigger"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("m2f_operator_reconcile_errors_total", "Reconciles that raised, by kind.",
                           ["kind"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("m2f_operator_reconcile_duration_seconds", "Reconcile duration (API calls included).",
                              ["kind"], registry=REGISTRY,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RESOURCES = Gauge("m2f_operator_resources", "Mask2Former resources by kind, namespace and phase.",
                  ["kind", "namespace", "phase"], registry=REGISTRY)
GANG_RESTARTS = Counter("m2f_operator_gang_restarts_total", "Whole-gang restarts, by kind, namespace and cause "
                        "(GangRestart, GangRestartIgnoringLimit, StartupTimeout).", ["kind", "namespace", "cause"],
                        registry=REGISTRY)
FINISHED = Counter("m2f_operator_jobs_finished_total", "Resources that reached Succeeded or Failed, by kind, namespace, "
                   "phase and reason.", ["kind", "namespace", "phase", "reason"], registry=REGISTRY)
STARTUP_SECONDS = Histogram("m2f_operator_gang_startup_seconds", "From a gang's pods' creation to all of them Running, "
                            "by kind and namespace (queueing and scheduling included).", ["kind", "namespace"],
                            registry=REGISTRY, buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600))
PODS_CREATED = Counter("m2f_operator_pods_created_total", "Pods created, by kind and namespace.", ["kind", "namespace"],
                       registry=REGISTRY)
CREATE_FAILURES = Counter("m2f_operator_create_failures_total", "Child creates refused by the API or blocked by a "
                          "previous incarnation's children, by kind, namespace and reason.",
                          ["kind", "namespace", "reason"], registry=REGISTRY)
API_REQUESTS = Counter("m2f_operator_api_requests_total", "Kubernetes API requests made by the reconciler.",
                       ["verb", "resource"], registry=REGISTRY)


class PhaseTracker:
    """Keeps the resources-by-phase gauge equal to what the watch last showed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        self._published: set[tuple[str, str, str]] = set()

    def observe(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            key = (kind, namespace, name)
            if phase is None:
                self._phases.pop(key, None)
            else:
                self._phases[key] = (kind, namespace, phase)
            tally = TallyCounter(self._phases.values())
            for labels in self._published | set(tally):
                RESOURCES.labels(*labels).set(tally.get(labels, 0))
            self._published |= set(tally)


PHASES = PhaseTracker()


def serve(port: int) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)
