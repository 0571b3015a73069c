-- A ledger entry now, expired reservations dropped.
-- KEYS: usage hash, reservations sorted set, amounts hash.
-- Returns {usage tokens, cost_micros, audio_ms, reserved tokens, cost_micros, audio_ms,
--          live reservations, fired thresholds ("50,85" or "")}.
if redis.replicate_commands then redis.replicate_commands() end
local usage, res, amt = KEYS[1], KEYS[2], KEYS[3]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local expired = redis.call('ZRANGEBYSCORE', res, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
  for _, gone in ipairs(expired) do redis.call('HDEL', amt, gone) end
end

local u = redis.call('HMGET', usage, 'tokens', 'cost_micros', 'audio_ms', 'fired')
local reserved, count = {0, 0, 0}, 0
for _, v in ipairs(redis.call('HVALS', amt)) do
  count = count + 1
  local i = 1
  for n in string.gmatch(v, '%d+') do
    reserved[i] = reserved[i] + tonumber(n)
    i = i + 1
  end
end
return {tonumber(u[1]) or 0, tonumber(u[2]) or 0, tonumber(u[3]) or 0,
        reserved[1], reserved[2], reserved[3], count, u[4] or ''}
