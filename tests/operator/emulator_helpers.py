"""Shared manifests for the emulator tests: a CRD shaped like the project's (status subresource, columns)."""

from __future__ import annotations

GROUP, VERSION, PLURAL = "mask2former.io", "v1alpha1", "mask2formertrains"


def train_crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "mask2formertrain", "kind": "Mask2FormerTrain",
                      "shortNames": ["m2ft"], "categories": ["mask2former"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                               "properties": {"spec": {"type": "object", "properties": {
                                                   "experiment": {"type": "object", "x-kubernetes-validations": [
                                                       {"rule": "self == oldSelf",
                                                        "message": "spec.experiment is immutable"}]}}}}}},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nodes"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    }


def train(name: str, nodes: int = 2, **labels: str) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Mask2FormerTrain",
            "metadata": {"name": name, "labels": labels}, "spec": {"nodes": nodes, "experiment": {"a": 1}}}


def pod(name: str, node: str | None = None, **labels: str) -> dict:
    spec: dict = {"containers": [{"name": "main", "image": "busybox:1", "command": ["true"]}],
                  "restartPolicy": "Never"}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}
