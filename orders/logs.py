"""Log lines that name their order: ``LOG_FORMAT=json`` for collectors, text for people.

Every record logged while an order is being handled (in the bridge, or in a
Celery task of its workflow) carries ``order_id`` and ``trace_id``, taken from
the OpenTelemetry context (:mod:`orders.telemetry`): the same ids a trace
viewer searches by.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime

from orders.telemetry import current_order_id, current_trace_id, ids_in_headers

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s%(order_context)s: %(message)s"


# Celery's worker main process logs about tasks outside any task's context
# ("Task <name>[<id>] received", a worker lost, ...): those lines name the task id,
# which maps back to the order through the task's headers, remembered on receipt.
_TASK_ID_IN_MESSAGE = re.compile(r"\[([^\[\]\s]+)\]")
_REMEMBERED_TASKS = 10_000
_task_ids: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()


def remember_task(task_id: str, headers: Mapping[str, object]) -> None:
    """Note the order and trace of a task message received by this process."""
    _task_ids[task_id] = ids_in_headers(headers)
    _task_ids.move_to_end(task_id)
    while len(_task_ids) > _REMEMBERED_TASKS:
        _task_ids.popitem(last=False)


def _ids_of_task_in(record: logging.LogRecord) -> tuple[str | None, str | None]:
    data = getattr(record, "data", None)
    candidates = [data["id"]] if isinstance(data, dict) and "id" in data else []
    if not candidates and _task_ids:
        candidates = _TASK_ID_IN_MESSAGE.findall(record.getMessage())
    for task_id in candidates:
        if (ids := _task_ids.get(str(task_id))) is not None:
            return ids
    return None, None


class OrderContextFilter(logging.Filter):
    """Adds ``order_id``, ``trace_id`` and, for the text format, ``order_context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        order_id = getattr(record, "order_id", None) or current_order_id()
        trace_id = getattr(record, "trace_id", None) or current_trace_id()
        if order_id is None:
            order_id, task_trace_id = _ids_of_task_in(record)
            trace_id = trace_id or task_trace_id
        record.order_id = order_id
        record.trace_id = trace_id
        parts = [f"order={order_id}" if order_id else "", f"trace={trace_id}" if trace_id else ""]
        shown = " ".join(p for p in parts if p)
        record.order_context = f" [{shown}]" if shown else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields absent rather than null."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for key in ("order_id", "trace_id"):
            if value := getattr(record, key, None):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: str, level: str) -> None:
    """Route every logger through one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(OrderContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library warnings (Celery's SecurityWarning, deprecations) as log records too.
    logging.captureWarnings(True)
