-- KEYS: session
-- ARGV: now, app, token, with_data ('1' or '')
-- Returns 1 when a live session was killed; an expired one is cleaned up and counts 0.
-- With with_data: {1 or 0, id or false, d or false}, what the session held as it died
-- (a login on a cluster carries it over to the new session's slot).
local now, app, token = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local with_data = ARGV[ARG + 4] == '1'
local id = redis.call('HGET', KEYS[1], 'id')
if not id then
  if with_data then return {0, false, false} end
  return 0
end
need_removal(app, token, id)
local missing = undeclared()
if missing then return missing end
local s = read_session(KEYS[1], now, not with_data)
local plan = new_plan()
plan_removal(plan, app, token, id)
plan_users(plan)
apply_plan(plan)
if with_data then return {s and 1 or 0, id, s and s.d ~= '' and s.d or false} end
return s and 1 or 0
