"""NATS credentials for tests: NKey seeds, and operator / account / user JWTs signed here.

Operator mode ("decentralized auth") is what ``.creds`` files are for: the server
trusts an operator, the operator signs accounts, an account signs its users.
The JWTs are built by hand in the format nats-io/jwt v2 defines (a JSON header
``{"typ":"JWT","alg":"ed25519-nkey"}``, claims, an Ed25519 signature by the
issuer's NKey, each base64url without padding), so no ``nsc`` is needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    # JetStream is enabled for an account by giving it storage.
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class Key:
    seed: bytes

    @property
    def public(self) -> str:
        pair = nkeys.from_seed(bytearray(self.seed))
        try:
            return pair.public_key.decode()
        finally:
            pair.wipe()

    def sign(self, data: bytes) -> bytes:
        pair = nkeys.from_seed(bytearray(self.seed))
        try:
            return pair.sign(data)
        finally:
            pair.wipe()


def new_key(prefix: int) -> Key:
    return Key(nkeys.encode_seed(os.urandom(32), prefix))


def operator_key() -> Key:
    return new_key(nkeys.PREFIX_BYTE_OPERATOR)


def account_key() -> Key:
    return new_key(nkeys.PREFIX_BYTE_ACCOUNT)


def user_key() -> Key:
    return new_key(nkeys.PREFIX_BYTE_USER)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: Key, subject: str, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def operator_jwt(operator: Key, name: str = "test-operator") -> str:
    return _jwt(operator, operator.public, name, {"type": "operator"})


def account_jwt(operator: Key, account: Key, name: str, *, jetstream: bool = True) -> str:
    limits = dict(_UNLIMITED_ACCOUNT)
    if not jetstream:  # the system account must not have it
        for field in ("mem_storage", "disk_storage", "streams", "consumer"):
            limits.pop(field)
    nats = {
        "type": "account",
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
    }
    return _jwt(operator, account.public, name, nats)


def user_jwt(account: Key, user: Key, name: str) -> str:
    nats = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    return _jwt(account, user.public, name, nats)


def creds_file(path: Path, jwt: str, user: Key) -> Path:
    """A ``.creds`` file as ``nsc`` writes it: the user's JWT, then its seed."""
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class OperatorSetup:
    """A server configuration in operator mode with one JetStream account."""

    config: str
    account: Key


def operator_mode(directory: Path) -> OperatorSetup:
    """The config text of a server trusting a new operator, with a system account and
    an ``ORDERS`` account (JetStream enabled) preloaded in a memory resolver."""
    operator, system, account = operator_key(), account_key(), account_key()
    operator_path = directory / "operator.jwt"
    operator_path.write_text(operator_jwt(operator))
    config = f"""
operator: "{operator_path}"
system_account: {system.public}
resolver: MEMORY
resolver_preload: {{
  {system.public}: "{account_jwt(operator, system, "SYS", jetstream=False)}"
  {account.public}: "{account_jwt(operator, account, "ORDERS")}"
}}
"""
    return OperatorSetup(config=config, account=account)
