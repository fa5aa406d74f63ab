"""End-to-end fixtures: the embedded dev cluster (API emulator + local kubelet + real operator), kubectl
bound to it, and a tiny synthetic COCO-panoptic dataset on its `datasets` PVC."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from m2f_operator.devcluster import DevCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
NAMESPACE = "default"
# Fault tests want the operator to notice a stuck-Terminating pod quickly.
OPERATOR_ENV = {"M2F_STUCK_TERMINATING_SECONDS": "5", "M2F_RESYNC_SECONDS": "2"}


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory) -> Iterator[DevCluster]:
    """One dev cluster per test module: two local nodes, CRDs installed, the operator running."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (make install puts it in .venv/bin)")
    with DevCluster(tmp_path_factory.mktemp("devcluster"), operator_env=dict(OPERATOR_ENV)) as cluster:
        yield cluster


class Kubectl:
    """Real kubectl against the dev cluster: ``kubectl("get", "pods")``, ``kubectl.json("get", "m2ft", "x")``."""

    def __init__(self, cluster: DevCluster):
        self.argv = [KUBECTL, "--kubeconfig", str(cluster.kubeconfig)]

    def __call__(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None):
        result = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(self, manifest: dict) -> subprocess.CompletedProcess:
        return self("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def wait_for(self, predicate: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
        """Poll `predicate` (through kubectl) until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture()
def kubectl(dev_cluster: DevCluster) -> Kubectl:
    return Kubectl(dev_cluster)


@pytest.fixture(scope="module")
def synthetic_panoptic(dev_cluster: DevCluster) -> str:
    """`m2f data synth` into the cluster's `datasets` PVC; returns the path pods see (/datasets/synth)."""
    target = dev_cluster.data_dir / "pvc" / NAMESPACE / "datasets" / "synth"
    if not (target / "annotations").is_dir():
        subprocess.run([sys.executable, "-m", "m2f_trainer.cli", "data", "synth", "--type", "coco_panoptic",
                        "--num-images", "4", "--size", "64x64", "--out", str(target)], check=True,
                       capture_output=True, timeout=300)
    return "/datasets/synth"


def tiny_experiment(dataset: str, *, nodes: int = 2, epochs: int = 2) -> dict:
    """examples/specs/tiny_cpu_panoptic.yaml with its data on the datasets volume."""
    text = (REPO_ROOT / "examples" / "specs" / "tiny_cpu_panoptic.yaml").read_text()
    spec = yaml.safe_load(text.replace("./data/synth_panoptic", dataset))
    spec.pop("results_dir", None)  # the operator chooses it on the results volume
    spec["train"]["num_epochs"] = epochs
    spec["train"]["num_nodes"] = nodes
    return spec


def train_manifest(name: str, experiment: dict, *, nodes: int = 2, **spec: object) -> dict:
    """A Mask2FormerTrain on the dev cluster: CPU workers, datasets and results on PVCs."""
    return {
        "apiVersion": "mask2former.io/v1alpha1", "kind": "Mask2FormerTrain", "metadata": {"name": name},
        "spec": {
            "nodes": nodes, "gpusPerNode": 0,
            "volumes": [{"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets"}},
                        {"name": "results", "persistentVolumeClaim": {"claimName": "results"}}],
            "volumeMounts": [{"name": "datasets", "mountPath": "/datasets"},
                             {"name": "results", "mountPath": "/results"}],
            "experiment": experiment, **spec,
        },
    }


def results_dir(cluster: DevCluster, kind_task: str, name: str) -> Path:
    """Where the operator's per-resource results_dir (/results/<task>/<name>) lands locally."""
    return cluster.data_dir / "pvc" / NAMESPACE / "results" / kind_task / name
