"""The docs stay in step with the code: every setting, metric, event, error code and module is
documented, documented defaults are the real ones, and every relative link and anchor resolves.

Docs are what users read first; these checks fail when a variable, metric or module is added
without its line, or when a page is renamed or a heading changes under a link.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service import protocol
from service.config import PRIVATE_NETWORKS, VARIABLES, Settings
from service.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROTOCOL = ROOT / "docs" / "protocol.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

UNITS = {"KiB": 1024, "MiB": 1024 * 1024}


def _section(text: str, heading: str) -> str:
    """The body of the Markdown section ``heading`` (up to the next heading of its level)."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.M)
    assert match, f"no section {heading!r}"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def _rows(section: str) -> list[list[str]]:
    """The cells of every table row of ``section`` (each table's header row left out)."""
    lines = section.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith("|") and set(following) <= set("|-: "):
            continue  # a header
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _config_table(path: Path) -> dict[str, str]:
    """Variable -> its documented default, from the page's Configuration table."""
    documented: dict[str, str] = {}
    for row in _rows(_section(path.read_text(), "Configuration")):
        names = re.findall(r"`([A-Z][A-Z0-9_]+)`", row[0])
        defaults = [d.strip() for d in row[1].split(", ")] if len(row) > 1 else []
        for i, name in enumerate(names):
            documented[name] = defaults[i] if len(defaults) == len(names) else row[1]
    return documented


def _number(text: str) -> float | None:
    """A documented default as a number (``1 MiB``, ``20/s``, ``4096``), else None."""
    match = re.fullmatch(r"`?([0-9][0-9_,]*(?:\.[0-9]+)?)`?\s*(KiB|MiB)?(/s)?", text)
    if match is None:
        return None
    return float(match.group(1).replace(",", "").replace("_", "")) * UNITS.get(
        match.group(2) or "", 1
    )


DEFAULTS = Settings()
WORDS = {"false": False, "off": False, "true": True, "—": ""}


def _matches_default(name: str, documented: str) -> bool:
    attr = VARIABLES[name][0]
    actual = getattr(DEFAULTS, attr)
    number = _number(documented)
    if isinstance(actual, bool):
        return WORDS.get(documented.strip("`")) is actual
    if isinstance(actual, int | float):
        return number is not None and number == actual
    if isinstance(actual, tuple):
        if actual == PRIVATE_NETWORKS:
            return "private" in documented
        if not actual:
            return documented.startswith(("—", "same origin", "from the keys"))
        return documented.strip("`") == ",".join(actual)
    if actual == "":
        # computed at start-up (INSTANCE_ID: the hostname) or unset
        return documented.startswith(("—", "hostname", "the hostname"))
    return documented.strip("`").split(" ")[0].strip("`,") == actual


@pytest.mark.parametrize("page", [README, PROTOCOL], ids=lambda p: p.name)
def test_every_setting_is_in_the_configuration_table_with_its_default(page: Path) -> None:
    documented = _config_table(page)
    missing = sorted(set(VARIABLES) - set(documented))
    assert not missing, f"{page.name}: variables missing from the Configuration table: {missing}"
    unknown = sorted(set(documented) - set(VARIABLES))
    assert not unknown, f"{page.name}: documented but not read by config.py: {unknown}"
    wrong = {
        name: default for name, default in documented.items() if not _matches_default(name, default)
    }
    assert not wrong, f"{page.name}: documented defaults that are not the code's: {wrong}"


def _declared_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    metrics = Metrics(CollectorRegistry())
    with metrics.redis_op("ping"):  # the one labelled metric without pre-created values
        pass
    declared = {}
    for family in metrics.registry.collect():
        if not family.name.startswith("socketio_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        declared[name] = (family.type, frozenset(labels))
    return declared


def test_the_metrics_table_is_every_declared_metric_with_its_type_and_labels() -> None:
    documented = {}
    for row in _rows(_section(PROTOCOL.read_text(), "Metrics")):
        name = row[0].strip("`")
        labels = frozenset(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", row[2])))
        documented[name] = (row[1], labels)
    assert documented == _declared_metrics()


def test_every_event_and_error_code_is_in_the_contract() -> None:
    events = _section(PROTOCOL.read_text(), "Events")
    for event in (*protocol.CLIENT_EVENTS, *protocol.SERVER_EVENTS):
        assert f"`{event}`" in events, event
    codes = {
        row[0].strip("`") for row in _rows(_section(PROTOCOL.read_text(), "Acks and error codes"))
    }
    assert codes == set(protocol.ERROR_CODES)


def test_readiness_reasons_are_the_codes() -> None:
    """``redis_unreachable`` is a /health reason, never a readiness one (a Redis outage is
    shared by every pod: failing readiness would empty the Service)."""
    readiness = _section(PROTOCOL.read_text(), "HTTP endpoints")
    reasons = {row[0].strip("`") for row in _rows(readiness) if not row[0].startswith("`GET")}
    assert reasons == {"draining", "at_max_connections", "at_session_capacity", "pubsub_deaf"}
    for page in PAGES:
        for sentence in re.split(r"(?<=[.:;])\s|\n\n", page.read_text()):
            if "/readyz" in sentence and "redis_unreachable" in sentence:
                assert re.search(r"/health|no longer|gone from", sentence), (
                    f"{page.name}: {sentence}"
                )


def _how_it_is_built() -> str:
    section = _section(README.read_text(), "How it is built")
    return section.split("```")[1]


def test_how_it_is_built_lists_every_module() -> None:
    tree = _how_it_is_built()
    service = ROOT / "service"
    for path in sorted(service.glob("*.py")):
        if path.name != "__init__.py":
            assert re.search(rf"\b{re.escape(path.name)}\b", tree), path.name
    for package in sorted(p for p in service.iterdir() if (p / "__init__.py").exists()):
        assert f"{package.name}/" in tree, package.name
        if package.name in ("bench", "client"):
            continue  # products apart from the server: named as a whole
        for path in sorted(package.glob("*.py")):
            if path.name != "__init__.py":
                assert re.search(rf"\b{re.escape(path.stem)}\b", tree), (
                    f"{package.name}/{path.name}"
                )


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            slug = _slug(match.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_paths_named_in_the_docs_exist(page: Path) -> None:
    """Module and script paths in prose (``service/engine/guard.py``) follow the tree."""
    named = set(
        re.findall(r"\b((?:service|tests|scripts)/[\w/.-]*\w\.(?:py|js|sh))\b", page.read_text())
    )
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.name}: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_are_self_contained(page: Path) -> None:
    text = page.read_text()
    assert "DESIGN" not in text and "§" not in text, "cite the docs, not files outside the repo"
