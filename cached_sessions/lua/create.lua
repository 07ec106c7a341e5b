-- KEYS: session, app_sessions, app_users, user_tokens, expiry_index; an anonymous
--       session declares no user_tokens (it is in no user's set)
-- ARGV: now, app, token, id, ip, ttl, d (JSON or ''), no_resave ('1' or ''), user agent
--       (optional)
local now, app, token, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3], ARGV[ARG + 4]
local ip, ttl, d, no_resave = ARGV[ARG + 5], tonumber(ARGV[ARG + 6]), ARGV[ARG + 7], ARGV[ARG + 8]
local ua = ARGV[ARG + 9] or ''
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- The caller checked d against the caps: one parse, bounded by them.
local parsed = INDEXING and d ~= '' and split_object(d, nil, L.references) or nil
local references = parsed and parsed.found or {}
need_reindex(app, token, {}, references)
local missing = undeclared()
if missing then return missing end
write_session(app, token, id, ip, ttl, d, no_resave == '1', ua, now, references)
return 1
