-- Reserve an amount against a ledger entry, atomically.
-- KEYS: usage hash, reservations (sorted set id -> expiry ms), amounts (hash id -> "t c a"),
--       the tenant's sessions set.
-- ARGV: id, tokens, cost_micros, audio_ms, ttl ms, session,
--       limit tokens, limit cost_micros, limit audio_ms ("" = unlimited).
-- Returns {admitted (1/0), dimension (1 tokens, 2 cost, 3 audio; 0 when admitted),
--          committed tokens, cost_micros, audio_ms} where committed is usage plus live
--          reservations after the call (admitted) or before it (denied).
if redis.replicate_commands then redis.replicate_commands() end
local usage, res, amt, sessions = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, session = ARGV[1], ARGV[6]
local amount = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local ttl = tonumber(ARGV[5])
local limits = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

redis.call('SADD', sessions, session)

-- Drop expired reservations.
local expired = redis.call('ZRANGEBYSCORE', res, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', res, '-inf', now)
  for _, gone in ipairs(expired) do redis.call('HDEL', amt, gone) end
end

-- Usage plus live reservations (a reservation under the same id is replaced, but still
-- counts here, as in memory).
local u = redis.call('HMGET', usage, 'tokens', 'cost_micros', 'audio_ms')
local committed = {tonumber(u[1]) or 0, tonumber(u[2]) or 0, tonumber(u[3]) or 0}
for _, v in ipairs(redis.call('HVALS', amt)) do
  local i = 1
  for n in string.gmatch(v, '%d+') do
    committed[i] = committed[i] + tonumber(n)
    i = i + 1
  end
end

for d = 1, 3 do
  if limits[d] and committed[d] + amount[d] > limits[d] then
    return {0, d, committed[1], committed[2], committed[3]}
  end
end

local expiry = now + ttl
redis.call('ZADD', res, expiry, id)
redis.call('HSET', amt, id, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
-- The reservation keys live as long as their last reservation.
local last = redis.call('ZRANGE', res, -1, -1, 'WITHSCORES')
local keep = math.max(1, tonumber(last[2]) - now)
redis.call('PEXPIRE', res, keep)
redis.call('PEXPIRE', amt, keep)
return {1, 0, committed[1] + amount[1], committed[2] + amount[2], committed[3] + amount[3]}
