"""``asyncapi.yaml`` is a valid AsyncAPI 3.0 document and says what the code does.

Valid: against the official AsyncAPI 3.0.0 JSON Schema, vendored in
``tests/data/asyncapi/`` (its README names the npm package, version and file).

Says what the code does: every subject, stream, consumer, header and
``Nats-Msg-Id`` format in it is the one ``orders/names.py`` defines, the headers
the relay really writes on a dead letter are valid by the document's schema, the
streams and the consumer are as ``relay.topology`` creates them at the default
settings, and each payload names the protobuf message the codec uses. So the
document cannot drift from the code, nor the code from the document.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.app import NAMES, topology_limits
from bridge.pb.orders.v1 import orders_pb2
from bridge.settings import BridgeSettings, Topology
from orders import names
from orders.domain.model import FailureReason, OutcomeKind
from relay.dead_letter import dlq_headers
from relay.topology import dlq_stream, durable_consumer, input_stream

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "asyncapi.yaml"
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
PROTOBUF = "application/vnd.google.protobuf;version=3"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# The message each subject carries, by the codec's protobuf types.
PAYLOADS = {
    names.SUBJECT_CREATED: orders_pb2.OrderCreated,
    names.SUBJECT_COMPLETED: orders_pb2.OrderCompleted,
    names.SUBJECT_FAILED: orders_pb2.OrderFailed,
    # A dead letter is the input, unchanged.
    names.SUBJECT_DLQ_CREATED: orders_pb2.OrderCreated,
}
ACTIONS = {
    names.SUBJECT_CREATED: "receive",
    names.SUBJECT_COMPLETED: "send",
    names.SUBJECT_FAILED: "send",
    names.SUBJECT_DLQ_CREATED: "send",
}
# Values for the placeholders of the document's Nats-Msg-Id formats (x-formats).
SAMPLES: dict[str, Any] = {
    "order_id": "ord-1",
    "dlq_sequence": 7,
    "now_ms": 1_700_000_000_000,
    "stream_sequence": 42,
}
# The Nats-Msg-Id values the code writes, one per format, in the document's order.
MSG_IDS = {
    # Producers (and `orders publish`) use the order id itself.
    names.SUBJECT_CREATED: [
        SAMPLES["order_id"],
        names.replay_msg_id(SAMPLES["dlq_sequence"], SAMPLES["now_ms"]),
    ],
    names.SUBJECT_COMPLETED: [names.outcome_msg_id(SAMPLES["order_id"], OutcomeKind.COMPLETED)],
    names.SUBJECT_FAILED: [names.outcome_msg_id(SAMPLES["order_id"], OutcomeKind.FAILED)],
    names.SUBJECT_DLQ_CREATED: [names.dlq_msg_id(SAMPLES["stream_sequence"])],
}
DLQ_HEADERS = {
    names.HDR_DLQ_REASON,
    names.HDR_DLQ_SUBJECT,
    names.HDR_DLQ_SEQUENCE,
    names.HDR_DLQ_DELIVERIES,
}
STREAM_SUBJECTS = {
    names.ORDERS_STREAM: names.ORDERS_SUBJECTS,
    names.DLQ_STREAM: names.DLQ_SUBJECTS,
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text())
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(doc)]


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """``node`` with the document's local ``$ref``s replaced by what they point at."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = doc
            for part in ref[2:].split("/"):
                target = target[part]
            return resolve(doc, target)
        return {key: resolve(doc, value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(doc, item) for item in node]
    return node


def channels_by_subject(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {channel["address"]: channel for channel in doc["channels"].values()}


def message_of(doc: dict[str, Any], subject: str) -> dict[str, Any]:
    """The one message the channel of ``subject`` carries, resolved."""
    messages = list(channels_by_subject(doc)[subject]["messages"].values())
    assert len(messages) == 1, f"{subject} carries {len(messages)} messages"
    resolved: dict[str, Any] = resolve(doc, messages[0])
    return resolved


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcards: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or token not in ("*", have[index]):
            return False
    return len(want) == len(have)


def as_api(config: Any) -> dict[str, Any]:
    """A nats-py config as the JetStream API's JSON (enums as their strings)."""
    return {key: getattr(value, "value", value) for key, value in config.as_dict().items()}


def default_limits() -> Any:
    # model_construct: the fields' defaults, whatever the environment running the
    # tests sets; the document describes the defaults.
    return topology_limits(Topology.model_construct())


def strings(node: Any) -> Iterator[str]:
    """Every key and string value of the document, its prose included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


# --- valid AsyncAPI 3.0 ------------------------------------------------------------


def test_document_follows_the_asyncapi_3_0_schema(
    document: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert schema_errors(validator, document) == []


@pytest.mark.parametrize(
    "breakage",
    ["operation-verb-of-asyncapi-2", "server-without-protocol", "unknown-message-field"],
)
def test_the_schema_check_rejects_a_broken_document(
    document: dict[str, Any], validator: jsonschema.Draft7Validator, breakage: str
) -> None:
    """The validation is not a no-op: small mistakes a hand edit makes are caught."""
    broken = copy.deepcopy(document)
    if breakage == "operation-verb-of-asyncapi-2":
        broken["operations"]["receiveOrderCreated"]["action"] = "subscribe"
    elif breakage == "server-without-protocol":
        del broken["servers"]["nats"]["protocol"]
    else:
        broken["components"]["messages"]["OrderCreated"]["subject"] = names.SUBJECT_CREATED
    assert schema_errors(validator, broken)


# --- the code's names ----------------------------------------------------------------


def test_channels_are_the_codes_subjects(document: dict[str, Any]) -> None:
    assert set(channels_by_subject(document)) == set(PAYLOADS)


def test_each_channel_is_in_the_stream_that_captures_its_subject(
    document: dict[str, Any],
) -> None:
    for subject, channel in channels_by_subject(document).items():
        stream = channel["x-jetstream-stream"]
        assert stream in STREAM_SUBJECTS, f"{subject}: no stream {stream}"
        assert any(subject_matches(p, subject) for p in STREAM_SUBJECTS[stream]), subject


def test_the_bridge_receives_orders_and_sends_outcomes_and_dead_letters(
    document: dict[str, Any],
) -> None:
    actions = {}
    for operation in document["operations"].values():
        channel = resolve(document, operation["channel"])
        actions[channel["address"]] = operation["action"]
        # An operation's messages are its channel's (AsyncAPI 3.0).
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
    assert actions == ACTIONS


def test_streams_are_as_the_bridge_creates_them(document: dict[str, Any]) -> None:
    streams = document["servers"]["nats"]["x-jetstream-streams"]
    created = {
        config.name: as_api(config)
        for config in (input_stream(NAMES, default_limits()), dlq_stream(NAMES, default_limits()))
    }
    assert set(streams) == set(created) == set(STREAM_SUBJECTS)
    for name, stream in streams.items():
        config = stream["config"]
        assert config["name"] == name
        assert {"subjects", "retention", "storage", "max_age", "duplicate_window"} <= set(config)
        assert config == {key: created[name][key] for key in config}, name


def test_the_durable_consumer_is_as_the_bridge_creates_it(document: dict[str, Any]) -> None:
    consumer = document["operations"]["receiveOrderCreated"]["x-jetstream-consumer"]
    assert consumer["stream_name"] == names.ORDERS_STREAM
    created = as_api(durable_consumer(NAMES, default_limits()))
    config = consumer["config"]
    assert config["durable_name"] == names.DURABLE_CONSUMER
    assert config["filter_subject"] == names.SUBJECT_CREATED
    assert {"ack_policy", "deliver_policy", "ack_wait", "max_deliver"} <= set(config)
    assert config == {key: created[key] for key in config}


def test_the_settings_it_names_are_the_bridges(document: dict[str, Any]) -> None:
    described = [
        *document["servers"]["nats"]["x-jetstream-streams"].values(),
        document["operations"]["receiveOrderCreated"]["x-jetstream-consumer"],
    ]
    for item in described:
        assert set(item["settings"]) <= set(item["config"])
        for variable in item["settings"].values():
            assert variable.lower() in BridgeSettings.model_fields, variable


def test_the_server_is_the_default_nats_url(document: dict[str, Any]) -> None:
    server = document["servers"]["nats"]
    defaults = {name: var["default"] for name, var in server["variables"].items()}
    url = f"{server['protocol']}://{server['host'].format(**defaults)}"
    assert url == BridgeSettings.model_fields["nats_url"].default


def test_headers_are_the_codes(document: dict[str, Any]) -> None:
    expected = {
        names.SUBJECT_CREATED: {names.HDR_MSG_ID, names.HDR_TRACEPARENT},
        names.SUBJECT_COMPLETED: {names.HDR_MSG_ID, names.HDR_TRACEPARENT},
        names.SUBJECT_FAILED: {names.HDR_MSG_ID, names.HDR_TRACEPARENT},
        names.SUBJECT_DLQ_CREATED: {names.HDR_MSG_ID, names.HDR_TRACEPARENT, *DLQ_HEADERS},
    }
    for subject, headers in expected.items():
        schema = message_of(document, subject)["headers"]
        assert set(schema["properties"]) == headers, subject
        assert names.HDR_MSG_ID in schema["required"], subject


def test_msg_id_formats_are_the_codes(document: dict[str, Any]) -> None:
    for subject, msg_ids in MSG_IDS.items():
        header = message_of(document, subject)["headers"]["properties"][names.HDR_MSG_ID]
        assert [f.format(**SAMPLES) for f in header["x-formats"]] == msg_ids, subject
        for msg_id in msg_ids:
            jsonschema.validate(msg_id, header)


@pytest.mark.parametrize("subject", [names.SUBJECT_COMPLETED, names.SUBJECT_FAILED])
def test_outcome_headers_as_the_bridge_writes_them_are_valid(
    document: dict[str, Any], subject: str
) -> None:
    schema = message_of(document, subject)["headers"]
    kind = OutcomeKind(subject.rsplit(".", 1)[1])
    headers = {names.HDR_MSG_ID: names.outcome_msg_id("ord-1", kind), "traceparent": TRACEPARENT}
    jsonschema.validate(headers, schema)
    # The other outcome's id is not this one's: the patterns tell them apart.
    other = OutcomeKind.FAILED if kind is OutcomeKind.COMPLETED else OutcomeKind.COMPLETED
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({names.HDR_MSG_ID: names.outcome_msg_id("ord-1", other)}, schema)


def test_dead_letter_headers_as_the_relay_writes_them_are_valid(
    document: dict[str, Any],
) -> None:
    """The relay's own :func:`~relay.dead_letter.dlq_headers`, on a message as the
    bridge's consumer delivers it, against the document's DeadLetter headers."""
    delivered = SimpleNamespace(
        subject=names.SUBJECT_CREATED,
        headers={names.HDR_MSG_ID: "ord-1", names.HDR_TRACEPARENT: TRACEPARENT},
        metadata=SimpleNamespace(sequence=SimpleNamespace(stream=42), num_delivered=5),
    )
    headers = dlq_headers(delivered, "cannot decode\nOrderCreated", NAMES)  # type: ignore[arg-type]
    schema = message_of(document, names.SUBJECT_DLQ_CREATED)["headers"]
    jsonschema.validate(headers, schema)
    assert set(schema["required"]) == set(headers) - {names.HDR_TRACEPARENT}
    assert headers[names.HDR_MSG_ID] == names.dlq_msg_id(42)


def test_payloads_are_the_codecs_protobuf_messages(document: dict[str, Any]) -> None:
    proto = (ROOT / "proto" / orders_pb2.DESCRIPTOR.name).resolve()
    for subject, message_type in PAYLOADS.items():
        payload = message_of(document, subject)["payload"]
        assert payload["schemaFormat"] == PROTOBUF, subject
        assert (DOCUMENT.parent / payload["schema"]["$ref"]).resolve() == proto, subject
        assert payload["x-protobuf-message"] == message_type.DESCRIPTOR.full_name, subject


def test_failure_reasons_are_the_codes(document: dict[str, Any]) -> None:
    failed = message_of(document, names.SUBJECT_FAILED)
    assert failed["x-reasons"] == [reason.value for reason in FailureReason]


def test_every_name_in_the_text_is_the_codes(document: dict[str, Any]) -> None:
    """Prose included: a subject, header, stream, consumer, setting or reason the
    document mentions anywhere is one the code has."""
    text = "\n".join(strings(document))
    subjects = {*PAYLOADS, *names.ORDERS_SUBJECTS, *names.DLQ_SUBJECTS}
    headers = {names.HDR_MSG_ID, names.HDR_TRACEPARENT, *DLQ_HEADERS}
    upper_names = {
        *STREAM_SUBJECTS,
        *(field.upper() for field in BridgeSettings.model_fields),
        *(reason.value for reason in FailureReason),
    }
    for pattern, known in [
        (r"(?<![\w.$])(?:DLQ|ORDER)\.[\w.*>]*[\w*>]", subjects),
        (r"\b(?:Nats|Orders)-[A-Za-z]+(?:-[A-Za-z]+)*", headers),
        (r"\bORDERS\w*|\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", upper_names),
        (r"\border-[a-z]+\b", {names.DURABLE_CONSUMER}),
    ]:
        found = set(re.findall(pattern, text))
        assert found, f"nothing matches {pattern}: the sweep is broken"
        assert found <= known, f"not the code's: {sorted(found - known)}"
