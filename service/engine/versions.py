"""The library versions the engine was written for (the exact pins of pyproject.toml).

The fast path reaches into these libraries' internals; on any other version it is not
trusted and the stock path serves instead (see :func:`service.engine.install`).
"""

from __future__ import annotations

from importlib import metadata

WRITTEN_FOR = {
    "python-socketio": "5.18.1",
    "python-engineio": "4.15.1",
    "aiohttp": "3.14.5",
}


def installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def unknown_versions() -> dict[str, str | None]:
    """``{distribution: installed version}`` for every library not at its pinned version."""
    found = {name: installed(name) for name in WRITTEN_FOR}
    return {name: v for name, v in found.items() if v != WRITTEN_FOR[name]}
