"""The naive baseline's worker: ``celery -A dev.bench.naive_worker worker``.

Reads ``REDIS_URL`` (the benchmark sets it); building the app connects to nothing.
"""

from __future__ import annotations

import os
import sys

from celery import Celery

from dev.bench import naive

_redis_url = os.environ.get("REDIS_URL")
if not _redis_url:
    sys.exit("dev.bench.naive_worker: REDIS_URL is not set")

app: Celery = naive.create_app(_redis_url)
