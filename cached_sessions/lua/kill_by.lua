-- KEYS: reference (the set of tokens whose data once held field = value)
-- ARGV: now, app, field, value (raw JSON), batch
-- Kills up to `batch` sessions whose data holds field = value now; returns {live
-- sessions killed, more left (0|1)}. The set is a hint, checked against each session:
-- a session whose value changed since (a Node writer knows nothing of the index) only
-- leaves this set.
local now, app, field = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local value, batch = ARGV[ARG + 4], tonumber(ARGV[ARG + 5])
local killed = 0
for _, token in ipairs(redis.call('SPOP', KEYS[1], batch)) do
  local key = fill(L.session, app, token)
  local s = read_session(key, now)
  if s and referenced(s.d)[field] == value then
    remove_session(app, token, s.id)
    killed = killed + 1
  elseif not s then
    local id = redis.call('HGET', key, 'id')
    if id then remove_session(app, token, id) end  -- expired: clean up now
  end
end
return {killed, redis.call('SCARD', KEYS[1]) > 0 and 1 or 0}
