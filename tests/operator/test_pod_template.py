"""spec.podTemplate: any pod field from the template, the operator's own fields laid over it (table tests)."""

from __future__ import annotations

import kubernetes_validate
import pytest
from reconcile_factories import resource

from m2f_operator.builders import build_gang, build_stages, meta
from m2f_operator.validation import spec_error

TEMPLATE = {
    "metadata": {"labels": {"team": "vision"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "runtimeClassName": "nvidia",
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"team": "vision"}}}],
        "resourceClaims": [{"name": "rdma", "source": {"resourceClaimTemplateName": "rdma-nic"}}],  # 1.30 shape
        "initContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["sh", "-c", "true"]},
                           {"name": "log-shipper", "image": "fluent-bit:3", "restartPolicy": "Always"}],
        "containers": [
            {"name": "m2f", "envFrom": [{"secretRef": {"name": "wandb"}}],
             "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
             "securityContext": {"capabilities": {"add": ["IPC_LOCK"], "drop": ["ALL"]}},
             "resources": {"limits": {"rdma/ib": "1"}, "claims": [{"name": "rdma"}]},
             "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
             "readinessProbe": {"tcpSocket": {"port": 29500}}},
            {"name": "exporter", "image": "dcgm-exporter:4", "ports": [{"containerPort": 9400}]},
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "serviceAccountName": "from-template",
    },
}


def _pods(**spec) -> list[dict]:
    body = resource(nodes=2, gpusPerNode=8, **spec)
    (stage,) = build_stages(body)
    return build_gang(body, stage, attempt=1)


