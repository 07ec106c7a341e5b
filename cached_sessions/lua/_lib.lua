-- Shared prelude of every script; scripts.py puts it after a header that defines
-- `L`, the key templates of the layout (keys.py) and the set of data keys indexed as
-- references, written into the script text so no call has to send them. An
-- operation's own arguments are ARGV. Every check runs before the first write,
-- because Redis does not roll back a script that fails halfway.
--
-- The prelude reads no KEYS nor ARGV of its own: in a function library (FUNCTION
-- LOAD) it runs once, at load, and each call gets its keys and arguments as
-- parameters. What one call sets up, `begin` sets at its start; nothing else in
-- here changes after load. Code outside the functions may use no global (not even
-- `pairs` or `string`): a library's load sees only `redis`.
local INDEXING = L.reference_count > 0
local ARG = 0
-- The hash tag of the first key (cluster layout; '' otherwise): every key a script
-- builds carries it, so it lives in the slot of the keys the call declared.
local TAG = ''

local function fill(template, app, token, id, field, value)
  return (string.gsub(template, '<(%a+)>', function(name)
    if name == 'tag' then return TAG end
    if name == 'app' then return app end
    if name == 'token' then return token end
    if name == 'id' then return id end
    if name == 'field' then return field end
    if name == 'value' then return value end
  end))
end

