-- KEYS: reference (the set of tokens whose data once held field = value)
-- ARGV: now, app, field, value (raw JSON), max_keys, max_bytes, batch, budget
-- Kills sessions whose data holds field = value now, up to `batch` of them and within
-- the work budget; returns {live sessions killed, more left (0|1)}. The set is a hint,
-- checked against each session: a session whose value changed since (a Node writer
-- knows nothing of the index) only leaves this set. A live session whose `d` cannot be
-- read within the caps is killed: a kill by reference is a revocation, and when in
-- doubt a revocation ends the session rather than keep it.
local now, app, field = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local value, max_keys, max_bytes = ARGV[ARG + 4], tonumber(ARGV[ARG + 5]), tonumber(ARGV[ARG + 6])
local batch, budget = tonumber(ARGV[ARG + 7]), tonumber(ARGV[ARG + 8])
local killed, spent, seen = 0, 0, 0

-- What to do with the live session at `key`: 'kill', 'keep', or 'later' when checking
-- it would overrun the budget (it goes back into the set for a later call; the first
-- session of a call is always checked, so every call makes progress). `refs` answers
-- when its fingerprint matches `d` (a hash, in C); otherwise `d` is parsed, once,
-- within the caps.
local function verdict(key)
  local fingerprint, indexed = read_refs(key)
  local d = redis.call('HGET', key, 'd') or ''
  spent = spent + #d
  local current
  if fingerprint and redis.sha1hex(d) == fingerprint then
    current = indexed[field]
  elseif d ~= '' then
    if #d > max_bytes then return 'kill' end
    local work = parse_work(d, max_keys)
    if seen > 1 and spent + work > budget then return 'later' end
    spent = spent + work
    local parsed = split_object(d, max_keys, {[field] = true})
    if not parsed then return 'kill' end
    current = parsed.found[field]
  end
  return current == value and 'kill' or 'keep'
end

-- First decide, writing nothing: each candidate's verdict, and the keys the removals
-- will write (see `need`); then apply.
local plan = {}
for _, token in ipairs(redis.call('SRANDMEMBER', KEYS[1], batch)) do
  if spent >= budget then break end
  seen = seen + 1
  spent = spent + SESSION_WORK
  local key = fill(L.session, app, token)
  local s = read_session(key, now, true)
  local action = s and verdict(key)
  if action == 'later' then break end  -- stays in the set for a later call
  local id = s and s.id or redis.call('HGET', key, 'id')  -- expired: clean up now
  if id and (action == 'kill' or not s) then need_removal(app, token, id) end
  plan[#plan + 1] = {token = token, id = id, action = action or 'expired'}
end
local missing = undeclared()
if missing then return missing end
-- Then plan every removal before writing any (see apply_plan): the reference set, the
-- user sets and the indexes are shared. Each planned token is a member of KEYS[1],
-- and no other leaves it, so what is left there is known before writing.
local left = redis.call('SCARD', KEYS[1]) - #plan
local removals = new_plan()
for _, step in ipairs(plan) do
  plan_remove(removals, 'SREM', KEYS[1], step.token)
  if step.action == 'kill' then
    plan_removal(removals, app, step.token, step.id)
    killed = killed + 1
  elseif step.action == 'expired' and step.id then
    plan_removal(removals, app, step.token, step.id)
  end
end
plan_users(removals)
apply_plan(removals)
return {killed, left > 0 and 1 or 0}
