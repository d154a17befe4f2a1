-- What the relay must do with each of a set of delivered inputs, or with inputs it
-- waits for: one call decides for every handler that asked at the same moment (a
-- fetch's deliveries, the waiters woken by one completion read), in order, so two
-- asks about one key see each other's writes exactly as two calls would.
--
-- The first content seen for a key is the input: a later message with the same
-- key but other content (a buggy producer) follows the stored one, so two
-- versions can never race each other's effects.
--
-- ``sent_on`` is the Redis server (its run_id, as the bridge last saw it) through
-- which the current run was sent. A run sent through another server than today's
-- may have lost its broker messages in a failover to a replica that had not
-- received them: it is sent again at once, not after the stall timeout. Epoch and
-- run "known" are what the bridge remembers of an entry it is waiting for; they
-- let a hash that a failover lost be restored without reusing a run number (task
-- ids, and so chord counters, are per run).
--
-- Mode 'resend' is a poll whose failed run is sent again at once (cause 'retry')
-- instead of reported: the bridge's way to send alone an input whose batch failed
-- as a whole, without spending a delivery on what says nothing about the input.
--
-- KEYS: entry_1..n
-- ARGV: per entry: stall ms, mode ('deliver' | 'poll' | 'resend'), input, server,
--       known epoch, known run
-- Reply: per entry {next, epoch, run, error, stored input (start and attach),
--        cause of a start ('new', 'retry', 'stalled', 'failover')}, or
--        {'failed', 0, 0, why}
local function decide(h, stall_ms, mode, input, server, known_epoch, known_run)
  local f = redis.call('HMGET', h, 'published', 'outcome', 'dead', 'error', 'updated_ms',
                       'epoch', 'run', 'sent_on', 'input')
  local stored = f[9] or input
  -- Published, even if that mark is all a lost hash kept: never processed again.
  if f[1] and f[1] ~= '' then return {'done', tonumber(f[6]) or 1, tonumber(f[7]) or 0, ''} end
  if not f[6] then
    -- Someone waiting on this entry must not create it without its content.
    if mode ~= 'deliver' then return {'lost', known_epoch, known_run, ''} end
    local epoch, run = math.max(known_epoch, 1), known_run + 1
    redis.call('HSET', h, 'status', 'RECEIVED', 'epoch', epoch, 'run', run, 'received_ms', now,
               'updated_ms', now, 'input', input, 'sent_on', server)
    return {'start', epoch, run, '', input, known_run > 0 and 'failover' or 'new'}
  end
  local epoch, run = tonumber(f[6]), tonumber(f[7]) or 0
  -- A nil would cut this entry's reply short: fail it alone instead (the pcall below).
  if not epoch then error('corrupt epoch ' .. tostring(f[6])) end
  if f[2] and f[2] ~= '' then return {'publish', epoch, run, ''} end
  if mode ~= 'deliver' then
    -- Someone is waiting on this run: report failures, never start a new epoch.
    if f[3] == '1' then return {'errored', epoch, run, 'dead-lettered meanwhile'} end
    if mode == 'poll' and f[4] and f[4] ~= '' then return {'errored', epoch, run, f[4]} end
  end
  if f[3] == '1' then
    -- A replay of a dead letter: a new epoch, so earlier effects cannot count for it.
    epoch = epoch + 1
    redis.call('HSET', h, 'epoch', epoch, 'run', 1, 'dead', '', 'error', '', 'status',
               'RECEIVED', 'reason', '', 'detail', '', 'updated_ms', now, 'sent_on', server)
    return {'start', epoch, 1, '', stored, 'new'}
  end
  local cause = nil
  if server ~= '' and f[8] and f[8] ~= '' and f[8] ~= server then
    cause = 'failover'
  elseif f[4] and f[4] ~= '' then
    cause = 'retry'
  else
    -- A stalled run is sent again, each time after twice as long (up to 8x): when the
    -- workers are merely behind, re-sends must not pile more work on their queues.
    local stall = stall_ms * 2 ^ math.min(math.max(run - 1, 0), 3)
    if now - (tonumber(f[5]) or 0) > stall then cause = 'stalled' end
  end
  if cause then
    run = math.max(run, known_run) + 1
    redis.call('HSET', h, 'run', run, 'error', '', 'updated_ms', now, 'sent_on', server)
    return {'start', epoch, run, '', stored, cause}
  end
  return {'attach', epoch, run, '', stored}
end

-- An entry that cannot be decided (a key of another type, a corrupt field) fails
-- alone: {'failed', 0, 0, why}; the others asked with it are decided as usual.
local replies = {}
for i, h in ipairs(KEYS) do
  local a = (i - 1) * 6
  local ok, reply = pcall(decide, h, tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3],
                          ARGV[a + 4], tonumber(ARGV[a + 5]) or 0, tonumber(ARGV[a + 6]) or 0)
  if ok then
    replies[i] = reply
  else
    replies[i] = {'failed', 0, 0, type(reply) == 'table' and reply.err or tostring(reply)}
  end
end
return replies
