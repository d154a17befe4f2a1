"""The ``orders`` command line against real NATS and Redis servers.

The servers are shared with the rest of the session, so every test uses its own
SKUs, order ids and dead-letter message ids, and looks only at those.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import nats
import pytest
import redis
import redis.asyncio
from click.testing import CliRunner, Result
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from bridge.app import ensure_order_topology
from bridge.cli import cli
from bridge.cli.publish import synthetic_order
from bridge.codec import decode_order_created, encode_order_created
from bridge.settings import CliSettings
from dev.servers import free_port
from orders import names
from orders.adapters import redis_keys as keys
from orders.adapters.order_state import OrderState
from orders.domain import money
from orders.domain.model import FailureReason, Order, Outcome, OutcomeKind
from orders.domain.validation import validate_order
from orders.settings import load_settings
from relay.ledger import AsyncLedger

pytestmark = pytest.mark.integration

ORDERS_BIN = Path(sys.executable).with_name("orders")
MAX_BYTES = 1_048_576


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def env(nats_url: str, redis_url: str) -> dict[str, str]:
    return {"NATS_URL": nats_url, "REDIS_URL": redis_url}


def orders(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def orders_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, to see exactly what an operator sees."""
    return subprocess.run(
        [str(ORDERS_BIN), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- JetStream helpers -----------------------------------------------------------------


async def _last_seq(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.last_seq
    except NotFoundError:
        return 0
    finally:
        await nc.close()


async def _messages_after(url: str, stream: str, subject: str, seq: int) -> list[RawStreamMsg]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    found = []
    try:
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return found
            found.append(msg)
            seq = msg.seq
    finally:
        await nc.close()


async def _publish_dead_letters(url: str, redis_url: str) -> tuple[int, int, str]:
    """One decodable order and one garbage payload, as the bridge dead-letters them."""
    order_id = _unique("dead")
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await ensure_order_topology(
            js, load_settings(CliSettings, nats_url=url, redis_url=redis_url)
        )
        acks = []
        for payload, reason in (
            (
                encode_order_created(synthetic_order(order_id, random.Random(), above_minor=None)),
                "x",
            ),
            (b"\xff\xfe not protobuf", "undecodable OrderCreated"),
        ):
            original_seq = random.randrange(10**12, 10**13)
            headers = {
                names.HDR_MSG_ID: names.dlq_msg_id(original_seq),
                names.HDR_DLQ_REASON: reason,
                names.HDR_DLQ_SUBJECT: names.SUBJECT_CREATED,
                names.HDR_DLQ_SEQUENCE: str(original_seq),
                names.HDR_DLQ_DELIVERIES: "6",
            }
            acks.append(await js.publish(names.SUBJECT_DLQ_CREATED, payload, headers=headers))
        return acks[0].seq, acks[1].seq, order_id
    finally:
        await nc.close()


async def _delete_dead_letter(url: str, seq: int) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_msg(names.DLQ_STREAM, seq)
    finally:
        await nc.close()


# --- inventory -------------------------------------------------------------------------


def test_inventory_set_then_show_json_round_trips(env: dict[str, str]) -> None:
    set_sku, never_set = _unique("sku"), _unique("sku")

    result = orders(env, "inventory", "set", set_sku, "7")
    assert result.exit_code == 0, result.output

    shown = orders(env, "inventory", "show", set_sku, never_set, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == {set_sku: 7, never_set: 1000}


def test_inventory_set_rejects_a_negative_quantity(env: dict[str, str]) -> None:
    result = orders(env, "inventory", "set", _unique("sku"), "-1")
    assert result.exit_code == 2
    assert "-1" in result.stderr


# --- status ----------------------------------------------------------------------------


def test_status_of_an_unknown_order_is_unknown_and_exits_1(env: dict[str, str]) -> None:
    order_id = _unique("never")

    result = orders(env, "status", order_id, "--json")

    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "order_id": order_id,
        "status": "UNKNOWN",
        "reason": None,
        "charges": 0,
        "refunds": 0,
    }
    assert orders(env, "status", order_id).exit_code == 1


def _record_outcome(redis_url: str, outcome: Outcome, *, charged: bool) -> None:
    """Drive the order's state through the adapters, as the bridge and workers do."""

    async def begin() -> int:
        client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await AsyncLedger(client, keys.LEDGER).begin(outcome.order_id, 60)).epoch
        finally:
            await client.aclose()

    epoch = asyncio.run(begin())
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        state = OrderState(client)
        if charged:
            state.count_charge(outcome.order_id, "pay-1")
        assert state.finalize(epoch, outcome)


def test_status_of_a_completed_order(env: dict[str, str], redis_url: str) -> None:
    order_id = _unique("done")
    outcome = Outcome(
        order_id=order_id,
        kind=OutcomeKind.COMPLETED,
        payment_id="pay-1",
        total_minor=1999,
        currency="USD",
    )
    _record_outcome(redis_url, outcome, charged=True)

    result = orders(env, "status", order_id, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "order_id": order_id,
        "status": "COMPLETED",
        "reason": None,
        "charges": 1,
        "refunds": 0,
    }

    human = orders(env, "status", order_id)
    assert human.exit_code == 0, human.output
    assert "COMPLETED" in human.stdout
    assert "19.99 USD" in human.stdout


def test_status_of_a_failed_order_shows_reason_and_detail(
    env: dict[str, str], redis_url: str
) -> None:
    order_id = _unique("failed")
    outcome = Outcome(
        order_id=order_id,
        kind=OutcomeKind.FAILED,
        reason=FailureReason.OUT_OF_STOCK,
        detail="SKU-X: requested 3, available 1",
    )
    _record_outcome(redis_url, outcome, charged=False)

    result = orders(env, "status", order_id, "--json")
    assert json.loads(result.stdout)["reason"] == "OUT_OF_STOCK"
    assert json.loads(result.stdout)["status"] == "FAILED"

    human = orders(env, "status", order_id)
    assert "OUT_OF_STOCK" in human.stdout
    assert "SKU-X: requested 3, available 1" in human.stdout


# --- publish ---------------------------------------------------------------------------


def test_publish_stores_decodable_orders_under_their_order_id(
    env: dict[str, str], nats_url: str
) -> None:
    prefix = _unique("cli")
    before = asyncio.run(_last_seq(nats_url, names.ORDERS_STREAM))

    result = orders(env, "publish", "--count", "20", "--prefix", prefix, "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["count"] == 20
    assert summary["duplicates"] == 0
    assert summary["first_order_id"] == f"{prefix}-1"
    assert summary["last_order_id"] == f"{prefix}-20"
    stored = [
        msg
        for msg in asyncio.run(
            _messages_after(nats_url, names.ORDERS_STREAM, names.SUBJECT_CREATED, before)
        )
        if msg.headers and msg.headers.get(names.HDR_MSG_ID, "").startswith(f"{prefix}-")
    ]
    assert len(stored) == 20
    for msg in stored:
        order = decode_order_created(msg.data, max_bytes=MAX_BYTES)
        assert msg.headers[names.HDR_MSG_ID] == order.order_id
        assert isinstance(validate_order(order), Order)
    assert {msg.headers[names.HDR_MSG_ID] for msg in stored} == {
        f"{prefix}-{n}" for n in range(1, 21)
    }


def test_publishing_the_same_ids_again_is_dropped_as_duplicates(env: dict[str, str]) -> None:
    prefix = _unique("dup")
    assert orders(env, "publish", "-n", "3", "--prefix", prefix).exit_code == 0

    again = orders(env, "publish", "-n", "3", "--prefix", prefix, "--json")

    assert json.loads(again.stdout)["duplicates"] == 3


def test_synthetic_orders_are_valid_and_declined_ones_are_above_the_limit() -> None:
    rng = random.Random(7)
    limit = Decimal("10000.00")
    for n in range(500):
        declined = n % 5 == 0
        raw = synthetic_order(f"o-{n}", rng, above_minor=1_000_000 if declined else None)
        order = validate_order(decode_order_created(encode_order_created(raw), max_bytes=MAX_BYTES))
        assert isinstance(order, Order), order
        assert 1 <= len(order.lines) <= 3
        assert money.amount_above(order.total_minor, "USD", limit) is declined


# --- dlq -------------------------------------------------------------------------------


def test_dlq_list_and_replay(env: dict[str, str], nats_url: str, redis_url: str) -> None:
    good_seq, garbage_seq, order_id = asyncio.run(_publish_dead_letters(nats_url, redis_url))
    try:
        listed = orders(env, "dlq", "list", "--json")
        assert listed.exit_code == 0, listed.output
        mine = {entry["seq"]: entry for entry in json.loads(listed.stdout)}
        assert mine[good_seq]["order_id"] == order_id
        assert mine[good_seq]["original_subject"] == names.SUBJECT_CREATED
        assert mine[good_seq]["deliveries"] == 6
        assert mine[good_seq]["reason"] == "x"
        assert isinstance(mine[good_seq]["original_sequence"], int)
        assert mine[garbage_seq]["order_id"] is None
        assert mine[garbage_seq]["reason"] == "undecodable OrderCreated"
        assert mine[garbage_seq]["size"] == len(b"\xff\xfe not protobuf")
        assert set(mine[good_seq]) == {
            "seq",
            "original_sequence",
            "original_subject",
            "deliveries",
            "reason",
            "order_id",
            "size",
        }
        human = orders(env, "dlq", "list")
        assert order_id in human.stdout

        before = asyncio.run(_last_seq(nats_url, names.ORDERS_STREAM))
        replayed = orders(env, "dlq", "replay", "--seq", str(good_seq))
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 1" in replayed.stdout

        republished = [
            msg
            for msg in asyncio.run(
                _messages_after(nats_url, names.ORDERS_STREAM, names.SUBJECT_CREATED, before)
            )
            if (msg.headers or {}).get(names.HDR_MSG_ID, "").startswith(f"replay:{good_seq}:")
        ]
        assert len(republished) == 1
        assert decode_order_created(republished[0].data, max_bytes=MAX_BYTES).order_id == order_id

        after = {entry["seq"] for entry in json.loads(orders(env, "dlq", "list", "--json").stdout)}
        assert good_seq not in after
        assert garbage_seq in after

        # A letter already replayed is reported, not replayed twice.
        again = orders(env, "dlq", "replay", "--seq", str(good_seq))
        assert again.exit_code == 1
        assert "replayed 0" in again.stdout
    finally:
        asyncio.run(_delete_dead_letter(nats_url, garbage_seq))


def test_dlq_replay_refuses_both_a_choice_and_all(env: dict[str, str]) -> None:
    result = orders(env, "dlq", "replay", "--seq", "1", "--all")
    assert result.exit_code == 2
    assert "choose --seq N or --all, not both" in result.stderr


# --- errors an operator meets ------------------------------------------------------------


def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str]) -> None:
    done = orders_process({**env, "PAYMENT_DECLINE_ABOVE": "abc"}, "status", "x")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "PAYMENT_DECLINE_ABOVE" in done.stderr
    assert "abc" not in done.stderr


def test_unreachable_redis_is_one_line_without_the_password(env: dict[str, str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    done = orders_process({**env, "REDIS_URL": url}, "inventory", "show", "SKU-1")

    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot reach Redis at" in done.stderr
    assert "hunter2" not in done.stderr


def test_unreachable_nats_is_one_line_and_fails_fast(env: dict[str, str]) -> None:
    done = orders_process({**env, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}, "dlq", "list")

    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot reach NATS at" in done.stderr
