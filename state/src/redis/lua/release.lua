-- Remove one reservation; usage is unchanged.
-- KEYS: reservations sorted set, amounts hash. ARGV: id.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 0
