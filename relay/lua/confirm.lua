-- The entries, read for publishing their outcomes (or dead letters): one call for
-- every handler that asked at the same moment. With ARGV[1] == '1', also a write of
-- the caller's own (confirmed_ms) on each: a WAIT on the same connection then
-- covers every write before it in the replication stream, those of the workers
-- that recorded the outcomes included (Redis 7.2+ waits for a connection's last
-- *write*, earlier versions for its last command).
--
-- KEYS: entry_1..n   ARGV: '1' to write, else '0'
-- Reply: per entry HGETALL's flat list, or {false (nil), why} for an entry that
-- cannot be read (a key of another type): that entry fails alone.
local function read(h)
  local fields = redis.call('HGETALL', h)
  if ARGV[1] == '1' and #fields > 0 then
    redis.call('HSET', h, 'confirmed_ms', now)
  end
  return fields
end

local replies = {}
for i, h in ipairs(KEYS) do
  local ok, reply = pcall(read, h)
  if ok then
    replies[i] = reply
  else
    replies[i] = {false, type(reply) == 'table' and reply.err or tostring(reply)}
  end
end
return replies
