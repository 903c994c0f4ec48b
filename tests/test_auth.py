"""JWT handshake auth: every bad token is refused with ``unauthorized``; good ones connect."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.auth import AuthError, TokenVerifier
from service.config import ConfigError

from .helpers import SECRET, connect, connect_error, make_settings, running_server, token


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**extra) -> dict:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 60, **extra}


def _rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


BAD_TOKENS = {
    "missing": None,
    "empty": "",
    "not a string": 12345,
    "garbage": "not.a.jwt",
    "expired": jwt.encode({**_claims(), "exp": int(time.time()) - 60}, SECRET, "HS256"),
    "tampered": token("alice")[:-4] + "AAAA",
    "wrong secret": jwt.encode(_claims(), "another-secret-0123456789-abcdefghij", "HS256"),
    "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
    "no sub": jwt.encode({"exp": int(time.time()) + 60}, SECRET, "HS256"),
    "no exp": jwt.encode({"sub": "alice"}, SECRET, "HS256"),
    "sub not a string": jwt.encode({**_claims(), "sub": 42}, SECRET, "HS256"),
    "not yet valid": jwt.encode({**_claims(), "nbf": int(time.time()) + 600}, SECRET, "HS256"),
    "HS512 not allowed": jwt.encode(_claims(), SECRET * 2, "HS512"),  # 64+ bytes: no warning
    "oversized": jwt.encode({**_claims(), "pad": "x" * 10_000}, SECRET, "HS256"),
}


@pytest.mark.parametrize("name", BAD_TOKENS)
def test_bad_tokens_are_refused(name):
    with pytest.raises(AuthError):
        TokenVerifier(make_settings()).verify(BAD_TOKENS[name])


async def test_refusals_reach_the_client_as_unauthorized(server):
    for name, bad in BAD_TOKENS.items():
        data = await connect_error(server.url, auth={"token": bad} if bad is not None else None)
        assert data["code"] == "unauthorized", name
        assert isinstance(data["message"], str) and data["message"]


async def test_token_in_query_string_is_ignored(server, clients):
    data = await connect_error(f"{server.url}?token={token('alice')}")
    assert data["code"] == "unauthorized"


async def test_bearer_header_is_accepted(server, clients):
    client = await connect(server.url, None, headers={"Authorization": f"Bearer {token('bob')}"})
    clients.append(client)
    ack = await client.call("join:room", "r")
    assert ack["ok"]
    await client.call("message:send", {"roomId": "r", "message": "hi"})
    assert (await client.wait_for("message:received"))["userId"] == "bob"


async def test_audience_and_issuer_are_checked(clients):
    settings = make_settings(jwt_audience="chat", jwt_issuer="https://auth.example")
    async with running_server(settings) as srv:
        good = jwt.encode(_claims(aud="chat", iss="https://auth.example"), SECRET, "HS256")
        clients.append(await connect(srv.url, None, auth={"token": good}))
        for bad in (
            jwt.encode(_claims(aud="other", iss="https://auth.example"), SECRET, "HS256"),
            jwt.encode(_claims(aud="chat", iss="https://evil.example"), SECRET, "HS256"),
            jwt.encode(_claims(), SECRET, "HS256"),
        ):
            assert (await connect_error(srv.url, auth={"token": bad}))["code"] == "unauthorized"


def test_rs256_and_algorithm_confusion():
    private, public = _rsa_pair()
    verifier = TokenVerifier(
        make_settings(jwt_secret="", jwt_public_key=public, jwt_algorithms=("RS256",))
    )
    assert verifier.verify(jwt.encode(_claims(), private, "RS256")).user_id == "alice"
    # HS256 signed with the public key as the HMAC secret: the classic confusion attack
    forged = _hs256_with_raw_key(public)
    with pytest.raises(AuthError):
        verifier.verify(forged)


def _hs256_with_raw_key(key: str) -> str:
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(_claims())
    signature = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_es256_tokens_verify_with_the_public_key():
    key = ec.generate_private_key(ec.SECP256R1())
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifier = TokenVerifier(make_settings(jwt_secret="", jwt_public_key=public))
    assert verifier.verify(jwt.encode(_claims(sub="eve"), key, "ES256")).user_id == "eve"


def test_keys_must_fit_the_algorithms():
    _, public = _rsa_pair()
    with pytest.raises(ConfigError, match="JWT_ALGORITHMS"):
        make_settings(jwt_secret="", jwt_public_key=public, jwt_algorithms=("HS256",))
    with pytest.raises(ConfigError, match="JWT_ALGORITHMS"):
        make_settings(jwt_algorithms=("RS256",))
