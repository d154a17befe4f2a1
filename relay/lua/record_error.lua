-- A task of the epoch failed for good (its retries spent): the bridge waiting for
-- the run is woken and naks, and the next delivery sends the workflow again.
--
-- KEYS: entry, completions   ARGV: epoch, maxlen, key, detail
-- Reply: 1 if recorded, 0 if the epoch has an outcome already or is dead
local f = redis.call('HMGET', KEYS[1], 'epoch', 'outcome', 'dead')
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= '') or f[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'error', ARGV[4], 'updated_ms', now)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'key', ARGV[3], 'event', 'error')
return 1
