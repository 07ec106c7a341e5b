-- KEYS: session
-- ARGV: now, app, token, max_bytes, max_keys, then per changed key: key, key JSON,
--       value JSON ('' removes the key)
-- Reads, merges and writes in one step, so concurrent sets of different keys all survive.
-- `d` is merged as text: the stored members pass through as they are, the changed ones
-- are spliced in as the JSON the caller encoded. The stored `d` is parsed once, and
-- never beyond the caps: nothing is written when it or the result is over them.
local now, app, token = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local max_bytes, max_keys = tonumber(ARGV[ARG + 4]), tonumber(ARGV[ARG + 5])
local FIRST = ARG + 6

local s = read_session(KEYS[1], now)
if not s then return false end

-- The changes, by key: the index of their triple in ARGV.
local patch = {}
for i = FIRST, #ARGV, 3 do patch[ARGV[i]] = i end

local stored = {keys = {}, last = {}, found = {}, n = 0}
if s.d ~= '' then
  if #s.d > max_bytes then return redis.error_reply('STORED_DATA_TOO_LARGE ' .. #s.d) end
  local why
  stored, why = split_object(s.d, max_keys, INDEXING and L.references or nil)
  if not stored then return redis.error_reply('STORED_DATA_' .. why) end
end

-- The stored members that stay are copied in runs; a changed key keeps its place, and
-- of a repeated key only the last one counts, as in JSON.parse.
local parts, count, run_start, run_end = {}, 0, nil, nil
for i = 1, stored.n do
  local key = stored.keys[i]
  local at = patch[key]
  if stored.last[key] == i and not at then
    count = count + 1
    run_start = run_start or stored.starts[i]
    run_end = stored.ends[i]
  else
    if run_start then
      parts[#parts + 1] = string.sub(s.d, run_start, run_end)
      run_start = nil
    end
    if stored.last[key] == i and ARGV[at + 2] ~= '' then
      count = count + 1
      parts[#parts + 1] = ARGV[at + 1] .. ':' .. ARGV[at + 2]
    end
  end
end
if run_start then parts[#parts + 1] = string.sub(s.d, run_start, run_end) end
for i = FIRST, #ARGV, 3 do
  if not stored.last[ARGV[i]] and ARGV[i + 2] ~= '' then
    count = count + 1
    parts[#parts + 1] = ARGV[i + 1] .. ':' .. ARGV[i + 2]
  end
end
if count > max_keys then return redis.error_reply('TOO_MANY_KEYS ' .. count) end
local merged = ''
if count > 0 then merged = '{' .. table.concat(parts, ',') .. '}' end
if #merged > max_bytes then return redis.error_reply('DATA_TOO_LARGE ' .. #merged) end

-- The new reference values come from the stored members and the changes: no second
-- parse. Every key this call writes is known from here on.
local values, indexed, fingerprint = {}, {}, nil
if INDEXING then
  for field in pairs(L.references) do
    local at = patch[field]
    if not at then
      values[field] = stored.found[field]
    elseif ARGV[at + 2] ~= '' then
      values[field] = ARGV[at + 2]
    end
  end
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
