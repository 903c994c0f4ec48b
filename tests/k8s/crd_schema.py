"""Validation of custom resources against vendored CRD schemas (tests/k8s/crds).

The API server validates a custom resource against its CRD's ``openAPIV3Schema``; jsonschema
checks the same structural schema offline. CEL rules (``x-kubernetes-validations``) are not
evaluated: tests assert the ones that matter by hand. Unknown fields are made errors, like
``kubectl apply --validate=strict``, instead of being pruned silently.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

CRDS = Path(__file__).resolve().parent / "crds"
GATEWAY_API = CRDS / "gateway-api-v1.6.1"


def _strict(node: Any) -> Any:
    """A copy of a schema in which objects with declared properties reject other keys."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def _schema(crd_file: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    [found] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert found["served"], f"{crd_file.name}: {version} is not served"
    return _strict(found["schema"]["openAPIV3Schema"])


def crd_errors(doc: dict[str, Any], crd_file: Path) -> list[str]:
    """Every schema violation of ``doc`` against the CRD, as ``path: message``."""
    import jsonschema

    version = doc["apiVersion"].rpartition("/")[2]
    schema = copy.deepcopy(_schema(crd_file, version))
    validator = jsonschema.Draft7Validator(schema)
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def httproute_crd(channel: str) -> Path:
    """The pinned HTTPRoute CRD of a Gateway API release channel (standard, experimental)."""
    return GATEWAY_API / f"{channel}-httproutes.yaml"
