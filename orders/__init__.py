"""The order pipeline: domain, Celery workflow and Redis-backed state.

Nothing here imports NATS or the bridge; the bridge depends on this package,
never the other way round.
"""
