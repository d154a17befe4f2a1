"""Typed views of redis-py replies.

redis-py types every reply as ``bytes | str`` whatever the client's
``decode_responses``, and XREAD's as either protocol's shape. The relay's clients
decode, and get RESP2-shaped replies (redis-py's default: RESP2 before redis-py 8;
from 8, RESP3 on the wire with ``legacy_responses`` shaping replies as RESP2's,
whether the Python parser or hiredis reads them): these functions say so once, for
their callers, without copying a reply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    # Not in redis-py 6.4, which the requirement still allows.
    from redis.typing import StreamRangeResponse, XReadResponse

StreamEntry = tuple[str, dict[str, str]]
"""A stream entry as these clients read it: its id and its fields."""


def decoded_hash(reply: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """An HGETALL reply of a decoding client."""
    return cast("dict[str, str]", reply)


def decoded_entries(reply: StreamRangeResponse | None) -> list[StreamEntry]:
    """An XRANGE or XREVRANGE reply: live entries, never ``(None, None)``."""
    return cast("list[StreamEntry]", reply or [])


def decoded_xread(reply: XReadResponse) -> list[tuple[str, list[StreamEntry]]]:
    """An XREAD reply: each stream read (a ``[name, entries]`` list)."""
    return cast("list[tuple[str, list[StreamEntry]]]", reply)
