"""A payment gateway simulator that behaves like a real one where it matters.

- Latency on every call (``PAYMENT_LATENCY_MS``).
- Transient failures at ``PAYMENT_TRANSIENT_FAILURE_RATE``; half of them happen
  *after* the charge was made (the response is lost), as with a real gateway
  timing out, so callers must rely on idempotency keys rather than on errors.
- Declines for amounts above ``PAYMENT_DECLINE_ABOVE``.
- Idempotency keys: one charge per key, a repeated call returns the first result.
- A batch API (``charge_many``): one call, with its latency, charges the orders of
  a batch; each order may still fail on its own.

Its ledger lives in Redis under its own keys, standing in for the gateway's books.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from decimal import Decimal

import redis

from orders.adapters import redis_keys as keys
from orders.domain import money
from orders.domain.errors import GatewayUnavailable
from orders.ports import ChargeRequest, ChargeResult, RefundResult

# KEYS: charge record per charge
# ARGV: per charge: state if new (approved|declined), payment id, amount, currency
# Reply: per charge {state, payment id, amount, currency}: the first answer under its
# key, with the charge it decided (a voided key has no amount)
_CHARGE = """
local replies = {}
for i, record in ipairs(KEYS) do
  local a = (i - 1) * 4
  local existing = redis.call('HMGET', record, 'state', 'payment_id', 'amount', 'currency')
  if existing[1] then
    replies[i] = existing
  else
    redis.call('HSET', record, 'state', ARGV[a + 1], 'payment_id', ARGV[a + 2],
               'amount', ARGV[a + 3], 'currency', ARGV[a + 4])
    replies[i] = {ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]}
  end
end
return replies
"""

# KEYS: charge record.  Returns the refunded payment id, or '' when nothing was refunded.
_REFUND = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'approved' then
  redis.call('HSET', KEYS[1], 'state', 'refunded')
  return redis.call('HGET', KEYS[1], 'payment_id')
end
if state == 'refunded' then return redis.call('HGET', KEYS[1], 'payment_id') end
if not state then redis.call('HSET', KEYS[1], 'state', 'voided', 'payment_id', '') end
return ''
"""


class SimulatedGateway:
    """:class:`orders.ports.PaymentGateway` simulator."""

    def __init__(
        self,
        client: redis.Redis,  # created with decode_responses=True
        *,
        decline_above: Decimal,
        transient_failure_rate: float = 0.0,
        latency_ms: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self._decline_above = decline_above
        self._failure_rate = transient_failure_rate
        self._latency_s = latency_ms / 1000
        self._rng = rng or random.Random()
        self._charge = client.register_script(_CHARGE)
        self._refund = client.register_script(_REFUND)

    def charge(self, idempotency_key: str, amount_minor: int, currency: str) -> ChargeResult:
        [result] = self.charge_many([ChargeRequest(idempotency_key, amount_minor, currency)])
        if isinstance(result, GatewayUnavailable):
            raise result
        return result

    def charge_many(
        self, requests: Sequence[ChargeRequest]
    ) -> list[ChargeResult | GatewayUnavailable]:
        self._network_delay()
        faults = [self._transient_failure() for _ in requests]
        # A fault before charging: that request never reaches the books.
        reaching = [r for r, fault in zip(requests, faults, strict=True) if fault is not False]
        answers = iter(
            self._charge(
                keys=[keys.gateway_charge(r.idempotency_key) for r in reaching],
                args=[arg for r in reaching for arg in self._charge_args(r)],
            )
            if reaching
            else ()
        )
        results: list[ChargeResult | GatewayUnavailable] = []
        for fault in faults:
            if fault is False:
                results.append(GatewayUnavailable("payment gateway timed out before charging"))
                continue
            state, payment_id, amount, currency = next(answers)
            if fault:
                results.append(GatewayUnavailable("payment gateway timed out after charging"))
            else:
                results.append(self._answer(state, payment_id, amount, currency))
        return results

    def _charge_args(self, r: ChargeRequest) -> list[str | int]:
        declined = money.amount_above(r.amount_minor, r.currency, self._decline_above)
        state = "declined" if declined else "approved"
        return [state, _payment_id(r.idempotency_key), r.amount_minor, r.currency]

    def _answer(
        self, state: str, payment_id: str, amount: str | None, currency: str | None
    ) -> ChargeResult:
        """The key's first decision, described by the charge it decided (a repeat
        under the same key with another amount gets the same answer)."""
        if state in ("approved", "refunded"):
            # A refunded charge is still the answer to this key; the caller's
            # ledger already counted it once.
            return ChargeResult(approved=True, payment_id=payment_id)
        if state == "voided":
            return ChargeResult(approved=False, detail="charge voided before it was made")
        # Declined: _CHARGE wrote the amount and currency with the state.
        assert amount is not None and currency is not None, (state, payment_id)
        return ChargeResult(
            approved=False,
            detail=f"amount {money.format_money(int(amount), currency)} is above the "
            f"decline limit of {self._decline_above} {currency}",
        )

    def refund(self, idempotency_key: str) -> RefundResult:
        self._network_delay()
        if self._transient_failure() is not None:
            raise GatewayUnavailable("payment gateway timed out during refund")
        payment_id = self._refund(keys=[keys.gateway_charge(idempotency_key)])
        return RefundResult(payment_id=payment_id)

    def _network_delay(self) -> None:
        if self._latency_s:
            time.sleep(self._latency_s)

    def _transient_failure(self) -> bool | None:
        """``None``: no failure; ``False``: fail before acting; ``True``: after."""
        if self._failure_rate and self._rng.random() < self._failure_rate:
            return self._rng.random() < 0.5
        return None


def _payment_id(idempotency_key: str) -> str:
    # Deterministic, so a lost response and its retry name the same payment.
    return "pay_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
