-- KEYS: app_sessions, app_users
-- ARGV: now, app, batch, budget
-- Kills up to `batch` sessions of the app, fewer when the work budget says so (a removal
-- costs the same whatever `d` holds); returns {live sessions killed, more left (0|1)}.
local now, app = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2]
local limit = batch_size(tonumber(ARGV[ARG + 3]), tonumber(ARGV[ARG + 4]))
local members = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
local killed = 0
for _, member in ipairs(L.strict and members or {}) do
  local token, id = split_member(member)
  if token then need_removal(app, token, id) end
end
local missing = undeclared()
if missing then return missing end
for _, member in ipairs(members) do
  local token, id = split_member(member)
  if token then
    if read_session(fill(L.session, app, token, id), now, true) then killed = killed + 1 end
    remove_session(app, token, id)
  end
  redis.call('ZREM', KEYS[1], member)
end
if redis.call('ZCARD', KEYS[1]) > 0 then return {killed, 1} end
redis.call('DEL', KEYS[2])
return {killed, 0}
