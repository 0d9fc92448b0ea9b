"""The Helm chart (helm/aos): rendered for every ci/<store>-values.yaml, linted,
validated offline against the Kubernetes schemas, and checked object by object."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml

from .checks import aos_container, check_all, deployment, environment, pod_spec
from .tools import CHART, KUBE_VERSION, helm_fails, helm_template, of_kind, one, run, tool, validate

VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
STORES = ["sqlite", "postgresql", "mysql", "cassandra", "mongodb", "dynamodb"]


def store_of(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


def values_of(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(path.read_text())
    return loaded


def test_one_values_file_per_store() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["store"]["properties"]["kind"]["enum"] == STORES
    assert sorted(store_of(path) for path in VALUES) == sorted(STORES)
    for path in VALUES:
        assert values_of(path)["store"] == {**values_of(path)["store"], "kind": store_of(path)}  # type: ignore[dict-item]


@pytest.mark.parametrize("values", [None, *VALUES], ids=lambda v: store_of(v) if v else "defaults")
def test_lint(values: Path | None) -> None:
    helm = tool("AOS_HELM", "helm.sh")
    args = ["-f", str(values)] if values else []
    out = run(helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("values", VALUES, ids=store_of)
def test_renders_valid_objects(values: Path) -> None:
    objects = helm_template("-f", str(values))
    validate(objects)
    settings = check_all(objects, namespace="aos")
    assert settings.peers_dns == ("aos-headless.aos.svc.cluster.local", 8080)
    for obj in objects:
        assert obj["metadata"].get("namespace") == "aos"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "aos"
        assert labels["app.kubernetes.io/instance"] == "aos"
        assert labels["helm.sh/chart"] == "aos-0.1.0"


def test_everything_on_validates() -> None:
    """Every optional object at once (ingress, HPA, NetworkPolicy with egress,
    ServiceMonitor, PrometheusRule, dashboards, init container)."""
    objects = helm_template(
        "--set",
        "store.kind=postgresql,store.url=postgresql://u:p@db:5432/aos",
        "--set",
        "autoscaling.enabled=true,ingress.enabled=true,networkPolicy.enabled=true",
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboards.enabled=true",
        "--set",
        "migrations.initContainer=true,networkPolicy.egress[0].ports[0].port=5432",
    )
    validate(objects)
    check_all(objects, namespace="aos")
    kinds = {obj["kind"] for obj in objects}
    assert kinds == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }
    policy = one(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # the nodes keep reaching each other when egress is restricted
    assert policy["spec"]["egress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_defaults_are_one_sqlite_node_with_a_volume() -> None:
    objects = helm_template()
    validate(objects)
    check_all(objects, namespace="aos")
    workload = deployment(objects)
    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["strategy"] == {"type": "Recreate"}
    claim = one(objects, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in aos_container(objects)["volumeMounts"]}
    secret = one(objects, "Secret")
    url = base64.b64decode(secret["data"]["storage-url"]).decode()
    assert url == f"sqlite:///{mounts['data']}/aos.db" == "sqlite:////data/aos.db"
    # monitoring objects are off by default
    assert not {"ServiceMonitor", "PrometheusRule", "Ingress"} & {o["kind"] for o in objects}


def test_server_stores_roll_and_keep_their_url_in_the_secret() -> None:
    objects = helm_template("-f", str(CHART / "ci" / "postgresql-values.yaml"))
    workload = deployment(objects)
    assert "replicas" not in workload["spec"]  # the HPA owns it
    assert workload["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert not of_kind(objects, "PersistentVolumeClaim")
    secret = one(objects, "Secret")
    assert base64.b64decode(secret["data"]["storage-url"]).decode().startswith("postgresql://")
    assert base64.b64decode(secret["data"]["admin-token"]) == b"ci-admin-token-postgresql"
    # migrations run once per pod before the node starts, and the node then refuses to
    (init,) = pod_spec(objects)["initContainers"]
    assert init["args"] == ["migrate"]
    assert environment(objects, aos_container(objects))["AOS_MIGRATE"] == "false"
    # changing the configuration rolls the pods
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/config", "checksum/secret"} <= annotations.keys()


def test_existing_secret() -> None:
    objects = helm_template("-f", str(CHART / "ci" / "mysql-values.yaml"))
    assert not of_kind(objects, "Secret")
    refs = {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in aos_container(objects)["env"]
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert refs == {
        "AOS_STORAGE_URL": {"name": "aos-mysql", "key": "url"},
        "AOS_ADMIN_TOKEN": {"name": "aos-mysql", "key": "admin"},
        "AOS_CLUSTER_SECRET": {"name": "aos-mysql", "key": "cluster"},
    }


def test_generated_secrets_are_random_and_long() -> None:
    objects = helm_template("--set", "store.kind=postgresql,store.url=postgresql://db/aos")
    secret = one(objects, "Secret")
    admin = base64.b64decode(secret["data"]["admin-token"])
    cluster = base64.b64decode(secret["data"]["cluster-secret"])
    assert len(admin) >= 32 and len(cluster) >= 32 and admin != cluster


def test_prometheus_rule_is_the_plain_rule_file() -> None:
    plain = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    objects = helm_template(
        "--set", "prometheusRule.enabled=true,prometheusRule.additionalRuleLabels.team=jobs"
    )
    rule = one(objects, "PrometheusRule")
    rendered = rule["spec"]["groups"]
    for group, expected in zip(rendered, plain["groups"], strict=True):
        for got, want in zip(group["rules"], expected["rules"], strict=True):
            assert got == {**want, "labels": {**want["labels"], "team": "jobs"}}


def test_dashboard_config_map_for_the_grafana_sidecar() -> None:
    objects = helm_template("--set", "dashboards.enabled=true")
    config = one(objects, "ConfigMap", "aos-dashboards")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = (CHART / "files" / "grafana-dashboard.json").read_text()
    assert json.loads(config["data"]["aos.json"]) == json.loads(dashboard)


def test_service_monitor_scrapes_each_pod_once() -> None:
    objects = helm_template("--set", "serviceMonitor.enabled=true")
    monitor = one(objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    selector = monitor["spec"]["selector"]
    matched = [
        s
        for s in of_kind(objects, "Service")
        if selector["matchLabels"].items() <= s["metadata"]["labels"].items()
        and "app.kubernetes.io/component" not in s["metadata"]["labels"]
    ]
    assert [s["metadata"]["name"] for s in matched] == ["aos"]


def test_image_reference() -> None:
    container = aos_container(helm_template())
    assert container["image"] == "async-output-service:0.1.0"
    container = aos_container(helm_template("--set", "image.registry=r.example.com,image.tag=v9"))
    assert container["image"] == "r.example.com/async-output-service:v9"
    digest = "sha256:" + "a" * 64
    container = aos_container(helm_template("--set", f"image.digest={digest}"))
    assert container["image"] == f"async-output-service@{digest}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=3"], "sqlite serves one node only"),
        (["--set", "autoscaling.enabled=true"], "sqlite serves one node only"),
        (["--set", "store.kind=postgresql"], "store.url (or auth.existingSecret) is required"),
        (["--set", "store.kind=oracle"], "/store/kind"),
        (["--set", "replicas=3"], "additional properties 'replicas' not allowed"),
        (["--set", "config.AOS_PEERS_DNS=x:1"], "invalid propertyName 'AOS_PEERS_DNS'"),
        (["--set", "config.LOG_LEVEL=debug"], "invalid propertyName 'LOG_LEVEL'"),
        (["--set", "ingress.timeoutSeconds=30"], "timeoutSeconds"),
    ],
    ids=[
        "sqlite-replicas",
        "sqlite-hpa",
        "no-url",
        "unknown-store",
        "typo",
        "chart-owned-setting",
        "not-a-setting",
        "short-timeout",
    ],
)
def test_refuses_values_that_cannot_work(args: list[str], message: str) -> None:
    assert message in helm_fails(*args)


def notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` would print it (which needs a cluster, even with
    --dry-run): rendered into a ConfigMap of a copy of the chart."""
    chart = tmp_path / "aos"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | quote }}}\n'
    )
    out = run(
        tool("AOS_HELM", "helm.sh"),
        "template",
        "aos",
        str(chart),
        "--namespace",
        "aos",
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/zz-notes.yaml",
        *args,
    )
    text: str = yaml.safe_load(out)["data"]["notes"]
    return text


