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
-- All removals are planned before any is written (see apply_plan). Every member read
-- leaves KEYS[1] (a session's member there is the member itself), so what is left is
-- known before writing; when nothing is, the users index goes whole.
local left = redis.call('ZCARD', KEYS[1]) - #members
local plan = new_plan()
for _, member in ipairs(members) do
  local token, id = split_member(member)
  if token then
    local key = fill(L.session, app, token, id)
    -- A token listed twice is killed once.
    if not planned_gone(plan, app, token) and read_session(key, now, true) then
      killed = killed + 1
    end
    plan_removal(plan, app, token, id)
  end
  plan_remove(plan, 'ZREM', KEYS[1], member)
end
plan_users(plan)
if left <= 0 then plan_delete(plan, KEYS[2]) end
apply_plan(plan)
return {killed, left > 0 and 1 or 0}
