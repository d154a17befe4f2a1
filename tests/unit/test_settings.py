"""Invalid configuration stops a process with one line naming the variable."""

import subprocess
import sys
from datetime import timedelta

import pytest

from orders.settings import ConfigError, load_settings, redact_url

pytestmark = pytest.mark.unit


def test_contract_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATS_URL", "REDIS_URL", "PORT", "PAYMENT_DECLINE_ABOVE"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.port == 8080 and s.inventory_default_stock == 1000
    assert str(s.payment_decline_above) == "10000.00"
    assert s.orders_max_age == timedelta(days=7)
    assert s.orders_duplicate_window == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PAYMENT_DECLINE_ABOVE", "lots"),
        ("PAYMENT_TRANSIENT_FAILURE_RATE", "1.5"),
        ("PORT", "99999"),
        ("REDIS_URL", "http://example"),
        ("NATS_URL", "nats://ok:4222,http://bad"),
        ("ORDERS_DUPLICATE_WINDOW", "0"),
        # Retries of a publish must end while the duplicate window can still drop them.
        ("PUBLISH_RETRY_WINDOW", "120"),
        ("REDIS_WAIT_REPLICAS", "-1"),
        ("REDIS_WAIT_REPLICAS", "abc"),
        ("REDIS_WAIT_REPLICAS", "1.5"),
        ("REDIS_WAIT_TIMEOUT_MS", "0"),
        ("REDIS_WAIT_TIMEOUT_MS", "abc"),
        ("REDIS_WAIT_TIMEOUT_MS", "20000"),
        ("REDIS_WAIT_AOF", "maybe"),
        ("ORDERS_DEV_MODE", "maybe"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^invalid setting {variable}: "):
        load_settings()


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("0", 0), ("2", 2)]
)
def test_redis_wait_replicas_is_auto_or_a_count(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: object
) -> None:
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", value)
    assert load_settings().redis_wait_replicas == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("1", True), ("true", True), ("YES", True)]
)
def test_dev_mode_is_a_boolean_and_blank_is_off(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("ORDERS_DEV_MODE", value)
    assert load_settings().orders_dev_mode is expected


def test_publish_retries_may_last_as_long_as_a_longer_duplicate_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORDERS_DUPLICATE_WINDOW", "600")
    monkeypatch.setenv("PUBLISH_RETRY_WINDOW", "300")
    assert load_settings().publish_retry_window == timedelta(seconds=300)


def test_durations_accept_plain_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACK_WAIT", "45")
    assert load_settings().ack_wait == timedelta(seconds=45)


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@host")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in redact_url("redis://user:hunter2@host:6379/0")
    assert redact_url("nats://a:b@h:1,nats://h2:2") == "nats://a:***@h:1,nats://h2:2"


@pytest.mark.parametrize("command", ["orders-bridge", "orders-worker"])
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PAYMENT_LATENCY_MS", "soon"),
        ("LOG_FORMAT", "xml"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("REDIS_WAIT_REPLICAS", "-1"),
    ],
)
def test_processes_stop_with_one_line(command: str, variable: str, value: str) -> None:
    script = {
        "orders-bridge": "from bridge.main import main; main()",
        "orders-worker": "from orders.worker import main; main()",
    }[command]
    result = subprocess.run(
        [sys.executable, "-c", script],
        # Servers nobody listens on: a setting wrongly accepted must not reach the
        # machine's own NATS or Redis.
        env={
            variable: value,
            "NATS_URL": "nats://127.0.0.1:9",
            "REDIS_URL": "redis://127.0.0.1:9/0",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"{command}: invalid setting {variable}: {lines[0].split(': ', 2)[2]}"]
    assert "Traceback" not in result.stderr
