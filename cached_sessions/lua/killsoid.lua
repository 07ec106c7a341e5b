-- KEYS: user_tokens
-- ARGV: now, app, id
-- Returns the number of live sessions of the id that were killed.
local now, app, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local killed = 0
for _, token in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if read_session(fill(L.session, app, token, id), now, true) then killed = killed + 1 end
  remove_session(app, token, id)
end
return killed
