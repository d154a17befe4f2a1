-- Mark the epoch dead before compensating it: from here on no outcome can be
-- recorded for it, so no late step can complete it.
--
-- KEYS: entry, completions   ARGV: epoch, maxlen, key, detail
-- Reply: 1 if marked, 0 when an outcome was recorded first (publish that instead)
local f = redis.call('HMGET', KEYS[1], 'epoch', 'outcome')
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= '') then return 0 end
redis.call('HSET', KEYS[1], 'dead', '1', 'status', 'FAILED', 'reason', 'DEAD_LETTERED',
           'detail', ARGV[4], 'error', '', 'updated_ms', now)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'key', ARGV[3], 'event', 'abandoned')
return 1
