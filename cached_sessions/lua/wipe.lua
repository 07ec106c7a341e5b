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
for _, member in ipairs(L.strict and members or {}) do
  local app, rest = split_member(member)
  local token, id = nil, nil
  if app then token, id = split_member(rest) end
  if token and not read_session(fill(L.session, app, token, id), now, true) then
    need_removal(app, token, id)
  end
end
local missing = undeclared()
if missing then return missing end
for _, member in ipairs(members) do
  local app, rest = split_member(member)
  local token, id = nil, nil
  if app then token, id = split_member(rest) end
  if not token then
    redis.call('ZREM', KEYS[1], member)
  else
    local s = read_session(fill(L.session, app, token, id), now, true)
    if not s then
      remove_session(app, token, id)
      removed = removed + 1
    elseif s.id == id then
      redis.call('ZADD', KEYS[1], s.la + s.ttl, member)
    else
      redis.call('ZREM', KEYS[1], member)
    end
  end
end
return {removed, #members == batch and 1 or 0}
