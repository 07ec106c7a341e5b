-- Shared prelude of every script; scripts.py puts it in front of each one.
-- ARGV[1..9] are the key templates (keys.py, TEMPLATE_ORDER); an operation's own
-- arguments start at ARGV[ARG + 1]. Every check runs before the first write, because
-- Redis does not roll back a script that fails halfway.
local L = {
  session = ARGV[1], app_sessions = ARGV[2], app_users = ARGV[3],
  user_tokens = ARGV[4], expiry_index = ARGV[5], app_member = ARGV[6],
  global_member = ARGV[7], channel = ARGV[8], message = ARGV[9],
}
local ARG = 9

local function fill(template, app, token, id)
  return (string.gsub(template, '<(%a+)>', function(name)
    if name == 'app' then return app end
    if name == 'token' then return token end
    if name == 'id' then return id end
  end))
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
-- shrinks by the time since the last access, as redis-sessions does.
local function touch(app, token, s, now)
  if s.no_resave then
    redis.call('HSET', s.key, 'la', now, 'ttl', s.left)
  else
    redis.call('HSET', s.key, 'la', now)
  end
  redis.call('ZADD', fill(L.app_sessions, app), now, fill(L.app_member, app, token, s.id))
  redis.call('ZADD', fill(L.app_users, app), now, s.id)
  redis.call('ZADD', L.expiry_index, now + s.left, fill(L.global_member, app, token, s.id))
end

-- Removes one session from every structure and tells every cache to drop it.
local function remove_session(app, token, id)
  redis.call('DEL', fill(L.session, app, token, id))
  redis.call('ZREM', fill(L.app_sessions, app), fill(L.app_member, app, token, id))
  redis.call('ZREM', L.expiry_index, fill(L.global_member, app, token, id))
  local tokens = fill(L.user_tokens, app, token, id)
  redis.call('SREM', tokens, token)
  if redis.call('SCARD', tokens) == 0 then
    redis.call('ZREM', fill(L.app_users, app), id)
  end
  redis.call('PUBLISH', L.channel, fill(L.message, app, token, id))
end
