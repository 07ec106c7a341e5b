-- KEYS: session
-- ARGV: now, app, token
-- Returns 1 when a live session was killed; an expired one is cleaned up and counts 0.
local now, app, token = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return 0 end
need_removal(app, token, id)
local missing = undeclared()
if missing then return missing end
local live = read_session(KEYS[1], now, true) and 1 or 0
local plan = new_plan()
plan_removal(plan, app, token, id)
plan_users(plan)
apply_plan(plan)
return live
