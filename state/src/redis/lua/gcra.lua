-- One GCRA step (crate::ratelimit::gcra) on the clock of Redis, in microseconds.
-- KEYS: the key's theoretical arrival time (Unix µs).
-- ARGV: interval µs (> 0), burst (>= 1), cost, force (1: record even when refused).
-- Returns {allowed (1/0), remaining, reset after µs, retry after µs (-1: not refused)}.
-- The key expires when the bucket is full again, so idle keys carry no state.
if redis.replicate_commands then redis.replicate_commands() end
local key = KEYS[1]
local t, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local force = ARGV[4] == '1'

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local tat = tonumber(redis.call('GET', key)) or now
if tat < now then tat = now end
local new_tat = tat + t * cost
-- The earliest time new_tat fits within `burst` intervals of now.
local allow_at = math.max(new_tat - t * burst, 0)
local allowed = now >= allow_at
local stored = tat
if allowed or force then
  stored = new_tat
  if new_tat > now then
    local ttl_ms = math.ceil((new_tat - now) / 1000)
    redis.call('SET', key, string.format('%.0f', new_tat), 'PX', ttl_ms)
  else
    redis.call('DEL', key)
  end
end
local remaining = math.floor(math.max(now + t * burst - stored, 0) / t)
local retry = -1
if not allowed then retry = allow_at - now end
return {allowed and 1 or 0, remaining, stored - now, retry}
