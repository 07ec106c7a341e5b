-- KEYS: session
-- ARGV: now, app, token, max_bytes, then per changed key: key, key JSON, value JSON
--       ('' removes the key)
-- Reads, merges and writes in one step, so concurrent sets of different keys all survive.
-- `d` is merged as text (split_object): values are spliced in as the JSON the caller
-- encoded.
local now, app, token = tonumber(ARGV[ARG + 1]), ARGV[ARG + 2], ARGV[ARG + 3]
local max_bytes = tonumber(ARGV[ARG + 4])

local s = read_session(KEYS[1], now)
if not s then return false end

local keys, raw_keys, raw_values = {}, {}, {}
if s.d ~= '' then
  keys, raw_keys, raw_values = split_object(s.d)
  if not keys then return redis.error_reply('STORED_DATA_NOT_FLAT') end
end
local position = {}
for i, key in ipairs(keys) do
  -- A repeated key: the last one wins, as in JSON.parse; drop the earlier text.
  if position[key] then raw_values[position[key]] = '' end
  position[key] = i
end
for i = ARG + 5, #ARGV, 3 do
  local key, raw_key, raw_value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local at = position[key]
  if at then
    raw_values[at] = raw_value
  elseif raw_value ~= '' then
    keys[#keys + 1] = key
    raw_keys[#raw_keys + 1] = raw_key
    raw_values[#raw_values + 1] = raw_value
    position[key] = #keys
  end
end
local parts = {}
for i = 1, #keys do
  if raw_values[i] ~= '' then parts[#parts + 1] = raw_keys[i] .. ':' .. raw_values[i] end
end
local merged = ''
if #parts > 0 then merged = '{' .. table.concat(parts, ',') .. '}' end
if #merged > max_bytes then return redis.error_reply('DATA_TOO_LARGE ' .. #merged) end

local old_references = referenced(s.d)
s.w = redis.call('HINCRBY', KEYS[1], 'w', 1)
if merged == '' then
  redis.call('HDEL', KEYS[1], 'd')
else
  redis.call('HSET', KEYS[1], 'd', merged)
end
s.d = merged
reindex(app, token, old_references, referenced(merged))
touch(app, token, s, now)
redis.call('PUBLISH', L.channel, fill(L.message, app, token, s.id))
return reply(s)
