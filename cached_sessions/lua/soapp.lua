-- KEYS: app_sessions
-- ARGV: now, app, delta_time
-- Sessions of users active within delta_time, newest first (anonymous sessions are
-- no user's). Read only.
local now, app, delta = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], tonumber(ARGV[ARG + 3])
local out = {}
for _, member in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', now - delta)) do
  local token = split_member(member)
  if token then
    local s = read_session(fill(L.session, app, token, ''), now)
    if s and s.id ~= ANONYMOUS then out[#out + 1] = reply(s) end
  end
end
return out
