"""``orders dlq``: inspect and replay the dead letters of stream ``ORDERS_DLQ``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import click
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from rich.markup import escape
from rich.table import Column, Table

from bridge.cli import _common
from bridge.codec import PoisonMessage, decode_order_created
from bridge.settings import CliSettings
from orders import names


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int
    original_sequence: int | None
    original_subject: str | None
    deliveries: int | None
    reason: str | None
    order_id: str | None
    data: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)

    def as_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "original_sequence": self.original_sequence,
            "original_subject": self.original_subject,
            "deliveries": self.deliveries,
            "reason": self.reason,
            "order_id": self.order_id,
            "size": len(self.data),
        }


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _dead_letter(msg: RawStreamMsg, config: CliSettings) -> DeadLetter:
    headers = dict(msg.headers or {})
    data = msg.data or b""
    try:
        order_id: str | None = decode_order_created(
            data, max_bytes=config.max_message_bytes
        ).order_id
    except PoisonMessage:
        order_id = None
    assert msg.seq is not None
    return DeadLetter(
        seq=msg.seq,
        original_sequence=_int(headers.get(names.HDR_DLQ_SEQUENCE)),
        original_subject=headers.get(names.HDR_DLQ_SUBJECT),
        deliveries=_int(headers.get(names.HDR_DLQ_DELIVERIES)),
        reason=headers.get(names.HDR_DLQ_REASON),
        order_id=order_id,
        data=data,
        headers=headers,
    )


async def _scan(js: JetStreamContext, config: CliSettings) -> AsyncIterator[DeadLetter]:
    """Every dead letter stored when the scan starts, in sequence order.

    Asks for "the next message at or after N" rather than for each sequence, so
    deleted (replayed) sequences cost nothing; stops at the last sequence seen at
    the start, so letters dead-lettered again during a replay are not replayed twice.
    """
    try:
        state = (await js.stream_info(names.DLQ_STREAM)).state
    except NotFoundError:
        return
    seq, last = state.first_seq, state.last_seq
    while state.messages and seq <= last:
        try:
            msg = await js.get_msg(
                names.DLQ_STREAM, seq=seq, subject=names.DLQ_SUBJECTS[0], next=True
            )
        except NotFoundError:
            return
        if msg.seq is None or msg.seq > last:
            return
        yield _dead_letter(msg, config)
        seq = msg.seq + 1


async def _fetch(js: JetStreamContext, config: CliSettings, seq: int) -> DeadLetter | None:
    try:
        return _dead_letter(await js.get_msg(names.DLQ_STREAM, seq=seq), config)
    except NotFoundError:  # no such stream, sequence never used, or already deleted
        return None


async def _replay(js: JetStreamContext, letter: DeadLetter) -> None:
    """Store the payload again on ``ORDER.created``, then remove the dead letter.

    In that order, so a failure in between leaves a letter that was replayed and
    is still listed: replaying it again is harmless, because the pipeline handles
    an order once whatever the number of deliveries.
    """
    headers = {names.HDR_MSG_ID: names.replay_msg_id(letter.seq, int(time.time() * 1000))}
    if traceparent := letter.headers.get(names.HDR_TRACEPARENT):
        headers[names.HDR_TRACEPARENT] = traceparent
    await js.publish(
        names.SUBJECT_CREATED, letter.data, headers=headers, stream=names.ORDERS_STREAM
    )
    with contextlib.suppress(NotFoundError):  # deleted meanwhile by another replay
        await js.delete_msg(names.DLQ_STREAM, letter.seq)


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (stream ORDERS_DLQ)."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_letters(as_json: bool) -> None:
    """List the dead letters with their reason and original position."""
    config = _common.settings()

    async def scan() -> list[DeadLetter]:
        async with _common.jetstream(config) as js:
            return [letter async for letter in _scan(js, config)]

    letters = _common.run(scan())
    if as_json:
        _common.print_json([letter.as_json() for letter in letters])
        return
    out = _common.console()
    if not letters:
        out.print("no dead letters")
        return
    # Folded, not cut with an ellipsis: ids and reasons are copied from this output.
    table = Table(
        Column("seq", justify="right"),
        Column("orig seq", justify="right"),
        Column("subject", overflow="fold"),
        Column("deliveries", justify="right"),
        Column("order id", overflow="fold"),
        Column("bytes", justify="right"),
        Column("reason", overflow="fold"),
    )
    for letter in letters:
        table.add_row(
            str(letter.seq),
            _text(letter.original_sequence),
            escape(_text(letter.original_subject)),
            _text(letter.deliveries),
            escape(letter.order_id) if letter.order_id is not None else "[dim]undecodable[/]",
            str(len(letter.data)),
            escape(_text(letter.reason)),
        )
    out.print(table)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


@dlq.command("replay")
@click.option(
    "--seq",
    "seqs",
    type=click.IntRange(min=1),
    multiple=True,
    metavar="N",
    help="Replay the dead letter at DLQ sequence N (repeatable).",
)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (the default).")
def replay(seqs: tuple[int, ...], replay_all: bool) -> None:
    """Publish dead letters again to ORDER.created under a new Nats-Msg-Id, then
    delete them from the DLQ."""
    if seqs and replay_all:
        raise click.UsageError("choose --seq N or --all, not both")
    # The contract's bare `orders dlq replay` re-publishes the dead messages: all.
    replay_all = not seqs
    config = _common.settings()

    async def run() -> tuple[int, list[int]]:
        replayed, missing = 0, []
        async with _common.jetstream(config) as js:
            if replay_all:
                letters = [letter async for letter in _scan(js, config)]
            else:
                letters = []
                for seq in dict.fromkeys(seqs):
                    letter = await _fetch(js, config, seq)
                    if letter is None:
                        missing.append(seq)
                    else:
                        letters.append(letter)
            for letter in letters:
                await _replay(js, letter)
                replayed += 1
        return replayed, missing

    replayed, missing = _common.run(run())
    click.echo(f"replayed {replayed} dead letter{'' if replayed == 1 else 's'}")
    if missing:
        raise _common.CommandError(
            "no dead letter at sequence " + ", ".join(str(seq) for seq in missing)
        )
