-- KEYS: user_tokens
-- ARGV: now, app, id, current token ('' none)
-- The live sessions of one id as devices: {handle, current (0|1), created (or false),
-- last access, ip, user agent (or false), idle}. Read only: listing is not activity.
local now, app, id, current = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3], ARGV[ARG + 4]
local out = {}
for _, token in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = fill(L.session, app, token, id)
  local s = read_session(key, now, true)
  if s and s.id == id then
    local extra = redis.call('HMGET', key, 'ct', 'ua')
    out[#out + 1] = {
      device_handle(token), token == current and 1 or 0, tonumber(extra[1]) or false, s.la,
      s.ip, extra[2] or false, s.idle,
    }
  end
end
return out
