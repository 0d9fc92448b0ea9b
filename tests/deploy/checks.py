"""What every rendering of the service (each Helm values file, each kustomize
overlay) must get right, whatever the store."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from service.settings import Settings

from .tools import Obj, containers, of_kind, one

#: the settings an install must never leave to the image's or the service's defaults
FROM_DEPLOYMENT = {"AOS_HOST", "AOS_PORT", "AOS_NODE_ID", "AOS_NODE_URL", "AOS_PEERS_DNS"}
FROM_SECRET = {"AOS_STORAGE_URL", "AOS_ADMIN_TOKEN", "AOS_CLUSTER_SECRET"}


def deployment(objects: Sequence[Obj]) -> Obj:
    return one(objects, "Deployment")


def pod_spec(objects: Sequence[Obj]) -> Obj:
    spec: Obj = deployment(objects)["spec"]["template"]["spec"]
    return spec


def aos_container(objects: Sequence[Obj]) -> Obj:
    (container,) = (c for c in pod_spec(objects)["containers"] if c["name"] == "aos")
    return container


def environment(objects: Sequence[Obj], container: Obj) -> dict[str, Any]:
    """The container's variables: ConfigMap values, literal values, and the
    ``secretKeyRef``/``fieldRef`` of the others."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config = one(objects, "ConfigMap", source["configMapRef"]["name"])
            env.update(config["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def check_probes(objects: Sequence[Obj]) -> None:
    container = aos_container(objects)
    (port,) = container["ports"]
    assert port["name"] == "http"
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": "http"}
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # a slow store at start must not get the pod killed before it could be ready
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    # a pod leaves the endpoints before it stops: a preStop pause, then SIGTERM
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod_spec(objects)["terminationGracePeriodSeconds"] >= 15


def check_non_root(objects: Sequence[Obj]) -> None:
    for kind in ("Deployment", "Job"):
        for workload in of_kind(objects, kind):
            spec = workload["spec"]["template"]["spec"]
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
            assert spec["automountServiceAccountToken"] is False
            for container in containers(spec):
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False
                assert security["readOnlyRootFilesystem"] is True
                assert security["capabilities"] == {"drop": ["ALL"]}
                assert security.get("runAsUser", pod["runAsUser"]) > 0
                # the only writable places: /tmp and the data volume
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts
            images = {c["image"] for c in containers(spec)}
            assert len(images) == 1


def check_membership(objects: Sequence[Obj], namespace: str | None) -> None:
    """The headless Service is exactly what ``AOS_PEERS_DNS`` resolves: the pods
    of this Deployment, on the port they serve, ready ones only."""
    workload = deployment(objects)
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    container = aos_container(objects)
    env = environment(objects, container)
    host, _, port = env["AOS_PEERS_DNS"].rpartition(":")
    name = host.split(".")[0]
    headless = one(objects, "Service", name)
    spec = headless["spec"]
    assert spec["clusterIP"] == "None"
    assert spec.get("publishNotReadyAddresses", False) is False
    assert spec["selector"].items() <= pod_labels.items()
    assert spec["selector"] == workload["spec"]["selector"]["matchLabels"]
    (service_port,) = spec["ports"]
    assert int(port) == service_port["port"] == container["ports"][0]["containerPort"]
    assert service_port["targetPort"] in ("http", container["ports"][0]["containerPort"])
    if namespace is not None:
        assert host == f"{name}.{namespace}.svc.cluster.local"
    assert env["AOS_PORT"] == str(container["ports"][0]["containerPort"])
    assert env["AOS_HOST"] == "0.0.0.0"
    # each node names itself after its pod and is reached at its pod's address
    by_name = {var["name"]: var for var in container["env"]}
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert by_name["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["AOS_NODE_ID"] == "$(POD_NAME)"
    assert env["AOS_NODE_URL"] == f"http://$(POD_IP):{port}"
    # env vars can only refer to ones defined before them
    order = [var["name"] for var in container["env"]]
    assert order.index("POD_NAME") < order.index("AOS_NODE_ID")
    assert order.index("POD_IP") < order.index("AOS_NODE_URL")
    # the Service clients use selects the same pods
    services = [s for s in of_kind(objects, "Service") if s["spec"].get("clusterIP") != "None"]
    assert services and all(s["spec"]["selector"] == spec["selector"] for s in services)


def check_settings(objects: Sequence[Obj]) -> Settings:
    """The node's environment is complete and valid: every ``AOS_*`` variable is a
    setting of the service, and they parse (a bad value would stop the pod at start)."""
    container = aos_container(objects)
    env = environment(objects, container)
    known = {f.metadata["env"] for f in Settings.__dataclass_fields__.values()}
    aos_vars = {name for name in env if name.startswith("AOS_")}
    assert aos_vars <= known, f"not settings of the service: {aos_vars - known}"
    assert aos_vars >= FROM_DEPLOYMENT
    secrets = set()
    concrete = {}
    for name, value in env.items():
        if isinstance(value, dict):
            if "secretKeyRef" in value:
                secrets.add(name)
            continue
        concrete[name] = re.sub(
            r"\$\((POD_NAME|POD_IP)\)",
            lambda m: {"POD_NAME": "aos-0", "POD_IP": "10.1.2.3"}[m.group(1)],
            value,
        )
    # DSNs and keys come from a Secret (a SQLite path need not)
    assert {"AOS_ADMIN_TOKEN", "AOS_CLUSTER_SECRET"} <= secrets
    assert "AOS_STORAGE_URL" in secrets or concrete["AOS_STORAGE_URL"].startswith("sqlite:")
    settings = Settings.from_env(
        {**concrete, **dict.fromkeys(secrets - {"AOS_STORAGE_URL"}, "from-a-secret")}
    )
    assert settings.node_id == "aos-0" and settings.advertised_url.startswith("http://10.1.2.3:")
    assert settings.peers_dns is not None
    return settings


def check_ingress(objects: Sequence[Obj]) -> None:
    """The ingress hashes by namespace and lets SSE through unbuffered."""
    for ingress in of_kind(objects, "Ingress"):
        annotations = ingress["metadata"]["annotations"]
        hash_by = annotations["nginx.ingress.kubernetes.io/upstream-hash-by"]
        # the X-Namespace header first, the bearer key (which carries its namespace) next
        assert hash_by.startswith("$http_x_namespace"), hash_by
        assert "$http_authorization" in hash_by
        assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
        assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
        # above the 60 s long-poll, the 15 s heartbeat and the 90 s forward timeout
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) > 90
        assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
        names = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in names


def check_selectors(objects: Sequence[Obj]) -> None:
    """PDB, HPA and NetworkPolicy point at the Deployment's pods."""
    workload = deployment(objects)
    selector = workload["spec"]["selector"]["matchLabels"]
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"] == selector
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", workload["metadata"]["name"])
        assert "replicas" not in workload["spec"] or hpa["spec"]["minReplicas"] >= 1
    for policy in of_kind(objects, "NetworkPolicy"):
        assert policy["spec"]["podSelector"]["matchLabels"] == selector
        peers = [
            source["podSelector"]["matchLabels"]
            for rule in policy["spec"]["ingress"]
            for source in rule.get("from", [])
            if "podSelector" in source and "namespaceSelector" not in source
        ]
        assert selector in peers, "the nodes must reach each other (pings, forwarding)"


def check_all(objects: Sequence[Obj], namespace: str | None) -> Settings:
    check_probes(objects)
    check_non_root(objects)
    check_membership(objects, namespace)
    check_ingress(objects)
    check_selectors(objects)
    return check_settings(objects)
