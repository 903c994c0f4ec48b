"""Dockerfile, .dockerignore and skaffold.yaml."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from k8s_bundle import CHART, ROOT, run, tool

pytestmark = pytest.mark.k8s

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean_at_warning_level() -> None:
    hadolint = tool("hadolint")
    result = run([hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path) -> None:
    """Negative control: hadolint really fails on warnings."""
    hadolint = tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nCMD socketio-service\n")
    assert run([hadolint, "--no-color", "--failure-threshold", "warning", str(bad)]).returncode


def test_dockerfile_shape() -> None:
    steps = instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.12\.\d+-slim-bookworm", base), base
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    # Dependencies get their own layer, before the code is copied.
    copies = [i for i, (word, rest) in enumerate(steps) if word == "COPY"]
    dep_install = next(i for i, (w, r) in enumerate(steps) if w == "RUN" and "requirements" in r)
    code_copy = next(i for i in copies if "service" in steps[i][1])
    assert dep_install < code_copy
    assert any("pyproject.toml" in steps[i][1] for i in copies if i < dep_install)
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    users = [rest for word, rest in steps[final:] if word == "USER"]
    assert users == ["10001:10001"], "numeric non-root user in the final stage"
    entry = [rest for word, rest in steps[final:] if word == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ["socketio-service"], "JSON form, runs the README command"
    assert "--dev" not in DOCKERFILE.read_text().replace("# ", "")
    assert ("EXPOSE", "3000") in steps
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines, "deny by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "README.md", "service"} == allowed


def test_skaffold() -> None:
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert config["apiVersion"].startswith("skaffold/v4")
    [artifact] = config["build"]["artifacts"]
    assert artifact["docker"]["dockerfile"] == "Dockerfile"
    [release] = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART.resolve()
    image = artifact["image"].replace("-", "_")
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == f"{{{{.IMAGE_REPO_{image}}}}}"
    assert templates["image.tag"] == f"{{{{.IMAGE_TAG_{image}}}}}"
    [forward] = config["portForward"]
    assert forward["resourceType"] == "service" and forward["port"] == 3000
    # Release "socketio-service" -> Service "socketio-service" (the chart's fullname rule).
    assert forward["resourceName"] == release["name"] == "socketio-service"
    profiles = {p["name"]: p for p in config["profiles"]}
    assert "dev" in profiles
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    for patch in profiles["dev"]["patches"]:
        for dotted in patch["value"]:
            node = chart_values
            for part in dotted.split("."):
                assert part in node, f"skaffold sets unknown chart value {dotted}"
                node = node[part]