def test_notes_tell_how_to_reach_the_service(tmp_path: Path) -> None:
    text = notes(tmp_path / "ingress", "-f", str(CHART / "ci" / "postgresql-values.yaml"))
    assert "export AOS=https://aos.example.com\n" in text
    assert "X-Namespace" in text
    token = (
        "export TOKEN=$(kubectl get secret --namespace aos aos -o jsonpath='{.data.admin-token}'"
    )
    assert token in text
    assert 'curl -s $AOS/api/v1/cluster -H "Authorization: Bearer $TOKEN"' in text
    text = notes(tmp_path / "default")
    assert "kubectl port-forward --namespace aos svc/aos 8080:80" in text
    assert "export AOS=http://127.0.0.1:8080" in text
    text = notes(tmp_path / "existing", "-f", str(CHART / "ci" / "mysql-values.yaml"))
    assert "kubectl get secret --namespace aos aos-mysql -o jsonpath='{.data.admin}'" in text
    text = notes(tmp_path / "nodeport", "-f", str(CHART / "ci" / "mongodb-values.yaml"))
    assert "export AOS=http://$NODE_IP:$NODE_PORT" in text


def test_operations_guide_names_every_values_file() -> None:
    guide = (CHART.parents[1] / "docs" / "operations.md").read_text()
    for path in VALUES:
        assert f"`ci/{path.name}`" in guide
    assert "helm install aos ./helm/aos" in guide and "kubectl apply -k k8s/overlays/" in guide
