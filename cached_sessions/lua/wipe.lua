-- KEYS: expiry_index
-- ARGV: now, batch, budget
-- Removes up to `batch` sessions whose indexed expiry is before `now`, fewer when the
-- work budget says so (a removal costs the same whatever `d` holds); returns
-- {sessions removed, more left (0|1)}. The session hash is the truth: an entry whose
-- session is still alive (its index score was stale) is re-scored, not removed.
local now = tonumber(ARGV[ARG + 1])
local batch = batch_size(tonumber(ARGV[ARG + 2]), tonumber(ARGV[ARG + 3]))
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, batch)
local removed = 0
-- What to do with each member, read before anything is written (see apply_plan): the
-- members share the index, the user sets and the apps' indexes.
local steps = {}
for i, member in ipairs(members) do
  local app, rest = split_member(member)
  local token, id = nil, nil
  if app then token, id = split_member(rest) end
  local step = {member = member, app = app, token = token, id = id}
  if token then
    step.s = read_session(fill(L.session, app, token, id), now, true)
    if not step.s then need_removal(app, token, id) end
  end
  steps[i] = step
end
local missing = undeclared()
if missing then return missing end
local plan = new_plan()
for _, step in ipairs(steps) do
  local s = step.s
  if not step.token then
    plan_remove(plan, 'ZREM', KEYS[1], step.member)
  elseif not s then
    plan_removal(plan, step.app, step.token, step.id)
    removed = removed + 1
  elseif s.id == step.id then
    local score = s.la + s.ttl
    if s.ends then score = math.min(score, now + s.ends) end
    plan_add(plan, KEYS[1], score, step.member)
  else
    plan_remove(plan, 'ZREM', KEYS[1], step.member)
  end
end
plan_users(plan)
apply_plan(plan)
return {removed, #members == batch and 1 or 0}
