-- The entry, read for publishing its outcome (or its dead letter). With
-- ARGV[1] == '1', also a write of the caller's own (confirmed_ms): a WAIT on the
-- same connection then covers every write before it in the replication stream,
-- those of the workers that recorded the outcome included (Redis 7.2+ waits for a
-- connection's last *write*, earlier versions for its last command).
--
-- KEYS: entry   ARGV: '1' to write, else '0'   Reply: HGETALL's flat list
local fields = redis.call('HGETALL', KEYS[1])
if ARGV[1] == '1' and #fields > 0 then
  redis.call('HSET', KEYS[1], 'confirmed_ms', now)
end
return fields