def test_the_template_reaches_the_pod_under_the_operators_fields():
    pod = _pods(podTemplate=TEMPLATE, podLabels={"run": "a"}, resources={"limits": {"memory": "64Gi"}})[1]
    kubernetes_validate.validate(pod, "1.30", strict=True)
    spec, (main, sidecar) = pod["spec"], pod["spec"]["containers"]
    for key in ("runtimeClassName", "hostNetwork", "dnsPolicy", "topologySpreadConstraints", "resourceClaims",
                "initContainers"):
        assert spec[key] == TEMPLATE["spec"][key], key
    # The operator's own fields win: names for the rendezvous, restart policy, the command and its contract.
    assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == ("run-worker-1", "run", "Never")
    assert main["name"] == "m2f" and main["command"][:2] == ["m2f", "train"]
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["NODE_RANK"] == "1" and env["NCCL_DEBUG"] == "INFO"
    assert main["envFrom"] == [{"secretRef": {"name": "wandb"}}] and "readinessProbe" in main
    assert main["securityContext"]["capabilities"] == {"add": ["IPC_LOCK"], "drop": ["ALL"]}
    assert main["resources"]["limits"] == {"rdma/ib": "1", "memory": "64Gi", meta.GPU_RESOURCE: "8"}
    assert main["resources"]["claims"] == [{"name": "rdma"}]
    assert [m["mountPath"] for m in main["volumeMounts"]] == ["/etc/m2f", "/dev/shm", "/cache"]
    assert [v["name"] for v in spec["volumes"]] == ["experiment", "dshm", "cache"]
    assert sidecar["name"] == "exporter"
    assert spec["serviceAccountName"] == "from-template"
    labels = pod["metadata"]["labels"]
    assert labels["team"] == "vision" and labels["run"] == "a" and labels[meta.LABEL_REPLICA_INDEX] == "1"
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_dedicated_spec_fields_win_over_the_template():
    template = {"spec": {"nodeSelector": {"pool": "a"}, "serviceAccountName": "t", "terminationGracePeriodSeconds": 5,
                         "securityContext": {"runAsUser": 2000, "fsGroup": 3000}}}
    pod = _pods(podTemplate=template, nodeSelector={"pool": "b"}, serviceAccountName="s",
                securityContext={"runAsUser": 4000})[0]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "b"} and spec["serviceAccountName"] == "s"
    assert spec["terminationGracePeriodSeconds"] == 5
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"]) == (4000, 3000)
    assert spec["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("pod", "spec.podTemplate: must be a PodTemplateSpec"),
        ({"spec": {"restartPolicy": "OnFailure"}}, "spec.podTemplate.spec.restartPolicy: set by the operator"),
        ({"spec": {"hostname": "x"}}, "spec.podTemplate.spec.hostname: set by the operator"),
        ({"spec": {"containers": [{"name": "m2f", "command": ["python"]}]}},
         "spec.podTemplate.spec.containers[0].command: set by the operator"),
        ({"spec": {"containers": [{"name": "side", "image": "a"}, {"name": "m2f", "image": "b"}]}},
         "spec.podTemplate.spec.containers[1].image: set by the operator"),
        ({"spec": {"containers": [{"name": "m2f", "env": [{"name": "WORLD_SIZE", "value": "1"}]}]}},
         "spec.podTemplate.spec.containers[0].env: 'WORLD_SIZE' is part of the pod environment contract"),
        ({"spec": {"containers": [{"name": "m2f", "volumeMounts": [{"name": "x", "mountPath": "/dev/shm"}]}]}},
         "spec.podTemplate.spec.containers[0].volumeMounts[0].mountPath: '/dev/shm' is reserved"),
        ({"spec": {"containers": [{"name": "a", "image": "a"}, {"name": "a", "image": "b"}]}},
         "spec.podTemplate.spec.containers: two containers are named 'a'"),
        ({"spec": {"containers": [{"image": "a"}]}}, "spec.podTemplate.spec.containers: must be a list of containers"),
        ({"spec": {"volumes": [{"name": "dshm", "emptyDir": {}}]}}, "spec.podTemplate.spec.volumes[0].name: 'dshm' is reserved"),
        ({"metadata": {"labels": {meta.LABEL_ATTEMPT: "9"}}}, "spec.podTemplate.metadata.labels: 'mask2former.io/attempt' is reserved"),
        # Wrong types in what the operator merges: named, never an exception inside the reconcile.
        ({"metadata": {"labels": ["a"]}}, "spec.podTemplate.metadata.labels: must map strings to strings"),
        ({"spec": {"securityContext": "x"}}, "spec.podTemplate.spec.securityContext: must be a dict"),
        ({"spec": {"terminationGracePeriodSeconds": "60"}}, "spec.podTemplate.spec.terminationGracePeriodSeconds: must be an int"),
        ({"spec": {"containers": [{"name": "m2f", "env": ["A=1"]}]}}, "spec.podTemplate.spec.containers[0].env: each entry"),
        ({"spec": {"containers": [{"name": "m2f", "ports": [9000]}]}}, "spec.podTemplate.spec.containers[0].ports: each entry"),
        ({"spec": {"containers": [{"name": "m2f", "resources": "big"}]}}, "spec.podTemplate.spec.containers[0].resources: must be a dict"),
        ({"spec": {"containers": [{"name": "m2f", "resources": {"limits": ["x"]}}]}},
         "spec.podTemplate.spec.containers[0].resources.limits: must be a dict"),
        ({"spec": {"volumes": ["cache"]}}, "spec.podTemplate.spec.volumes: each volume must be an object"),
    ],
)
def test_fields_the_operator_owns_are_an_invalid_spec(template, error):
    assert (spec_error(resource(nodes=2, podTemplate=template)) or "").startswith(error)


def test_a_template_volume_and_a_spec_volume_may_not_share_a_name():
    body = resource(podTemplate={"spec": {"volumes": [{"name": "data", "emptyDir": {}}]}},
                    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}])
    assert spec_error(body).startswith("spec.volumes[0].name: 'data' is used by another volume")


@pytest.mark.parametrize("template", [
    {"metadata": {"labels": ["a"]}}, {"spec": {"securityContext": "x"}}, {"spec": {"terminationGracePeriodSeconds": "x"}},
    {"spec": {"containers": [{"name": "m2f", "env": ["A"], "ports": [1]}]}}, {"spec": {"volumes": ["v"]}},
])
def test_a_template_the_builders_cannot_read_is_an_invalid_spec_not_a_crash(template):
    from reconcile_factories import NOW

    from m2f_operator.reconcile import Observed, reconcile

    plan = reconcile(Observed(resource(nodes=2, podTemplate=template), [], NOW))
    assert plan.phase == "InvalidSpec" and plan.creates == []
