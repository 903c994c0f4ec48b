"""Fixtures of the end-to-end suite: one topology for the package (torn down when its last
test is done, so it does not idle behind the other suites), healed before every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..helpers import require_tool
from ..jsclient import node_binary
from .topology import Topology


@pytest.fixture(scope="package")
def topology_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    require_tool("haproxy", "apt-get install -y --no-install-recommends haproxy")
    require_tool("prometheus", "apt-get install -y --no-install-recommends prometheus")
    topology = Topology.start(tmp_path_factory.mktemp("topology"))
    yield topology
    topology.stop()


@pytest.fixture
def topology(topology_session: Topology) -> Topology:
    """The running topology, repaired first if an earlier test left it broken."""
    topology_session.heal()
    return topology_session


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with the official socket.io-client installed in tests/js."""
    return node_binary()
