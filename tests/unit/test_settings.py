"""Invalid configuration stops a process with one line naming the variable."""

import subprocess
import sys
from datetime import timedelta

import pytest

from bridge.settings import ALL_KINDS, BridgeSettings, CliSettings
from orders.settings import (
    ConfigError,
    ProcessSettings,
    WebSettings,
    WorkerSettings,
    load_settings,
    redact_url,
)

pytestmark = pytest.mark.unit


def test_contract_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATS_URL", "REDIS_URL", "PORT", "PAYMENT_DECLINE_ABOVE"):
        monkeypatch.delenv(name, raising=False)
    bridge, worker = load_settings(BridgeSettings), load_settings(WorkerSettings)
    assert bridge.nats_url == "nats://127.0.0.1:4222"
    assert bridge.redis_url == worker.redis_url == "redis://127.0.0.1:6379/0"
    assert bridge.port == load_settings(WebSettings).port == 8080
    assert worker.inventory_default_stock == 1000
    assert str(worker.payment_decline_above) == "10000.00"
    assert bridge.orders_max_age == timedelta(days=7)
    assert bridge.orders_duplicate_window == timedelta(minutes=2)


# What each kind of process reads, and nothing else (a worker has no NATS, the bridge
# no simulated gateway, Flower only its port and access besides the logs).
EXPECTED_READS = {
    WorkerSettings: {"redis_url", "payment_decline_above", "task_max_worker_losses"},
    WebSettings: {"port", "flower_basic_auth", "orders_dev_mode"},
    BridgeSettings: {"nats_url", "redis_url", "bridge_fetch_batch", "redis_wait_replicas"},
    CliSettings: {"nats_url", "redis_url", "inventory_default_stock", "max_message_bytes"},
}
NOT_READ = {
    WorkerSettings: {"nats_url", "port", "bridge_fetch_batch", "flower_basic_auth"},
    WebSettings: {"nats_url", "redis_wait_replicas", "payment_decline_above"},
    BridgeSettings: {"payment_decline_above", "inventory_default_stock", "flower_basic_auth"},
    CliSettings: {"workflow_stall_timeout", "redis_wait_replicas", "flower_basic_auth"},
}


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.__name__)
def test_each_process_kind_has_only_what_it_reads(kind: type[ProcessSettings]) -> None:
    fields = set(kind.model_fields)
    assert EXPECTED_READS[kind] <= fields
    assert not NOT_READ[kind] & fields


def test_a_process_ignores_the_variables_of_other_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_FETCH_BATCH", "not a number")
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "")
    assert load_settings(WorkerSettings).task_max_worker_losses == 3
    with pytest.raises(ConfigError, match=r"^invalid setting BRIDGE_FETCH_BATCH: "):
        load_settings(BridgeSettings)


def test_an_override_must_be_a_setting_of_the_kind() -> None:
    # extra="ignore" serves the environment; a caller's misspelt override must not vanish.
    with pytest.raises(TypeError, match="WorkerSettings has no setting nats_url"):
        load_settings(WorkerSettings, nats_url="nats://h:1")


@pytest.mark.parametrize(
    ("kind", "variable", "value"),
    [
        (WorkerSettings, "PAYMENT_DECLINE_ABOVE", "lots"),
        (WorkerSettings, "PAYMENT_TRANSIENT_FAILURE_RATE", "1.5"),
        (BridgeSettings, "PORT", "99999"),
        (WebSettings, "PORT", "99999"),
        (WorkerSettings, "REDIS_URL", "http://example"),
        (BridgeSettings, "NATS_URL", "nats://ok:4222,http://bad"),
        (CliSettings, "NATS_URL", "nats://ok:4222,http://bad"),
        (BridgeSettings, "ORDERS_DUPLICATE_WINDOW", "0"),
        (CliSettings, "ORDERS_DUPLICATE_WINDOW", "0"),
        # Retries of a publish must end while the duplicate window can still drop them.
        (BridgeSettings, "PUBLISH_RETRY_WINDOW", "120"),
        (BridgeSettings, "REDIS_WAIT_REPLICAS", "-1"),
        (BridgeSettings, "REDIS_WAIT_REPLICAS", "abc"),
        (BridgeSettings, "REDIS_WAIT_REPLICAS", "1.5"),
        (BridgeSettings, "REDIS_WAIT_TIMEOUT_MS", "0"),
        (BridgeSettings, "REDIS_WAIT_TIMEOUT_MS", "abc"),
        (BridgeSettings, "REDIS_WAIT_TIMEOUT_MS", "20000"),
        (BridgeSettings, "REDIS_WAIT_AOF", "maybe"),
        (WebSettings, "ORDERS_DEV_MODE", "maybe"),
        (WorkerSettings, "TASK_MAX_RETRIES", "many"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, kind: type[ProcessSettings], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^invalid setting {variable}: "):
        load_settings(kind)


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("0", 0), ("2", 2)]
)
def test_redis_wait_replicas_is_auto_or_a_count(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: object
) -> None:
    monkeypatch.setenv("REDIS_WAIT_REPLICAS", value)
    assert load_settings(BridgeSettings).redis_wait_replicas == expected


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("1", True), ("true", True), ("YES", True)]
)
def test_dev_mode_is_a_boolean_and_blank_is_off(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bool
) -> None:
    monkeypatch.setenv("ORDERS_DEV_MODE", value)
    assert load_settings(WebSettings).orders_dev_mode is expected


def test_publish_retries_may_last_as_long_as_a_longer_duplicate_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORDERS_DUPLICATE_WINDOW", "600")
    monkeypatch.setenv("PUBLISH_RETRY_WINDOW", "300")
    assert load_settings(BridgeSettings).publish_retry_window == timedelta(seconds=300)


def test_durations_accept_plain_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACK_WAIT", "45")
    assert load_settings(CliSettings).ack_wait == timedelta(seconds=45)


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@host")
    with pytest.raises(ConfigError) as info:
        load_settings(WorkerSettings)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in redact_url("redis://user:hunter2@host:6379/0")
    assert redact_url("nats://a:b@h:1,nats://h2:2") == "nats://a:***@h:1,nats://h2:2"


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        (command, variable, value)
        for command in ("orders-bridge", "orders-worker")
        for variable, value in (
            ("LOG_FORMAT", "xml"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("TASK_MAX_RETRIES", "many"),
            ("MAX_ITEMS", "0"),
        )
    ]
    + [
        ("orders-bridge", "REDIS_WAIT_REPLICAS", "-1"),
        ("orders-bridge", "MAX_MESSAGE_BYTES", "big"),
        ("orders-worker", "PAYMENT_LATENCY_MS", "soon"),
        ("orders-worker", "TASK_MAX_WORKER_LOSSES", "0"),
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
