-- Record the outcome, once per epoch, atomically with the completion event the
-- bridge waits for. The outcome is the application's opaque text; the field/value
-- pairs after it are the application's own view of it (a status, a reason), set
-- in the same write. A dead epoch never records an outcome.
--
-- KEYS: entry, completions   ARGV: epoch, maxlen, key, outcome, [field, value]...
-- Reply: 1 if recorded, 0 if the epoch has an outcome already or is dead
local f = redis.call('HMGET', KEYS[1], 'epoch', 'outcome', 'dead')
if f[1] ~= ARGV[1] or (f[2] and f[2] ~= '') or f[3] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'outcome', ARGV[4], 'error', '', 'updated_ms', now)
if #ARGV > 4 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'key', ARGV[3], 'event', 'outcome')
return 1
