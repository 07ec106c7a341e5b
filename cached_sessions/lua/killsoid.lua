-- KEYS: user_tokens
-- ARGV: now, app, id
-- Returns the number of live sessions of the id that were killed.
local now, app, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local killed = 0
local tokens = redis.call('SMEMBERS', KEYS[1])
for _, token in ipairs(tokens) do need_removal(app, token, id) end
local missing = undeclared()
if missing then return missing end
-- Every removal is planned before any is written (see apply_plan): they share the
-- user's token set and the indexes.
local plan = new_plan()
for _, token in ipairs(tokens) do
  if read_session(fill(L.session, app, token, id), now, true) then killed = killed + 1 end
  plan_removal(plan, app, token, id)
end
plan_users(plan)
apply_plan(plan)
return killed
