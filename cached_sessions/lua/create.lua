-- KEYS: session, app_sessions, app_users, user_tokens, expiry_index
-- ARGV: now, app, token, id, ip, ttl, d (JSON or ''), no_resave ('1' or '')
local now, app, token, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3], ARGV[ARG + 4]
local ip, ttl, d, no_resave = ARGV[ARG + 5], tonumber(ARGV[ARG + 6]), ARGV[ARG + 7], ARGV[ARG + 8]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- The caller checked d against the caps: one parse, bounded by them.
local parsed = INDEXING and d ~= '' and split_object(d, nil, L.references) or nil
if parsed then need_reindex(app, token, {}, parsed.found) end
local missing = undeclared()
if missing then return missing end
redis.call('HSET', KEYS[1], 'id', id, 'r', 1, 'w', 1, 'ip', ip, 'la', now, 'ttl', ttl)
if d ~= '' then redis.call('HSET', KEYS[1], 'd', d) end
if no_resave == '1' then redis.call('HSET', KEYS[1], 'no_resave', 1) end
redis.call('ZADD', KEYS[2], now, fill(L.app_member, app, token, id))
redis.call('ZADD', KEYS[3], now, id)
redis.call('SADD', KEYS[4], token)
redis.call('ZADD', KEYS[5], now + ttl, fill(L.global_member, app, token, id))
if parsed then
  reindex(app, token, {}, parsed.found)
  write_refs(KEYS[1], d, parsed.found, false)
end
return 1
