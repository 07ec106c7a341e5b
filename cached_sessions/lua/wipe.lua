-- KEYS: expiry_index
-- ARGV: now, batch, budget
-- Removes up to `batch` sessions whose indexed expiry is before `now`, fewer when the
-- work budget says so; returns {sessions removed, more left (0|1)}. The session hash
-- is the truth: an entry whose session is still alive (its index score was stale) is
-- re-scored, not removed.
--
-- Like apply_plan (see _lib.lua), it reads everything first, then writes each key
-- once, so a slot on the move never sees half a wipe. It does not use the general plan:
-- a wipe removes many sessions that share few keys, and one pass that groups them per
-- key, with the lean reads and key building below, takes 40% of the server
-- instructions per session that the general plan took. Each removal reads only the
-- fields its expiry needs, and whether a user keeps a token comes from the user set's
-- size read first and what its one SREM removed (no per-token SISMEMBER).
local now = tonumber(ARGV[ARG + 1])
-- What one removal costs, in the work budget's unit (bytes of `d` hashed, about 2 ns
-- each): about 20 µs of server time, more with each indexed field it unindexes (see
-- SESSION_WORK). A per-key member list must fit one command (CHUNK arguments).
local WIPE_WORK = 10000 + 4096 * L.reference_count
local batch = math.max(1, math.min(
  tonumber(ARGV[ARG + 2]), math.floor(tonumber(ARGV[ARG + 3]) / WIPE_WORK), CHUNK))
local index = KEYS[1]
local members = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. now, 'LIMIT', 0, batch)
local FIELDS = LIFETIME > 0 and {'id', 'ttl', 'la', 'ct'} or {'id', 'ttl', 'la'}

-- fill() runs a pattern substitution per call, about a third of a removal's server
-- time: the keys built per session are a prefix per app with the token or the id
-- appended, as every layout's templates (keys.py) allow; checked here, so a layout
-- that did not would fail loudly, never write a wrong key.
local function head(template, last)
  local cut = #template - #last
  local start = string.sub(template, 1, cut)
  assert(string.sub(template, cut + 1) == last and not string.find(start, '<token>', 1, true)
    and not string.find(start, '<id>', 1, true), 'wipe: a template the wipe cannot prefix')
  return start
end
local SESSION, USER_TOKENS, MESSAGE = head(L.session, '<token>'), head(L.user_tokens, '<id>'),
  head(L.message, '<token>')
assert(L.app_member == '<token>:<id>', 'wipe: a template the wipe cannot prefix')

-- Members to remove per key (SREM or ZREM), in first-seen order: one command per key.
local groups, commands, order = {}, {}, {}
local function group(command, key, member)
  local list = groups[key]
  if not list then
    list = {}
    groups[key], commands[key] = list, command
    order[#order + 1] = key
    need(key)
  end
  list[#list + 1] = member
end

-- Per app, its two index keys and the prefixes above; per user set, {app, id, size
-- before}.
local apps, users, user_order = {}, {}, {}
local dels, messages, rescores, gone = {}, {}, {}, {}
local removed = 0

local function app_keys(app)
  local keys = apps[app]
  if not keys then
    keys = {
      sessions = fill(L.app_sessions, app), users = fill(L.app_users, app),
      session = fill(SESSION, app), user_tokens = fill(USER_TOKENS, app),
      message = fill(MESSAGE, app),
    }
    apps[app] = keys
    need(keys.users)  -- written when a user's last token goes
  end
  return keys
end

-- nil when the session at `key` is gone (absent or expired); else its id and the
-- score the expiry index should hold for it.
local function expiry(key)
  local f = redis.call('HMGET', key, unpack(FIELDS))
  if not f[1] then return nil end
  local ttl, la = tonumber(f[2]), tonumber(f[3])
  if not ttl or not la or now - la > ttl then return nil end
  local score = la + ttl
  if LIFETIME > 0 then
    local ct = tonumber(f[4])
    if ct then
      if ct + LIFETIME < now then return nil end
      score = math.min(score, ct + LIFETIME)
    end
  end
  return f[1], score
end

local function plan_wipe(app, token, id, key, member)
  if INDEXING and not gone[key] then
    local _, indexed = read_refs(key)
    for field, raw in pairs(indexed) do group('SREM', fill(L.reference, app, token, '', field, raw), token) end
  end
  if not gone[key] then
    gone[key] = true
    dels[#dels + 1] = key
    need(key)
  end
  local keys = app_keys(app)
  group('ZREM', keys.sessions, token .. ':' .. id)
  group('ZREM', index, member)
  messages[#messages + 1] = keys.message .. token
  removed = removed + 1
  if id == ANONYMOUS then
    -- In no user's set; a read by Node's redis-sessions may have listed it as a user.
    group('ZREM', keys.users, id)
    return
  end
  local tokens = keys.user_tokens .. id
  if not users[tokens] then
    users[tokens] = {app = app, id = id, size = redis.call('SCARD', tokens)}
    user_order[#user_order + 1] = tokens
  end
  group('SREM', tokens, token)
end

for _, member in ipairs(members) do
  local app, token, id = string.match(member, '^([^:]*):([^:]*):(.*)$')
  if not app then
    group('ZREM', index, member)
  else
    local key = app_keys(app).session .. token
    local stored, score = expiry(key)
    if not stored then
      plan_wipe(app, token, id, key, member)
    elseif stored == id then
      rescores[#rescores + 1] = score
      rescores[#rescores + 1] = member
    else
      group('ZREM', index, member)
    end
  end
end
local missing = undeclared()
if missing then return missing end

-- Writes: ZADD (never empties a key) first, then one DEL, then one command per key.
if #rescores > 0 then redis.call('ZADD', index, unpack(rescores)) end
if #dels > 0 then redis.call('DEL', unpack(dels)) end
for _, tokens in ipairs(user_order) do
  local user = users[tokens]
  local left = user.size - redis.call('SREM', tokens, unpack(groups[tokens]))
  groups[tokens] = nil
  if left <= 0 then group('ZREM', apps[user.app].users, user.id) end
end
for _, key in ipairs(order) do
  local list = groups[key]
  if list then
    redis.call(commands[key], key, unpack(list))
  end
end
local channel = fill(L.channel)
for _, message in ipairs(messages) do redis.call(L.publish, channel, message) end
return {removed, #members == batch and 1 or 0}
