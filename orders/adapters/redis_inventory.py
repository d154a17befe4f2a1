"""Inventory in Redis: one counter per product, one reservation record per order.

Reserving checks and decrements every product in one Lua script, so an order
takes all of its stock or none, and two orders never oversell a product.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from orders.adapters import redis_keys as keys
from orders.domain.model import FailureReason, StepResult
from orders.ports import ReservationRequest

# One reservation record per order and epoch (a replay of a dead-lettered order
# is a new epoch and reserves afresh; compensating one epoch never touches
# another). ``result`` is what reserving decided (reserved or rejected) and
# ``state`` whether stock is held now (reserved, released or none), so a step
# repeated after compensation repeats its first answer and leads to the same
# settlement, without taking stock again.
#
# Orders one after another (a batch's, or one), each all or nothing, so a batch has
# exactly the effect of its orders reserved one by one.
#
# KEYS: per order: reservation, stock_1..n
# ARGV: default stock, then per order: n, qty_1..n, sku_1..n
# Reply: per order {result, detail}
_RESERVE = """
local default = tonumber(ARGV[1])

local function reserve(k, a, n)
  local f = redis.call('HMGET', KEYS[k], 'result', 'detail', 'state')
  if f[1] then return {f[1], f[2] or ''} end
  if f[3] == 'released' then return {'rejected', 'reservation cancelled before it was made'} end
  local left = {}
  for i = 1, n do
    local have = tonumber(redis.call('GET', KEYS[k + i]) or default)
    local want = tonumber(ARGV[a + i])
    if have < want then
      local detail = ARGV[a + n + i] .. ': requested ' .. want .. ', available ' .. have
      redis.call('HSET', KEYS[k], 'result', 'rejected', 'state', 'none', 'detail', detail)
      return {'rejected', detail}
    end
    left[i] = have - want
  end
  for i = 1, n do redis.call('SET', KEYS[k + i], left[i]) end
  redis.call('HSET', KEYS[k], 'result', 'reserved', 'state', 'reserved', 'detail', '')
  return {'reserved', ''}
end

local replies, k, a = {}, 1, 2
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  replies[#replies + 1] = reserve(k, a, n)
  k, a = k + 1 + n, a + 1 + 2 * n
end
return replies
"""

# KEYS: reservation, stock_1..n   ARGV: qty_1..n
_RELEASE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'reserved' then
  for i = 2, #KEYS do redis.call('INCRBY', KEYS[i], ARGV[i - 1]) end
  redis.call('HSET', KEYS[1], 'state', 'released')
  return 1
end
-- Nothing reserved yet: block a late reservation in this epoch.
if not state then redis.call('HSET', KEYS[1], 'state', 'released') end
return 0
"""


class RedisInventory:
    """:class:`orders.ports.Inventory` on Redis."""

    def __init__(self, client: redis.Redis, default_stock: int) -> None:
        """``client`` must be created with ``decode_responses=True``."""
        self._redis = client
        self._default_stock = default_stock
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    def reserve(self, order_id: str, epoch: int, quantities: dict[str, int]) -> StepResult:
        [result] = self.reserve_many([ReservationRequest(order_id, epoch, quantities)])
        return result

    def reserve_many(self, requests: Sequence[ReservationRequest]) -> list[StepResult]:
        if not requests:
            return []
        script_keys: list[str] = []
        args: list[str | int] = [self._default_stock]
        for r in requests:
            skus = sorted(r.quantities)
            script_keys += [keys.reservation(r.order_id, r.epoch), *map(keys.stock, skus)]
            args += [len(skus), *(r.quantities[s] for s in skus), *skus]
        replies = self._reserve(keys=script_keys, args=args)
        return [_reservation_result(state, detail) for state, detail in replies]

    def release(self, order_id: str, epoch: int, quantities: dict[str, int]) -> bool:
        skus = sorted(quantities)
        released = self._release(
            keys=[keys.reservation(order_id, epoch), *(keys.stock(s) for s in skus)],
            args=[quantities[s] for s in skus],
        )
        return bool(released)

    def set_stock(self, sku: str, quantity: int) -> None:
        self._redis.set(keys.stock(sku), quantity)

    def available(self, skus: list[str]) -> dict[str, int]:
        values = self._redis.mget([keys.stock(s) for s in skus]) if skus else []
        return {
            sku: self._default_stock if value is None else int(value)
            for sku, value in zip(skus, values, strict=True)
        }


def _reservation_result(state: str, detail: str) -> StepResult:
    if state == "reserved":
        return StepResult.success()
    return StepResult.failure(
        FailureReason.OUT_OF_STOCK, detail or "stock already released for this order"
    )
