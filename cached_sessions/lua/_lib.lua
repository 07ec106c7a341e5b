-- Shared prelude of every script; scripts.py puts it after a header that defines
-- `L`, the key templates of the layout (keys.py) and the set of data keys indexed as
-- references, written into the script text so no call has to send them. An
-- operation's own arguments are ARGV. Every check runs before the first write,
-- because Redis does not roll back a script that fails halfway.
local INDEXING = next(L.references) ~= nil
local ARG = 0

local function fill(template, app, token, id, field, value)
  return (string.gsub(template, '<(%a+)>', function(name)
    if name == 'app' then return app end
    if name == 'token' then return token end
    if name == 'id' then return id end
    if name == 'field' then return field end
    if name == 'value' then return value end
  end))
end

-- Index of the closing quote of the JSON string that opens at `from`.
local function string_end(text, from)
  local at = from + 1
  while true do
    local hit = string.find(text, '["\\]', at)
    if not hit then return nil end
    if string.sub(text, hit, hit) == '"' then return hit end
    at = hit + 2
  end
end

-- Splits a flat JSON object (scalar values only) into decoded keys and raw texts, or
-- returns nil. Raw texts let values pass through untouched: cjson would re-encode
-- numbers with 14 significant digits and change them.
local function split_object(text)
  local keys, raw_keys, raw_values = {}, {}, {}
  local at = string.find(text, '%S')
  if not at or string.sub(text, at, at) ~= '{' then return nil end
  at = string.find(text, '%S', at + 1)
  if at and string.sub(text, at, at) == '}' then return keys, raw_keys, raw_values end
  while at do
    if string.sub(text, at, at) ~= '"' then return nil end
    local key_end = string_end(text, at)
    if not key_end then return nil end
    local raw_key = string.sub(text, at, key_end)
    at = string.find(text, '%S', key_end + 1)
    if not at or string.sub(text, at, at) ~= ':' then return nil end
    at = string.find(text, '%S', at + 1)
    if not at then return nil end
    local first, value_end = string.sub(text, at, at), nil
    if first == '"' then
      value_end = string_end(text, at)
    elseif first ~= '{' and first ~= '[' then
      local _
      _, value_end = string.find(text, '^[^,}%s]+', at)
    end
    if not value_end then return nil end
    keys[#keys + 1] = cjson.decode(raw_key)
    raw_keys[#raw_keys + 1] = raw_key
    raw_values[#raw_values + 1] = string.sub(text, at, value_end)
    at = string.find(text, '%S', value_end + 1)
    if not at then return nil end
    local sep = string.sub(text, at, at)
    if sep == '}' then return keys, raw_keys, raw_values end
    if sep ~= ',' then return nil end
    at = string.find(text, '%S', at + 1)
  end
  return nil
end

-- The referenced fields of a stored `d`, as {field = raw JSON value}.
local function referenced(d)
  local found = {}
  if not INDEXING or not d or d == '' then return found end
  local keys, _, raw_values = split_object(d)
  if not keys then return found end
  for i, key in ipairs(keys) do
    if L.references[key] then found[key] = raw_values[i] end
  end
  return found
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

-- Members are split from the left: tokens and app names never hold ':', ids may.
local function split_member(member)
  local at = string.find(member, ':', 1, true)
  if not at then return nil end
  return string.sub(member, 1, at - 1), string.sub(member, at + 1)
end

-- The session stored at `key`, or nil when it is absent or expired (logically gone,
-- whatever is still in Redis). `s.ttl` is the stored ttl; `s.left` is what a caller sees.
local function read_session(key, now)
  local f = redis.call('HMGET', key, 'id', 'r', 'w', 'ttl', 'd', 'la', 'ip', 'no_resave')
  if not f[1] then return nil end
  local ttl, la = tonumber(f[4]), tonumber(f[6])
  if not ttl or not la then return nil end
  local idle = now - la
  if idle > ttl then return nil end
  local s = {
    key = key, id = f[1], r = tonumber(f[2]) or 0, w = tonumber(f[3]) or 0, ttl = ttl,
    la = la, idle = idle, ip = f[7] or '', d = f[5] or '', no_resave = f[8] == '1',
  }
  s.left = s.no_resave and (ttl - idle) or ttl
  return s
end

local function reply(s)
  return {s.id, s.r, s.w, s.left, s.idle, s.ip, s.d ~= '' and s.d or false, s.no_resave and 1 or 0}
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
  redis.call('ZADD', fill(L.app_users, app), now, s.id)
  redis.call('ZADD', L.expiry_index, now + s.left, fill(L.global_member, app, token, s.id))
end

-- Removes one session from every structure and tells every cache to drop it.
local function remove_session(app, token, id)
  local key = fill(L.session, app, token, id)
  if INDEXING then reindex(app, token, referenced(redis.call('HGET', key, 'd')), {}) end
  redis.call('DEL', key)
  redis.call('ZREM', fill(L.app_sessions, app), fill(L.app_member, app, token, id))
  redis.call('ZREM', L.expiry_index, fill(L.global_member, app, token, id))
  local tokens = fill(L.user_tokens, app, token, id)
  redis.call('SREM', tokens, token)
  if redis.call('SCARD', tokens) == 0 then
    redis.call('ZREM', fill(L.app_users, app), id)
  end
  redis.call('PUBLISH', L.channel, fill(L.message, app, token, id))
end
