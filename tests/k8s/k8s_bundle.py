"""Helpers for the offline checks of the Kubernetes bundle (no cluster, no Docker).

Helm's own engine renders the chart (helm-python-sdk), kubernetes-validate checks every object
strictly, kubectl builds the kustomize overlays. A missing tool skips with a reason on a
laptop and fails when ``CI`` is set.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "socketio-service"
K8S = ROOT / "k8s"
RELEASE = "chat"
NAMESPACE = "realtime"
# Every object must validate against the oldest Kubernetes we support and the newest schema
# kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", "latest")
# Custom resources have no schema in kubernetes-validate: only these groups may be skipped
# (removed core APIs raise the same SchemaNotFoundError and must fail).
CRD_GROUPS = frozenset({"monitoring.coreos.com", "gateway.networking.k8s.io", "keda.sh"})
VALUE_SETS = (
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")),
)


def missing(reason: str) -> None:
    """Skip on a developer machine, fail in CI: CI must run every check."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


def tool(name: str) -> str:
    """Path of a command-line tool, from the test interpreter's venv first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if not found:
        missing(f"{name} is not installed")
    return str(found)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def helm_python() -> Any:
    try:
        import helm_python as module
    except ImportError:
        missing("helm-python-sdk is not installed (pip install helm-python-sdk)")
    module.disable_logging()
    return module


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as module
    except ImportError:
        missing("kubernetes-validate is not installed")
    return module


def values_for(value_set: str) -> dict[str, Any]:
    if value_set == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text()) or {}


@functools.cache
def _chart() -> Any:
    return helm_python().Chart.load(CHART)


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, through Helm's engine."""
    return _chart().render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def parse(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of a render (render() does not parse: a YAML error must fail here)."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: not a mapping"
            docs.append(doc)
    return docs


@functools.cache
def _objects(value_set: str) -> tuple[dict[str, Any], ...]:
    return tuple(parse(render(values_for(value_set))))


def objects_for(value_set: str) -> list[dict[str, Any]]:
    """Parsed objects of the chart rendered with a value set (a fresh deep copy)."""
    return yaml.safe_load(yaml.safe_dump(list(_objects(value_set))))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload and bare pod."""
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def validate_strict(doc: dict[str, Any]) -> list[str]:
    """Validate against every KUBE_VERSIONS schema; returns the versions checked.

    Objects of an allow-listed CRD group return [] (no schema to check against).
    """
    kv = kubernetes_validate()
    group = doc["apiVersion"].rpartition("/")[0]
    checked = []
    for version in KUBE_VERSIONS:
        target = kv.latest_version() if version == "latest" else version
        try:
            kv.validate(doc, target, strict=True)
        except kv.SchemaNotFoundError:
            if group in CRD_GROUPS:
                check_vendored_crd(doc)
                return []
            raise
        except kv.ValidationError as exc:
            raise AssertionError(
                f"{doc['kind']}/{doc['metadata'].get('name')} invalid for Kubernetes {target}: "
                f"{exc.message} at {'.'.join(map(str, exc.path))}"
            ) from None
        checked.append(target)
    return checked


def check_vendored_crd(doc: dict[str, Any]) -> None:
    """Custom resources with a vendored CRD (tests/k8s/crds) must validate against it."""
    from crd_schema import crd_errors, httproute_crd

    if doc["apiVersion"].startswith("gateway.networking.k8s.io/") and doc["kind"] == "HTTPRoute":
        errors = crd_errors(doc, httproute_crd("experimental"))
        assert not errors, f"HTTPRoute/{doc['metadata'].get('name')}: {errors}"


@functools.cache
def _kustomized(overlay: str) -> tuple[dict[str, Any], ...]:
    result = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def kustomize(overlay: str) -> list[dict[str, Any]]:
    """Objects of `kubectl kustomize k8s/overlays/<overlay>` (a fresh deep copy)."""
    return yaml.safe_load(yaml.safe_dump(list(_kustomized(overlay))))


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(matches) == 1, f"container {name} not found"
    return matches[0]
