-- Prefixed to every script that keeps time. Times come from Redis's own clock,
-- never from an argument: the bridge compares ``updated_ms`` written by workers on
-- other hosts, and host clocks disagree. Redis before 5 needs effects replication
-- to write after TIME; later versions always replicate effects.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
