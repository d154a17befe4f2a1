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
-- Every entry is read and decided before anything is written: a read that fails (a
-- key of another type) fails the call with nothing recorded, never with some
-- outcomes written and their completion event missing.
local recorded, done, writes, deciding = {}, {}, {}, {}
local a = 2
for i = 2, #KEYS do
  local epoch, key, outcome, pairs_n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local first, last = a + 4, a + 3 + 2 * pairs_n
  a = last + 1
  local f = redis.call('HMGET', KEYS[i], 'epoch', 'outcome', 'dead')
  if f[1] ~= epoch or (f[2] and f[2] ~= '') or f[3] == '1' or deciding[KEYS[i]] then
    done[i - 1] = 0
  else
    deciding[KEYS[i]] = true  -- asked twice in one call: recorded once
    writes[#writes + 1] = {KEYS[i], outcome, first, last}
    recorded[#recorded + 1] = key
    done[i - 1] = 1
  end
end
for _, w in ipairs(writes) do
  redis.call('HSET', w[1], 'outcome', w[2], 'error', '', 'updated_ms', now,
             unpack(ARGV, w[3], w[4]))
end
if #recorded == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'key', recorded[1], 'event', 'outcome')
elseif #recorded > 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'keys', cjson.encode(recorded),
             'event', 'outcome')
end
return done
