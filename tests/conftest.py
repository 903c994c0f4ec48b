"""Shared fixtures: a real server per test, real clients; slow suites are marked ``slow``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .helpers import Client, RunningServer, running_server
from .redis_server import RedisServer


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the session; tests that break Redis use ``own_redis``."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis this test may kill, restart or pause."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
