"""End-to-end fixtures: the embedded dev cluster (a control plane + local kubelet + real operator), kubectl
and a Kubernetes API watch recorder bound to it, and a tiny synthetic COCO-panoptic dataset on its
`datasets` PVC. Every e2e test runs on both control planes (`backend`: the emulator and the real one)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from control_planes import BACKENDS, require_real_control_plane
from e2e_helpers import KUBECTL, NAMESPACE, OPERATOR_ENV, ClusterEnv, Kubectl, Recorder

from m2f_devcluster import DevCluster

DATASET_IN_PODS = "/datasets/synth"


@pytest.fixture(scope="session")
def synthetic_dataset_dir(tmp_path_factory) -> Path:
    """`m2f data synth`: 8 COCO-panoptic images of 64x64 (train and val share them), made once."""
    target = tmp_path_factory.mktemp("e2e-data") / "synth"
    subprocess.run([sys.executable, "-m", "m2f_trainer.cli", "data", "synth", "--type", "coco_panoptic",
                    "--num-images", "8", "--size", "64x64", "--seed", "0", "--out", str(target)],
                   check=True, capture_output=True, timeout=300)
    return target


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    if request.param == "real":
        require_real_control_plane()
    return request.param


def _start_cluster(data_dir: Path, dataset: Path, backend: str) -> DevCluster:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (make install puts it in .venv/bin)")
    shutil.copytree(dataset, data_dir / "pvc" / NAMESPACE / "datasets" / "synth")
    return DevCluster(data_dir, operator_env=dict(OPERATOR_ENV), control_plane=backend).start(timeout=180)


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory, synthetic_dataset_dir, backend) -> Iterator[DevCluster]:
    """One dev cluster per test module and control plane: two local nodes, CRDs installed, the operator
    running, the synthetic dataset on its `datasets` PVC."""
    cluster = _start_cluster(tmp_path_factory.mktemp(f"devcluster-{backend}"), synthetic_dataset_dir, backend)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def kubectl(dev_cluster: DevCluster) -> Kubectl:
    return Kubectl(dev_cluster.kubeconfig)


@pytest.fixture(scope="module")
def synthetic_panoptic(dev_cluster: DevCluster) -> str:
    """The dataset folder as pods see it (the `datasets` claim mounted at /datasets)."""
    return DATASET_IN_PODS


@pytest.fixture(scope="module")
def cluster_env(dev_cluster: DevCluster) -> Iterator[ClusterEnv]:
    recorder = Recorder(dev_cluster.kubeconfig).start()
    try:
        yield ClusterEnv(dev_cluster, Kubectl(dev_cluster.kubeconfig), recorder, DATASET_IN_PODS)
    finally:
        recorder.stop()


@pytest.fixture(scope="module")
def lost_node_env(tmp_path_factory, synthetic_dataset_dir, backend) -> Iterator[ClusterEnv]:
    """A second dev cluster for the lost-node fault: a lost node stays lost and would freeze the pods of
    any other job bound to it."""
    cluster = _start_cluster(tmp_path_factory.mktemp(f"devcluster-lost-{backend}"), synthetic_dataset_dir, backend)
    recorder = Recorder(cluster.kubeconfig).start()
    try:
        yield ClusterEnv(cluster, Kubectl(cluster.kubeconfig), recorder, DATASET_IN_PODS)
    finally:
        recorder.stop()
        cluster.stop()
