-- One round trip per task start: count the start of this task id (to bound tasks
-- that kill their worker) and mark the entry's progress (RECEIVED becomes
-- PROCESSING), unless the entry moved on to another epoch.
--
-- KEYS: entry, task starts   ARGV: epoch, starts ttl   Reply: starts of the task id
local starts = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  if redis.call('HGET', KEYS[1], 'status') == 'RECEIVED' then
    redis.call('HSET', KEYS[1], 'status', 'PROCESSING')
  end
  redis.call('HSET', KEYS[1], 'updated_ms', now)
end
return starts
