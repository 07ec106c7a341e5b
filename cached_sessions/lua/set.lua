-- KEYS: session
-- ARGV: now, app, token, max_bytes, max_keys, then per changed key: key, key JSON,
--       value JSON ('' removes the key)
-- Reads, merges and writes in one step, so concurrent sets of different keys all survive.
-- `d` is merged as text (merge_data): every value's JSON text is kept as it is.
local now, app, token = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local max_bytes, max_keys = tonumber(ARGV[ARG + 4]), tonumber(ARGV[ARG + 5])

local s = read_session(KEYS[1], now)
if not s then return false end

local merged, stored, patch = merge_data(s.d, ARGV, ARG + 6, max_bytes, max_keys)
if not merged then return stored end

-- Every key this call writes is known from here on.
local values, indexed, fingerprint = {}, {}, nil
if INDEXING then
  values = merged_references(stored, patch, ARGV)
  fingerprint, indexed = read_refs(KEYS[1])
  need_reindex(app, token, indexed, values)
end
need_touch(app)
local missing = undeclared()
if missing then return missing end

s.w = redis.call('HINCRBY', KEYS[1], 'w', 1)
if merged == '' then
  redis.call('HDEL', KEYS[1], 'd')
else
  redis.call('HSET', KEYS[1], 'd', merged)
end
s.d = merged
if INDEXING then
  reindex(app, token, indexed, values)
  write_refs(KEYS[1], merged, values, fingerprint ~= nil)
end
touch(app, token, s, now)
publish(app, token)
return reply(s)
