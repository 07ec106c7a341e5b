-- KEYS: user_tokens
-- ARGV: now, app, id
-- Read only: listing sessions is not activity.
local now, app, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local out = {}
for _, token in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = read_session(fill(L.session, app, token, id), now)
  if s and s.id == id then out[#out + 1] = reply(s) end
end
return out
