-- One round trip per task start, for the one input of a task or every input of a
-- batch task: count the start of this task id (to bound tasks that kill their
-- worker; every input of a batch counts the same starts, so one count serves them
-- all) and mark each entry's progress (RECEIVED becomes PROCESSING), unless the
-- entry moved on to another epoch. An entry with an outcome keeps its status.
--
-- KEYS: task starts, entry_1..n   ARGV: starts ttl, epoch_1..n   Reply: starts of the task id
local starts = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 2, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'epoch', 'status')
  if f[1] == ARGV[i] then
    if f[2] == 'RECEIVED' then
      redis.call('HSET', KEYS[i], 'status', 'PROCESSING', 'updated_ms', now)
    else
      redis.call('HSET', KEYS[i], 'updated_ms', now)
    end
  end
end
return starts