-- The reference values a session is indexed under live in its hash field `refs`, a
-- JSON array: the SHA-1 of the `d` they were read from, then field and raw value
-- pairs. Reading them parses nothing of `d`. A writer that knows nothing of the index
-- (Node's redis-sessions) rewrites `d` and leaves `refs`: then `refs` still names the
-- sets the token is in (what a removal must undo), and the fingerprint no longer
-- matches `d` (so a check of the current value parses `d` instead).
local function read_refs(key)
  local raw = redis.call('HGET', key, 'refs')
  local values = {}
  if not raw then return nil, values end
  local ok, list = pcall(cjson.decode, raw)
  if not ok or type(list) ~= 'table' then return nil, values end
  for i = 2, #list - 1, 2 do values[list[i]] = list[i + 1] end
  return list[1], values
end

-- Stores the values read from `d` (`stored`: whether the session holds some already).
local function write_refs(key, d, values, stored)
  local list = {''}
  for field, raw in pairs(values) do
    list[#list + 1] = field
    list[#list + 1] = raw
  end
  if #list == 1 then
    if stored then redis.call('HDEL', key, 'refs') end
    return
  end
  list[1] = redis.sha1hex(d)
  redis.call('HSET', key, 'refs', cjson.encode(list))
end

-- Moves `token` between the reference sets of its old and new field values.
local function reindex(app, token, old, new)
  for field, raw in pairs(old) do
    if new[field] ~= raw then redis.call('SREM', fill(L.reference, app, token, '', field, raw), token) end
  end
  for field, raw in pairs(new) do
    if old[field] ~= raw then redis.call('SADD', fill(L.reference, app, token, '', field, raw), token) end
  end
end

-- On a cluster (L.strict) a script writes only keys it declared: while a slot
-- migrates, the server checks the declared keys before the script runs (all here, or
-- the caller is sent on), but a key built inside the script could sit on the other
-- side of the move and be written on the wrong node. So a script first lists every
-- key it will write (`need`); if some were not declared, it writes nothing and names
-- them (`undeclared`), and the caller sends it again with them. Off a cluster both are
-- free: one server holds everything.
local DECLARED, WANTED, WANTED_SET = {}, {}, {}

-- The start of every call, before its body: this call's tag and declared keys.
local function begin(keys)
  TAG = string.match(keys[1] or '', '{([^}]*)}') or ''
  if not L.strict then return end
  DECLARED, WANTED, WANTED_SET = {}, {}, {}
  for _, name in ipairs(keys) do DECLARED[name] = true end
end

local function need(name)
  if L.strict and not DECLARED[name] and not WANTED_SET[name] then
    WANTED_SET[name] = true
    WANTED[#WANTED + 1] = name
  end
end

-- The reply that names the keys still to declare, or nil when the script may write.
local function undeclared()
  if #WANTED == 0 then return nil end
  return redis.error_reply('UNDECLARED ' .. cjson.encode(WANTED))
end

-- The keys `reindex` would write.
local function need_reindex(app, token, old, new)
  if not L.strict then return end
  for field, raw in pairs(old) do
    if new[field] ~= raw then need(fill(L.reference, app, token, '', field, raw)) end
  end
  for field, raw in pairs(new) do
    if old[field] ~= raw then need(fill(L.reference, app, token, '', field, raw)) end
  end
end

-- Members are split from the left: tokens and app names never hold ':', ids may.
local function split_member(member)
  local at = string.find(member, ':', 1, true)
  if not at then return nil end
  return string.sub(member, 1, at - 1), string.sub(member, at + 1)
end

-- A session that belongs to no user (a visitor's data before login) carries this id:
-- it is never in a user's token set nor in the users index, so soid, activity and the
-- per-user kills never see it, while Node's redis-sessions still reads it.
local ANONYMOUS = L.anonymous
-- Seconds after its creation (`ct`) when a session ends however active it is; 0: never.
local LIFETIME = L.max_lifetime

-- The session stored at `key`, or nil when it is absent or expired (logically gone,
-- whatever is still in Redis). `s.ttl` is the stored ttl; `s.left` is what a caller sees;
-- `s.ends` the seconds left of its absolute lifetime (false: none). `without_data`
-- leaves `d` in Redis (s.d is nil): removals need only the state, and copying up to
-- the data cap into Lua for nothing would cost them as much as a read. `ct` is read
-- only when a lifetime is set, so a read costs nothing more without one.
local SESSION_FIELDS = {'id', 'r', 'w', 'ttl', 'la', 'ip', 'no_resave', 'd'}
local STATE_FIELDS = {'id', 'r', 'w', 'ttl', 'la', 'ip', 'no_resave'}
if LIFETIME > 0 then
  SESSION_FIELDS[#SESSION_FIELDS + 1] = 'ct'
  STATE_FIELDS[#STATE_FIELDS + 1] = 'ct'
end

local function read_session(key, now, without_data)
  local fields = without_data and STATE_FIELDS or SESSION_FIELDS
  local f = redis.call('HMGET', key, unpack(fields))
  if not f[1] then return nil end
  local ttl, la = tonumber(f[4]), tonumber(f[5])
  if not ttl or not la then return nil end
  local idle = now - la
  if idle > ttl then return nil end
  local ends = false
  if LIFETIME > 0 then
    local ct = tonumber(f[#fields])
    if ct then
      ends = ct + LIFETIME - now
      if ends < 0 then return nil end
    end
  end
  local s = {
    key = key, id = f[1], r = tonumber(f[2]) or 0, w = tonumber(f[3]) or 0, ttl = ttl,
    la = la, idle = idle, ip = f[6] or '', no_resave = f[7] == '1',
    d = not without_data and (f[8] or '') or nil, ends = ends,
  }
  s.left = s.no_resave and (ttl - idle) or ttl
  return s
end

local function reply(s)
  return {
    s.id, s.r, s.w, s.left, s.idle, s.ip, s.d ~= '' and s.d or false, s.no_resave and 1 or 0,
    s.ends,
  }
end

-- When the expiry index should see the session end, for an access at `now`.
local function expiry_score(s, now)
  local score = now + s.left
  if s.ends and s.ends < s.left then score = now + s.ends end
  return score
end

-- Tells every cache to drop the session: PUBLISH, or SPUBLISH on a cluster's bucket.
local function publish(app, token)
  redis.call(L.publish, fill(L.channel), fill(L.message, app, token))
end

-- Records an access at `now`. A no_resave session keeps its expiry: its stored ttl
-- shrinks by the time since the last access, as redis-sessions does. `field` and
-- `value`, when given, go into the same HSET (one command less per read).
local function touch(app, token, s, now, field, value)
  local fields = {'la', now}
  if s.no_resave then
    fields[#fields + 1] = 'ttl'
    fields[#fields + 1] = s.left
  end
  if field then
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  end
  redis.call('HSET', s.key, unpack(fields))
  redis.call('ZADD', fill(L.app_sessions, app), now, fill(L.app_member, app, token, s.id))
  if s.id ~= ANONYMOUS then redis.call('ZADD', fill(L.app_users, app), now, s.id) end
  redis.call('ZADD', fill(L.expiry_index), expiry_score(s, now), fill(L.global_member, app, token, s.id))
end

-- The keys `touch` writes besides the session.
local function need_touch(app)
  if not L.strict then return end
  need(fill(L.app_sessions, app))
  need(fill(L.app_users, app))
  need(fill(L.expiry_index))
end

-- The keys `remove_session` would write.
local function need_removal(app, token, id)
  if not L.strict then return end
  local key = fill(L.session, app, token, id)
  need(key)
  need_touch(app)
  if id ~= ANONYMOUS then need(fill(L.user_tokens, app, token, id)) end
  if INDEXING then
    local _, indexed = read_refs(key)
    need_reindex(app, token, indexed, {})
  end
end

-- Removals are planned, then applied. While a slot migrates, the server checks every
-- command of a script against the keys its node holds, and a set or sorted set that a
-- command emptied is deleted: a later command on it fails the script halfway, and
-- Redis keeps what was already written. So a plan reads all it needs first (reference
-- values, what each user's token set holds), then writes each key once: one DEL for
-- the sessions, one SREM or ZREM per set with all its members (ZADD, which never
-- empties a key, before them). Whether a user leaves the users index is decided from
-- counts read before any write. Publishing touches no key: it comes last.
local function new_plan()
  return {
    order = {}, command = {}, members = {}, seen = {},  -- removals of members, per key
    deleted = {}, dels = {},                             -- keys to delete
    adds = {},                                           -- ZADD: {key, score, member}
    users = {}, user_order = {},                         -- per user token set
    messages = {},                                       -- invalidations to publish
  }
end

-- Plans the removal of `member` from the set (SREM) or sorted set (ZREM) `key`.
local function plan_remove(plan, command, key, member)
  local members = plan.members[key]
  if not members then
    members = {}
    plan.members[key], plan.seen[key], plan.command[key] = members, {}, command
    plan.order[#plan.order + 1] = key
  end
  if not plan.seen[key][member] then
    plan.seen[key][member] = true
    members[#members + 1] = member
  end
end

-- Plans the deletion of `key`; any removal of its members is then left out.
local function plan_delete(plan, key)
  if not plan.deleted[key] then
    plan.deleted[key] = true
    plan.dels[#plan.dels + 1] = key
  end
end

local function plan_add(plan, key, score, member)
  plan.adds[#plan.adds + 1] = {key, score, member}
end

-- Whether the plan deletes the session of `token` already (a batch may name it twice).
local function planned_gone(plan, app, token)
  return plan.deleted[fill(L.session, app, token, '')] == true
end

-- Plans the removal of one session from every structure, and the message that tells
-- every cache to drop it. Reads only; its cost does not depend on the size of `d`.
local function plan_removal(plan, app, token, id)
  local key = fill(L.session, app, token, id)
  if INDEXING and not plan.deleted[key] then
    local _, indexed = read_refs(key)
    for field, raw in pairs(indexed) do
      plan_remove(plan, 'SREM', fill(L.reference, app, token, '', field, raw), token)
    end
  end
  plan_delete(plan, key)
  plan_remove(plan, 'ZREM', fill(L.app_sessions, app), fill(L.app_member, app, token, id))
  plan_remove(plan, 'ZREM', fill(L.expiry_index), fill(L.global_member, app, token, id))
  plan.messages[#plan.messages + 1] = fill(L.message, app, token)
  if id == ANONYMOUS then
    -- In no user's set. A read by Node's redis-sessions puts the id in the users index
    -- (it knows nothing of anonymous sessions): it leaves with the session.
    plan_remove(plan, 'ZREM', fill(L.app_users, app), id)
    return
  end
  local tokens = fill(L.user_tokens, app, token, id)
  local user = plan.users[tokens]
  if not user then
    user = {app = app, id = id, left = redis.call('SCARD', tokens), removed = {}}
    plan.users[tokens] = user
    plan.user_order[#plan.user_order + 1] = tokens
  end
  if not user.removed[token] then
    user.removed[token] = true
    if redis.call('SISMEMBER', tokens, token) == 1 then user.left = user.left - 1 end
  end
  plan_remove(plan, 'SREM', tokens, token)
end

-- Plans what follows from the removals: a user none of whose tokens remain leaves the
-- users index. Call once, after the last plan_removal and before plan_delete of an
-- index that replaces these removals.
local function plan_users(plan)
  for _, tokens in ipairs(plan.user_order) do
    local user = plan.users[tokens]
    if user.left <= 0 then plan_remove(plan, 'ZREM', fill(L.app_users, user.app), user.id) end
  end
end

-- Arguments per command: Lua's stack holds a few thousand values.
local CHUNK = 1000

-- Writes the plan. A key with more members than one command takes is written in
-- chunks, and its size is read first: once a chunk has emptied it (its other
-- members were not there), the next chunk would touch a deleted key, so none is sent.
local function apply_plan(plan)
  local size = {}
  for _, key in ipairs(plan.order) do
    if #plan.members[key] > CHUNK and not plan.deleted[key] then
      size[key] = redis.call(plan.command[key] == 'SREM' and 'SCARD' or 'ZCARD', key)
    end
  end
  for _, add in ipairs(plan.adds) do redis.call('ZADD', add[1], add[2], add[3]) end
  for first = 1, #plan.dels, CHUNK do
    redis.call('DEL', unpack(plan.dels, first, math.min(first + CHUNK - 1, #plan.dels)))
  end
  for _, key in ipairs(plan.order) do
    local members = plan.members[key]
    if not plan.deleted[key] then
      for first = 1, #members, CHUNK do
        local last = math.min(first + CHUNK - 1, #members)
        local removed = redis.call(plan.command[key], key, unpack(members, first, last))
        if size[key] then
          size[key] = size[key] - removed
          if size[key] <= 0 then break end
        end
      end
    end
  end
  for _, message in ipairs(plan.messages) do
    redis.call(L.publish, fill(L.channel), message)
  end
end

-- Batched operations (kill_by, killall, wipe) stop before they spend more than a work
-- budget (an ARGV), counted in bytes of `d` hashed. The other costs are counted in the
-- same unit, from measures on Valkey 9 and Redis 7 (`python -m benchmarks.script_cost`)
-- where hashing takes about 2 ns a byte: a removal (up to 50 µs, more with each indexed
-- field it unindexes), and a parse of `d` (up to 12 ns a byte when it is dense with
-- escapes, and 2 µs a member).
local SESSION_WORK = 24576 + 4096 * L.reference_count

local function batch_size(batch, budget)
  return math.max(1, math.min(batch, math.floor(budget / SESSION_WORK)))
end
