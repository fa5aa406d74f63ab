"""An operator restart mid-job adopts the running gang: no duplicate, no recreated pod."""

from __future__ import annotations

import pytest
from m2f_operator import metrics
from operator_harness import emulated_cluster, running_operator
from reconcile_factories import TINY_EXPERIMENT

TRAIN = "Mask2FormerTrain"
# Same xdist worker as test_operator.py: one in-process kopf operator at a time, less CPU contention.
pytestmark = pytest.mark.xdist_group("m2f-operator-emulator")


def test_operator_restart_creates_no_duplicate_pods():
    names = ["run-worker-0", "run-worker-1", "run-worker-2"]
    with emulated_cluster() as (cluster, _):
        ns = cluster.namespace()
        with running_operator() as first:
            cluster.create(ns, TRAIN, "run", {"experiment": TINY_EXPERIMENT, "nodes": 3, "gpusPerNode": 0})
            pods = cluster.wait_pods(ns, names)
            cluster.set_pod(ns, "run-worker-0", "Running")
            cluster.set_pod(ns, "run-worker-1", "Running")
            cluster.wait_phase(ns, TRAIN, "run", "Created")
        assert first.exception is None
        uids = {p.metadata.name: p.metadata.uid for p in pods}
        created = metrics.REGISTRY.get_sample_value("m2f_operator_pods_created_total", {"kind": TRAIN})

        with running_operator() as second:
            # The new operator is live (it sees the last worker start) ...
            cluster.set_pod(ns, "run-worker-2", "Running")
            cluster.wait_phase(ns, TRAIN, "run", "Running")
            # ... and kept the very same pods.
            after = cluster.pods(ns)
        assert second.exception is None
        assert {p.metadata.name: p.metadata.uid for p in after} == uids
        assert metrics.REGISTRY.get_sample_value("m2f_operator_pods_created_total", {"kind": TRAIN}) == created
        assert cluster.status(ns, TRAIN, "run")["restarts"] == 0
