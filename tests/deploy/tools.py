"""The deployment tools the tests drive: helm, kustomize, and the Kubernetes schemas.

``make test`` builds helm and kustomize once (``scripts/testenv/helm.sh``,
``kustomize.sh``, cached under ``~/.cache/aos-testenv``) and exports their paths
as ``AOS_HELM`` and ``AOS_KUSTOMIZE``; the prometheus-operator CRDs come the same
way (``AOS_PROMETHEUS_OPERATOR_CRDS``). Without them the tests skip and say why,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from ..stores import require_server

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "aos"
K8S = ROOT / "k8s"
#: the Kubernetes version the objects are rendered for and validated against
KUBE_VERSION = "1.30"

Obj = dict[str, Any]


def tool(variable: str, script: str) -> str:
    """The path of a tool ``make test`` installed, from its environment variable."""
    path = os.environ.get(variable)
    if not path:
        require_server(
            f"{variable} is not set: run `make test`, or "
            f"export {variable}=$(scripts/testenv/{script} path)"
        )
    assert path is not None
    if not os.access(path, os.X_OK):
        require_server(f"{variable}={path} is not an executable")
    return path


def run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def documents(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def helm_template(*args: str) -> tuple[Obj, ...]:
    """``helm template`` of the chart as release ``aos`` in namespace ``aos``."""
    helm = tool("AOS_HELM", "helm.sh")
    out = run(
        helm,
        "template",
        "aos",
        str(CHART),
        "--namespace",
        "aos",
        "--kube-version",
        KUBE_VERSION,
        *args,
    )
    return tuple(documents(out))


def helm_fails(*args: str) -> str:
    """The error of a ``helm template`` that must fail."""
    helm = tool("AOS_HELM", "helm.sh")
    command = [helm, "template", "aos", str(CHART), "--kube-version", KUBE_VERSION, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0, f"{' '.join(command)} succeeded"
    return done.stderr


@functools.cache
def kustomize_build(directory: Path) -> tuple[Obj, ...]:
    return tuple(documents(run(tool("AOS_KUSTOMIZE", "kustomize.sh"), "build", str(directory))))


# -- validation ---------------------------------------------------------------


class _CRDLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.1 reads a plain ``=`` as the obsolete "value" tag; the CRDs mean the string."""


_CRDLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: node.value)


def _strict(schema: Any) -> Any:
    """A CRD's schema with unknown fields rejected, as ``--strict`` does for built-in kinds
    (except where the CRD keeps unknown fields on purpose)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def crd_schema(api_version: str, kind: str) -> Any:
    """The openAPIV3Schema of a prometheus-operator kind (None: no such kind or version)."""
    directory = Path(tool("AOS_PROMETHEUS_OPERATOR_CRDS", "prometheus-operator-crds.sh"))
    group, _, version = api_version.partition("/")
    path = directory / f"{group}_{kind.lower()}s.yaml"
    if not path.exists():
        return None
    crd = yaml.load(path.read_text(), Loader=_CRDLoader)
    assert crd["spec"]["names"]["kind"] == kind
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    return None


def validate(objects: Iterable[Obj]) -> None:
    """Every object against the Kubernetes schemas (strict: unknown fields are errors),
    prometheus-operator kinds against their CRDs."""
    for obj in objects:
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            schema = crd_schema(obj["apiVersion"], obj["kind"])
            assert schema is not None, f"no CRD for {where}"
            # not jsonschema.validate: the CRDs' patterns are RE2 (Go), some not valid in
            # Python's re, so the schema itself is not checked; ours use none of those fields
            try:
                jsonschema.Draft7Validator(schema).validate(obj)
            except jsonschema.ValidationError as exc:
                raise AssertionError(
                    f"{where}: {exc.message} at {list(exc.absolute_path)}"
                ) from None
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from None


# -- finding objects ------------------------------------------------------------


def of_kind(objects: Iterable[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(pod_spec: Obj) -> Iterator[Obj]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]
