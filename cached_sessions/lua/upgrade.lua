-- KEYS: new session, app_sessions, app_users, expiry_index, user_tokens of id, and the
--       old session when there is one (the caller sends it only when it lives in the
--       same slot as the new one)
-- ARGV: now, app, new token, id, ip, ttl, no_resave ('1' or ''), user agent, keep ('1'
--       or ''), old token ('' none), base (the data to start from when the old session
--       lived elsewhere and was removed already, or ''), max_bytes, max_keys, then the
--       new session's own keys as merge_data's triples
-- A login in one step: the new session is created with the old one's data under its
-- own keys (with keep, and only when the old one is anonymous or of the same id: a
-- session never carries one user's data over to another), the old one is removed, and
-- both invalidations are published. Returns 0 when the new token is taken, else the
-- new session as `get` replies it.
local now, app, token, id = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3], ARGV[ARG + 4]
local ip, ttl, no_resave, ua = ARGV[ARG + 5], tonumber(ARGV[ARG + 6]), ARGV[ARG + 7] == '1', ARGV[ARG + 8]
local keep, old_token, base = ARGV[ARG + 9] == '1', ARGV[ARG + 10], ARGV[ARG + 11]
local max_bytes, max_keys = tonumber(ARGV[ARG + 12]), tonumber(ARGV[ARG + 13])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end

local old_id = nil
if old_token ~= '' then old_id = redis.call('HGET', KEYS[6], 'id') or nil end
if keep and old_id and (old_id == ANONYMOUS or old_id == id) then
  local old = read_session(KEYS[6], now)
  if old then base = old.d end
end
local merged, stored, patch = merge_data(base, ARGV, ARG + 14, max_bytes, max_keys)
if not merged then return stored end

local references = INDEXING and merged_references(stored, patch, ARGV) or {}
need_reindex(app, token, {}, references)
if old_id then need_removal(app, old_token, old_id) end
local missing = undeclared()
if missing then return missing end

-- The old one goes first: its user may be this one, whose users index entry the
-- removal would drop when it was their last session; the new one puts it back.
if old_id then
  local plan = new_plan()
  plan_removal(plan, app, old_token, old_id)
  plan_users(plan)
  apply_plan(plan)
end
local s = write_session(app, token, id, ip, ttl, merged, no_resave, ua, now, references)
publish(app, token)
return reply(s)
