"""Pure builders of the non-pod children: the experiment ConfigMap and the headless Service."""

from __future__ import annotations

import yaml

from m2f_operator.builders import meta
from m2f_operator.builders.pods import processes_per_node


def render_experiment(body: dict, results_root: str = meta.DEFAULT_RESULTS_ROOT) -> str:
    """The experiment as the pods read it; results_dir is the operator's choice (also in M2F_RESULTS_DIR)."""
    spec = body["spec"]
    experiment = dict(spec.get("experiment") or {})
    experiment["results_dir"] = meta.results_dir(body, results_root)
    if meta.kind_info(body).task == "train":
        # The gang's shape is the resource's (spec.nodes x spec.gpusPerNode), which the pod env contract
        # also carries; the trainer rejects a spec that disagrees with its env, so render it in.
        # gpu_ids go: a pod sees only the GPUs allocated to it, as devices 0..n-1.
        train = {k: v for k, v in (experiment.get("train") or {}).items() if k != "gpu_ids"}
        train["num_nodes"] = spec.get("nodes", 1)
        train["num_gpus"] = processes_per_node(spec.get("gpusPerNode", 0))
        experiment["train"] = train
    return yaml.safe_dump(experiment, sort_keys=False)


def build_configmap(body: dict, results_root: str = meta.DEFAULT_RESULTS_ROOT) -> dict:
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.child_metadata(body, meta.configmap_name(name)),
        "data": {"spec.yaml": render_experiment(body, results_root)},
    }


def build_service(body: dict) -> dict:
    """Headless Service giving each worker the DNS name <pod>.<service>.<ns>.svc (MASTER_ADDR)."""
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.child_metadata(body, meta.service_name(name)),
        "spec": {
            "clusterIP": "None",
            # Rendezvous happens before any readiness: worker 0 must resolve while starting.
            "publishNotReadyAddresses": True,
            "selector": meta.selector_labels(body),
            "ports": [{"name": "dist", "port": meta.MASTER_PORT, "targetPort": meta.MASTER_PORT, "protocol": "TCP"}],
        },
    }
