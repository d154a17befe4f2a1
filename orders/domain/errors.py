"""Failure classes. Each failure is classified once:

- a business outcome is a value (:class:`orders.domain.model.StepResult`), never raised;
- a :class:`TransientError` is raised and retried with backoff;
- poison input never gets this far (the bridge dead-letters it).
"""


class TransientError(Exception):
    """A fault that may pass: retry with backoff and jitter."""


class GatewayUnavailable(TransientError):
    """The payment gateway did not answer; the charge may or may not have happened,
    which is why every charge carries an idempotency key."""
