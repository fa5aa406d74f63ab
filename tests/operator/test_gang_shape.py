"""spec.nodes / spec.gpusPerNode define the training gang: rendered into the experiment, never contradicted."""

from __future__ import annotations

import pytest
import yaml

from m2f_operator.builders.children import render_experiment
from m2f_operator.validation import spec_error


def _train(nodes=2, gpus=0, train=None) -> dict:
    spec = {"nodes": nodes, "gpusPerNode": gpus, "experiment": {"model": {"mode": "panoptic"}}}
    if train is not None:
        spec["experiment"]["train"] = train
    return {"apiVersion": "mask2former.io/v1alpha1", "kind": "Mask2FormerTrain",
            "metadata": {"name": "job", "namespace": "ns", "uid": "u1"}, "spec": spec}


@pytest.mark.parametrize(
    ("nodes", "gpus", "train", "expected"),
    [
        (2, 0, None, {"num_nodes": 2, "num_gpus": 1}),
        (3, 8, {"num_epochs": 5}, {"num_epochs": 5, "num_nodes": 3, "num_gpus": 8}),
        (2, 4, {"num_nodes": 2, "num_gpus": 4, "gpu_ids": [4, 5, 6, 7]}, {"num_nodes": 2, "num_gpus": 4}),
    ],
)
def test_rendered_experiment_carries_the_gang_shape(nodes, gpus, train, expected):
    rendered = yaml.safe_load(render_experiment(_train(nodes, gpus, train)))
    assert rendered["train"] == expected
    assert rendered["results_dir"].endswith("/train/job")


@pytest.mark.parametrize(
    ("nodes", "gpus", "train", "error"),
    [
        (2, 0, {"num_nodes": 1}, "spec.experiment.train.num_nodes: 1 disagrees with spec.nodes: 2"),
        (1, 8, {"num_gpus": 2}, "spec.experiment.train.num_gpus: 2 disagrees with spec.gpusPerNode: 8"),
        (1, 0, {"num_gpus": 4}, "spec.experiment.train.num_gpus: 4 disagrees with spec.gpusPerNode: 0"),
    ],
)
def test_contradicting_the_gang_shape_is_invalid(nodes, gpus, train, error):
    assert spec_error(_train(nodes, gpus, train)).startswith(error)


@pytest.mark.parametrize("train", [None, {"num_nodes": 2, "num_gpus": 1}, {"num_epochs": 3}])
def test_agreeing_or_absent_gang_fields_are_valid(train):
    assert spec_error(_train(2, 0, train)) is None


def test_other_kinds_are_left_alone():
    body = _train(1, 0, {"num_gpus": 4})
    body["kind"] = "Mask2FormerEvaluate"
    rendered = yaml.safe_load(render_experiment(body))
    assert rendered["train"] == {"num_gpus": 4}
