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

-- Whether the live session at `key` must die, or nil when checking it would overrun
-- the budget (it is left for the next call). `refs` answers when its fingerprint
-- matches `d` (a hash, in C); otherwise `d` is parsed, once, within the caps.
local function doomed(key)
  local fingerprint, indexed = read_refs(key)
  local d = redis.call('HGET', key, 'd') or ''
  spent = spent + #d
  if fingerprint and redis.sha1hex(d) == fingerprint then return indexed[field] == value end
  if d == '' then return false end
  if #d > max_bytes then return true end
  local work = parse_work(#d, max_keys)
  if seen > 1 and spent + work > budget then return nil end
  spent = spent + work
  local parsed = split_object(d, max_keys, {[field] = true})
  return not parsed or parsed.found[field] == value
end

while seen < batch and spent < budget do
  local token = redis.call('SPOP', KEYS[1])
  if not token then break end
  seen = seen + 1
  spent = spent + SESSION_WORK
  local key = fill(L.session, app, token)
  local s = read_session(key, now, true)
  if s then
    local verdict = doomed(key)
    if verdict == nil then
      redis.call('SADD', KEYS[1], token)
      break
    end
    if verdict then
      remove_session(app, token, s.id)
      killed = killed + 1
    end
  else
    local id = redis.call('HGET', key, 'id')
    if id then remove_session(app, token, id) end  -- expired: clean up now
  end
end
return {killed, redis.call('SCARD', KEYS[1]) > 0 and 1 or 0}
