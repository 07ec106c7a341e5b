-- KEYS: reference (the set of tokens whose data once held field = value)
-- ARGV: now, app, field, value (raw JSON), max_keys, max_bytes, batch, budget
-- Kills sessions whose data holds field = value now, up to `batch` of them and until
-- the work budget is spent; returns {live sessions killed, more left (0|1)}. The set is
-- a hint, checked against each session: a session whose value changed since (a Node
-- writer knows nothing of the index) only leaves this set. A live session whose `d`
-- cannot be read within the caps is killed: a kill by reference is a revocation, and
-- when in doubt a revocation ends the session rather than keep it.
local now, app, field = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local value, max_keys, max_bytes = ARGV[ARG + 4], tonumber(ARGV[ARG + 5]), tonumber(ARGV[ARG + 6])
local batch, budget = tonumber(ARGV[ARG + 7]), tonumber(ARGV[ARG + 8])

-- The raw value of `field` in the session's `d` (nil when absent), whether `d` could be
-- read, and the work spent. `refs` answers when its fingerprint matches `d` (a hash in
-- C); otherwise `d` is parsed, once, within the caps.
local function current_value(key)
  local fingerprint, indexed = read_refs(key)
  local d = redis.call('HGET', key, 'd') or ''
  if fingerprint and redis.sha1hex(d) == fingerprint then return indexed[field], true, #d end
  if d == '' then return nil, true, 0 end
  if #d > max_bytes then return nil, false, #d end
  local parsed = split_object(d, max_keys, {[field] = true})
  if not parsed then return nil, false, #d + PARSE_WORK end
  return parsed.found[field], true, #d + PARSE_WORK
end

local killed, spent, seen = 0, 0, 0
while seen < batch and spent < budget do
  local token = redis.call('SPOP', KEYS[1])
  if not token then break end
  seen = seen + 1
  spent = spent + SESSION_WORK
  local key = fill(L.session, app, token)
  local s = read_session(key, now, true)
  if s then
    local current, readable, work = current_value(key)
    spent = spent + work
    if current == value or not readable then
      remove_session(app, token, s.id)
      killed = killed + 1
    end
  else
    local id = redis.call('HGET', key, 'id')
    if id then remove_session(app, token, id) end  -- expired: clean up now
  end
end
return {killed, redis.call('SCARD', KEYS[1]) > 0 and 1 or 0}
