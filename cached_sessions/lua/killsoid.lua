-- KEYS: user_tokens
-- ARGV: now, app, id
-- Returns the number of live sessions of the id that were killed.
local now, app, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local killed = 0
local tokens = redis.call('SMEMBERS', KEYS[1])
for _, token in ipairs(tokens) do need_removal(app, token, id) end
local missing = undeclared()
if missing then return missing end
for _, token in ipairs(tokens) do
  if read_session(fill(L.session, app, token, id), now, true) then killed = killed + 1 end
  remove_session(app, token, id)
end
return killed
