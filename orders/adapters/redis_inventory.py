"""Inventory in Redis: one counter per product, one reservation record per order.

Reserving checks and decrements every product in one Lua script, so an order
takes all of its stock or none, and two orders never oversell a product.
"""

from __future__ import annotations

import redis

from orders.adapters import redis_keys as keys
from orders.domain.model import FailureReason, StepResult

# One reservation record per order and epoch (a replay of a dead-lettered order
# is a new epoch and reserves afresh; compensating one epoch never touches
# another). ``result`` is what reserving decided (reserved or rejected) and
# ``state`` whether stock is held now (reserved, released or none), so a step
# repeated after compensation repeats its first answer and leads to the same
# settlement, without taking stock again.
#
# KEYS: reservation, stock_1..n   ARGV: default stock, qty_1..n, sku_1..n
_RESERVE = """
local f = redis.call('HMGET', KEYS[1], 'result', 'detail', 'state')
if f[1] then return {f[1], f[2] or ''} end
if f[3] == 'released' then return {'rejected', 'reservation cancelled before it was made'} end
local n = #KEYS - 1
local default = tonumber(ARGV[1])
for i = 1, n do
  local have = tonumber(redis.call('GET', KEYS[i + 1]) or default)
  local want = tonumber(ARGV[1 + i])
  if have < want then
    local detail = ARGV[1 + n + i] .. ': requested ' .. want .. ', available ' .. have
    redis.call('HSET', KEYS[1], 'result', 'rejected', 'state', 'none', 'detail', detail)
    return {'rejected', detail}
  end
end
for i = 1, n do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then redis.call('SET', KEYS[i + 1], default) end
  redis.call('DECRBY', KEYS[i + 1], ARGV[1 + i])
end
redis.call('HSET', KEYS[1], 'result', 'reserved', 'state', 'reserved', 'detail', '')
return {'reserved', ''}
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
        skus = sorted(quantities)
        state, detail = self._reserve(
            keys=[keys.reservation(order_id, epoch), *(keys.stock(s) for s in skus)],
            args=[self._default_stock, *(quantities[s] for s in skus), *skus],
        )
        if state == "reserved":
            return StepResult.success()
        detail = detail or "stock already released for this order"
        return StepResult.failure(FailureReason.OUT_OF_STOCK, detail)

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
