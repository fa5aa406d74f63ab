"""The Helm chart: real `helm lint` and `helm template`, every rendered manifest valid for Kubernetes 1.30."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

HELM = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
pytestmark = pytest.mark.skipif(HELM is None, reason="helm binary not installed (make install puts it in .venv/bin)")
# Kinds from other projects' CRDs: kubernetes-validate has no schema for them.
FOREIGN_KINDS = {"ServiceMonitor", "PodMonitor"}


def chart(repo_root: Path) -> str:
    return str(repo_root / "charts" / "mask2former-operator")


def render(repo_root: Path, *sets: str) -> list[dict]:
    args = [HELM, "template", "m2f", chart(repo_root), "--namespace", "ops", "--include-crds"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint(repo_root):
    result = subprocess.run([HELM, "lint", "--strict", chart(repo_root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "sets",
    [(), ("watchNamespace=ml",), ("metrics.serviceMonitor.enabled=true", "worker.namespaces={ml,vision}"),
     ("metrics.podMonitor.enabled=true", "dashboards.enabled=true")],
    ids=["cluster-wide", "one-namespace", "service-monitor", "pod-monitor-and-dashboard"],
)
def test_every_rendered_manifest_is_valid(repo_root, sets):
    docs = render(repo_root, *sets)
    for doc in docs:
        if doc["kind"] in FOREIGN_KINDS:
            continue
        kubernetes_validate.validate(doc, "1.30", strict=True)
    assert len(by_kind(docs, "CustomResourceDefinition")) == len(PLURALS)
    assert bool(by_kind(docs, "ServiceMonitor")) == ("metrics.serviceMonitor.enabled=true" in sets)


def test_deployment_is_hardened_two_replicas_with_a_lease_and_liveness(repo_root):
    docs = render(repo_root)
    (deployment,) = by_kind(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    (lease_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "ops"  # the release namespace only
    named = [rule for rule in lease_role["rules"] if rule.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": ["m2f-mask2former-operator"], "verbs": ["get", "update"]}]
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["M2F_LEADER_ELECTION_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Without leader election: one replica, Recreate, no Lease.
    single = render(repo_root, "leaderElection.enabled=false")
    (deployment,) = by_kind(single, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(single, "PodDisruptionBudget") and not by_kind(single, "Role")
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["M2F_WATCH_NAMESPACE"] == "" and env["M2F_WORKER_SERVICE_ACCOUNT"] == "mask2former-worker"


PLURALS = ("mask2formertrains", "mask2formerevaluates", "mask2formerinferences", "mask2formerexports",
           "mask2formersweeps")


def test_rbac_modes_and_least_privilege(repo_root):
    cluster_wide = render(repo_root)
    assert {r["metadata"]["name"] for r in by_kind(cluster_wide, "ClusterRole")} == {
        "m2f-mask2former-operator", "m2f-mask2former-operator-discovery"}
    # Workers get no Role at all; the operator's only Role is its Lease's, in its own namespace.
    assert [r["metadata"]["name"] for r in by_kind(cluster_wide, "Role")] == ["m2f-mask2former-operator-leader-election"]

    one_namespace = render(repo_root, "watchNamespace=ml")
    assert by_kind(one_namespace, "ClusterRole") == [] and by_kind(one_namespace, "ClusterRoleBinding") == []
    (operator_role,) = [r for r in by_kind(one_namespace, "Role") if not r["metadata"]["name"].endswith("-election")]
    assert operator_role["metadata"]["namespace"] == "ml"
    verbs = {tuple(rule["resources"]): set(rule["verbs"]) for rule in operator_role["rules"]}
    assert verbs[("services", "configmaps")] == {"get", "create"}
    # update only where OwnerReferencesPermissionEnforcement needs it (children's blockOwnerDeletion).
    updatable = [resources for resources, granted in verbs.items() if "update" in granted]
    assert updatable == [tuple(f"{plural}/finalizers" for plural in PLURALS)]
    assert verbs[updatable[0]] == {"update"} and "*" not in set().union(*verbs.values())

    workers = render(repo_root, "worker.namespaces={ml,vision}")
    accounts = [a for a in by_kind(workers, "ServiceAccount") if a["metadata"]["name"] == "mask2former-worker"]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["ml", "vision"]
    assert all(a["automountServiceAccountToken"] is False for a in accounts)
    assert not [r for r in by_kind(workers, "Role") + by_kind(workers, "RoleBinding")
                if r["metadata"]["namespace"] in ("ml", "vision")]


def test_chart_crds_are_the_generated_ones(repo_root):
    from m2f_operator import crds

    assert crds.stale_files(repo_root / "charts" / "mask2former-operator" / "crds") == []
