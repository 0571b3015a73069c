-- Settle a reservation: remove it, add the actual usage, fire newly reached thresholds.
-- KEYS: usage hash, reservations sorted set, amounts hash.
-- ARGV: id, tokens, cost_micros, audio_ms,
--       limit tokens, limit cost_micros, limit audio_ms ("" = unlimited),
--       retention of the usage hash in ms (0: kept until reset),
--       then the thresholds (percent, any order).
-- Returns {usage tokens, cost_micros, audio_ms, reserved tokens, cost_micros, audio_ms,
--          {newly crossed thresholds, ascending}}.
if redis.replicate_commands then redis.replicate_commands() end
local usage, res, amt = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[1]
local limits = {tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('ZREM', res, id)
redis.call('HDEL', amt, id)
local expired = redis.call('ZRANGEBYSCORE', res, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
  for _, gone in ipairs(expired) do redis.call('HDEL', amt, gone) end
end

local used = {
  redis.call('HINCRBY', usage, 'tokens', ARGV[2]),
  redis.call('HINCRBY', usage, 'cost_micros', ARGV[3]),
  redis.call('HINCRBY', usage, 'audio_ms', ARGV[4]),
}
local retention = tonumber(ARGV[8]) or 0
if retention > 0 then redis.call('PEXPIRE', usage, retention) end

-- Limits::percent_used: the largest share over the limited dimensions, whole percent; a
-- zero limit counts as reached at once (and as infinitely exceeded once used).
local limited, pct = false, 0
for d = 1, 3 do
  local l = limits[d]
  if l then
    limited = true
    local p
    if l == 0 then
      if used[d] > 0 then p = math.huge else p = 100 end
    else
      p = math.floor(used[d] * 100 / l)
    end
    if p > pct then pct = p end
  end
end

-- Limits::newly_crossed: reached, not fired yet; ascending, without duplicates.
local fired, is_fired = {}, {}
local stored = redis.call('HGET', usage, 'fired')
if stored then
  for n in string.gmatch(stored, '%d+') do
    local v = tonumber(n)
    fired[#fired + 1] = v
    is_fired[v] = true
  end
end
local crossed = {}
if limited then
  for i = 9, #ARGV do
    local th = tonumber(ARGV[i])
    if th <= pct and not is_fired[th] then
      is_fired[th] = true
      crossed[#crossed + 1] = th
      fired[#fired + 1] = th
    end
  end
end
if #crossed > 0 then
  table.sort(crossed)
  table.sort(fired)
  redis.call('HSET', usage, 'fired', table.concat(fired, ','))
end

local reserved = {0, 0, 0}
for _, v in ipairs(redis.call('HVALS', amt)) do
  local i = 1
  for n in string.gmatch(v, '%d+') do
    reserved[i] = reserved[i] + tonumber(n)
    i = i + 1
  end
end
return {used[1], used[2], used[3], reserved[1], reserved[2], reserved[3], crossed}
