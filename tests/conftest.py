"""Shared fixtures: a real server per test, real clients; slow suites are marked ``slow``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .helpers import Client, RunningServer, running_server


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as running:
        yield running


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """Collects clients a test opens, and closes them afterwards."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()
