-- KEYS: session
-- ARGV: now, app, token
-- Reads and touches in one step; `r` in the reply is the count before this read.
local now, app, token = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local s = read_session(KEYS[1], now)
if not s then
  -- 0: still in Redis but expired; nil: unknown or killed.
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  return false
end
local out = reply(s)
if s.la == now then
  -- Read before in this second: the last access and the scores, all in seconds,
  -- already say `now` (no_resave's ttl too, since nothing went idle), so the read
  -- count is all there is to write.
  redis.call('HINCRBY', KEYS[1], 'r', 1)
  return out
end
need_touch(app)
local missing = undeclared()
if missing then return missing end
touch(app, token, s, now, 'r', s.r + 1)
return out
