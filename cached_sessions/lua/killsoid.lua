-- KEYS: user_tokens
-- ARGV: now, app, id, keep (a token to spare, or ''), handle (kill only the session of
--       this device handle, or '' for all)
-- Returns the number of live sessions of the id that were killed. A handle names a
-- session only among this id's own: another user's handle kills nothing.
local now, app, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local keep, handle = ARGV[ARG + 4] or '', ARGV[ARG + 5] or ''
local killed = 0
local tokens = {}
for _, token in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if token ~= keep and (handle == '' or device_handle(token) == handle) then
    tokens[#tokens + 1] = token
  end
end
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
