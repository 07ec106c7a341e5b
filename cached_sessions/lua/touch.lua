-- KEYS: session, app_sessions, app_users, expiry_index
-- ARGV: app, token, id, reads, at (unix s of the last read served from a cache)
-- Writes reads that a cache served: r grows, the last access and scores move
-- forward. Never recreates a session that was killed or replaced, never revives one
-- that had expired before those reads, and publishes nothing: only counters change.
-- Its expiry score ignores an absolute lifetime: the session is gone at its end all
-- the same (read_session), and the wipe then removes it.
local app, token, id = ARGV[ARG + 1], ARGV[ARG + 2], ARGV[ARG + 3]
local reads, at = tonumber(ARGV[ARG + 4]), tonumber(ARGV[ARG + 5])
local f = redis.call('HMGET', KEYS[1], 'id', 'ttl', 'la', 'no_resave')
if f[1] ~= id then return 0 end
local ttl, la = tonumber(f[2]), tonumber(f[3])
if not ttl or not la or at > la + ttl then return 0 end
redis.call('HINCRBY', KEYS[1], 'r', reads)
if at <= la then return 1 end
if f[4] == '1' then
  ttl = la + ttl - at
  redis.call('HSET', KEYS[1], 'la', at, 'ttl', ttl)
else
  redis.call('HSET', KEYS[1], 'la', at)
end
redis.call('ZADD', KEYS[2], 'GT', at, fill(L.app_member, app, token, id))
if id ~= ANONYMOUS then redis.call('ZADD', KEYS[3], 'GT', at, id) end
redis.call('ZADD', KEYS[4], 'GT', at + ttl, fill(L.global_member, app, token, id))
return 1
