"""Fixtures for the offline checks of the Kubernetes bundle; helpers live in k8s_bundle.py."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_bundle import VALUE_SETS, kustomize, objects_for


@pytest.fixture(params=VALUE_SETS)
def value_set(request: pytest.FixtureRequest) -> str:
    """Each chart value set: the defaults and every ci/*-values.yaml."""
    return request.param


@pytest.fixture
def objects(value_set: str) -> list[dict[str, Any]]:
    """Parsed objects of the chart rendered with one value set."""
    return objects_for(value_set)


@pytest.fixture(params=("dev", "prod"))
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def kustomized(overlay: str) -> list[dict[str, Any]]:
    """Parsed objects of one kustomize overlay."""
    return kustomize(overlay)
