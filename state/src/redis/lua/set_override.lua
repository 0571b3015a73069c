-- Set a session's limits override and register the session with its tenant.
-- KEYS: override hash, the tenant's sessions set.
-- ARGV: session, limit tokens, limit cost_micros, limit audio_ms ("" = unlimited).
redis.call('HSET', KEYS[1], 'tokens', ARGV[2], 'cost_micros', ARGV[3], 'audio_ms', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return 0
