"""The plain manifests (k8s/): every overlay built with kustomize, validated offline
against the Kubernetes schemas, and held to the same checks as the Helm chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from .checks import aos_container, check_all, check_non_root, deployment, environment, pod_spec
from .test_chart import STORES
from .tools import K8S, helm_template, kustomize_build, of_kind, one, validate

OVERLAYS = sorted(path for path in (K8S / "overlays").iterdir() if path.is_dir())


def test_one_overlay_per_store() -> None:
    assert sorted(path.name for path in OVERLAYS) == sorted(STORES)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda path: path.name)
def test_overlay_builds_valid_objects(overlay: Path) -> None:
    objects = kustomize_build(overlay)
    validate(objects)
    settings = check_all(objects, namespace=None)
    # the short name resolves through the pod's DNS search path (its own namespace)
    assert settings.peers_dns == ("aos-headless", 8080)
    for obj in objects:
        assert obj["metadata"]["namespace"] == "aos"
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "aos"
    container = aos_container(objects)
    assert container["image"] == "async-output-service:0.1.0"
    if overlay.name == "sqlite":
        workload = deployment(objects)
        assert workload["spec"]["replicas"] == 1
        assert workload["spec"]["strategy"] == {"type": "Recreate"}
        assert not of_kind(objects, "HorizontalPodAutoscaler")
        claim = one(objects, "PersistentVolumeClaim")
        volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert environment(objects, container)["AOS_STORAGE_URL"] == "sqlite:////data/aos.db"
    else:
        assert one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
        assert "secretKeyRef" in environment(objects, container)["AOS_STORAGE_URL"]
    if overlay.name == "dynamodb":
        account = one(objects, "ServiceAccount")
        assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


def test_migrate_job() -> None:
    objects = kustomize_build(K8S / "migrate")
    validate(objects)
    check_non_root(objects)
    job = one(objects, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    base = kustomize_build(K8S / "overlays" / "postgresql")
    assert container["image"] == aos_container(base)["image"]
    # the same configuration and store URL as the nodes
    assert container["envFrom"] == aos_container(base)["envFrom"]
    nodes = {v["name"]: v for v in aos_container(base)["env"]}
    assert container["env"] == [nodes["AOS_STORAGE_URL"]]


def test_same_pod_as_the_chart() -> None:
    """The manifests and the chart run the same container: ports, probes, security,
    resources, and the same AOS_* variables."""
    chart = helm_template("-f", str(K8S.parent / "helm" / "aos" / "ci" / "postgresql-values.yaml"))
    plain = kustomize_build(K8S / "overlays" / "postgresql")
    a, b = aos_container(chart), aos_container(plain)
    for key in (
        "args",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "securityContext",
        "resources",
        "lifecycle",
    ):
        assert a[key] == b[key], key
    chart_env = {k for k in environment(chart, a) if k.startswith("AOS_")}
    plain_env = {k for k in environment(plain, b) if k.startswith("AOS_")}
    # the chart also pins the node weight and may turn migrations over to an init container
    assert plain_env == chart_env - {"AOS_NODE_WEIGHT", "AOS_STORE_POOL_SIZE"}
    assert pod_spec(chart)["securityContext"] == pod_spec(plain)["securityContext"]
