-- Record outcomes, once per epoch each, atomically with the completion event the
-- bridge waits for: one call for an input, or for every input of a batch step that
-- decided at once (one event names them all). An outcome is the application's
-- opaque text; the field/value pairs after it are the application's own view of it
-- (a status, a reason), set in the same write. A dead epoch never records an
-- outcome.
--
-- KEYS: completions, entry_1..n
-- ARGV: maxlen, then per entry: epoch, key, outcome, number of field/value pairs,
--       field, value, ...
-- Reply: per entry 1 if recorded, 0 if the epoch has an outcome already or is dead
local recorded, done = {}, {}
local a = 2
for i = 2, #KEYS do
  local epoch, key, outcome, pairs_n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local first, last = a + 4, a + 3 + 2 * pairs_n
  a = last + 1
  local f = redis.call('HMGET', KEYS[i], 'epoch', 'outcome', 'dead')
  if f[1] ~= epoch or (f[2] and f[2] ~= '') or f[3] == '1' then
    done[i - 1] = 0
  else
    redis.call('HSET', KEYS[i], 'outcome', outcome, 'error', '', 'updated_ms', now,
               unpack(ARGV, first, last))
    recorded[#recorded + 1] = key
    done[i - 1] = 1
  end
end
if #recorded == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'key', recorded[1], 'event', 'outcome')
elseif #recorded > 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'keys', cjson.encode(recorded),
             'event', 'outcome')
end
return done
