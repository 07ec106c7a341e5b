-- The part of the prelude for scripts that read or write `d` (create, set, upgrade,
-- kill_by); scripts.py puts it after _lib.lua. The others do without it: every
-- script runs its whole prelude on each call, so a read pays for none of this.

-- The JSON text with every escaped quote or backslash replaced by two plain bytes:
-- same length, same positions, and every '"' left in it is a real string delimiter.
-- Only a text that holds a backslash before a quote needs it (other escapes hold no
-- quote); then it is one pass in C, so no text costs a Lua step per escape.
local function unescaped(text)
  if not string.find(text, '\\"', 1, true) then return text end
  return (string.gsub(text, '\\[\\"]', '__'))
end

-- One member of an object in unescaped text, anchored at its key, with a string or
-- another scalar value: positions past the key and past the value, the separator that
-- follows, and the position past it. Strings are scanned by C, not by Lua steps.
local STRING_MEMBER = '^"[^"]*"()%s*:%s*"[^"]*"()%s*([,}])%s*()'
local SCALAR_MEMBER = '^"[^"]*"()%s*:%s*[%w%.%+%-]+()%s*([,}])%s*()'

-- The key of a member as JSON.parse reads it, from its raw text, or nil.
local function decoded_key(raw)
  local ok, key = pcall(cjson.decode, raw)
  if ok and type(key) == 'string' then return key end
  return nil
end

-- The raw value of a member whose key ends before `after_key`.
local function member_value(text, after_key, after_value)
  local _, colon = string.find(text, '^%s*:%s*', after_key)
  return string.sub(text, colon + 1, after_value - 1)
end

-- A member whose value is a list or an object, anchored at its key: the positions
-- past the key and of the value's opening bracket.
local NESTED_MEMBER = '^"[^"]*"()%s*:%s*()[%[{]'
local SEPARATOR = '^%s*([,}])%s*()'

-- The unescaped text with the inside of every string blanked out (same length), so
-- that every bracket left in it is structure. A Lua call per string: only for text
-- whose strings hold brackets, which this library never writes (see validation.py).
local function masked_text(plain)
  return (string.gsub(plain, '"([^"]*)"', function(inside)
    return '"' .. string.rep('_', #inside) .. '"'
  end))
end

-- The position where the list or object at `at` ends, or nil. Lua's balanced match
-- (%b, in C) finds it in one step when no string inside holds a bracket; the value's
-- text then parses as JSON (cjson, in C) only if that end is the true one (an end
-- inside a string leaves a string open, an end past it leaves text after the value),
-- so a failed parse is the sign to look again on the masked text.
local function nested_end(text, plain, at)
  local close = string.sub(plain, at, at) == '[' and '^%b[]' or '^%b{}'
  local _, last = string.find(plain, close, at)
  if not last or not pcall(cjson.decode, string.sub(text, at, last)) then return nil end
  return last
end

-- Splits a JSON object into its top-level members, or returns nil and why not:
-- NOT_FLAT (not an object this split can read), or TOO_MANY_KEYS past `max_keys`
-- members (nil: no bound). Member i is the raw text from starts[i] to ends[i], so
-- values pass through untouched (cjson would re-encode numbers with 14 significant
-- digits and change them), and runs of members can be copied whole. A value that is a
-- list or an object is one member, its text kept as it is. last[key] is the member
-- that counts for a repeated key (the last, as in JSON.parse); found[key] is its raw
-- value, for the keys in `wanted`. The work is linear in the text: one or two pattern
-- matches per member, and for a list or an object a balanced match and a parse in C.
local function split_object(text, max_keys, wanted)
  local keys, starts, ends, last, found, n = {}, {}, {}, {}, {}, 0
  local parsed = {text = text, keys = keys, starts = starts, ends = ends, last = last, found = found, n = 0}
  local plain, escaped = unescaped(text), string.find(text, '\\', 1, true)
  local masked = false
  local _, at = string.find(plain, '^%s*{%s*')
  if not at then return nil, 'NOT_FLAT' end
  at = at + 1
  if string.find(plain, '^}%s*$', at) then return parsed end
  -- The kind of value of the member before is tried first: one match per member
  -- for runs of one kind, two for a member whose kind changes.
  local first, second = STRING_MEMBER, SCALAR_MEMBER
  while true do
    local _, _, after_key, after_value, sep, after = string.find(plain, first, at)
    if not after_key then
      _, _, after_key, after_value, sep, after = string.find(plain, second, at)
      if after_key then
        first, second = second, first
      else
        local value_at
        _, _, after_key, value_at = string.find(plain, NESTED_MEMBER, at)
        if not after_key then return nil, 'NOT_FLAT' end
        local value_end = nested_end(text, plain, value_at)
        if not value_end and not masked then
          masked = true
          plain = masked_text(plain)
          value_end = nested_end(text, plain, value_at)
        end
        if not value_end then return nil, 'NOT_FLAT' end
        after_value = value_end + 1
        _, _, sep, after = string.find(plain, SEPARATOR, after_value)
        if not sep then return nil, 'NOT_FLAT' end
      end
    end
    if n == max_keys then return nil, 'TOO_MANY_KEYS' end
    local key = string.sub(text, at + 1, after_key - 2)
    if escaped and string.find(key, '\\', 1, true) then
      key = decoded_key(string.sub(text, at, after_key - 1))
      if not key then return nil, 'NOT_FLAT' end
    end
    n = n + 1
    keys[n], starts[n], ends[n], last[key] = key, at, after_value - 1, n
    if wanted and wanted[key] then found[key] = member_value(text, after_key, after_value) end
    if sep == '}' then
      if after <= #plain then return nil, 'NOT_FLAT' end
      parsed.n = n
      return parsed
    end
    at = after
  end
end

-- The most a parse of `d` can cost; a member takes at least 6 bytes. A list or an
-- object in it is checked by cjson, which builds a table for each one: up to 40 ns a
-- byte for `d` made of empty lists (20 units), so text that holds one is counted so.
local function parse_work(d, max_keys)
  local per_byte = string.find(d, '[%[{]', 2) and 20 or 6
  return per_byte * #d + 1024 * math.min(max_keys, math.floor(#d / 6) + 1)
end

-- Merges the changes in `args` (the call's ARGV, from `first` on, triples: key, key as
-- JSON, value as JSON or '' to remove) into the JSON text `d`, as text: the stored
-- members pass through as they are, the changed ones are spliced in as the JSON the
-- caller encoded; a changed key keeps its place, and of a repeated key only the last
-- one counts, as in JSON.parse. `d` is parsed once, and never beyond the caps. Returns
-- the merged text ('' when empty), the parsed `d` (its `found` reference values) and
-- the changes by key (their index in `args`); or nil and the error to reply, when `d`
-- or the result is over the caps (nothing may be written then).
local function merge_data(d, args, first, max_bytes, max_keys)
  local patch = {}
  for i = first, #args, 3 do patch[args[i]] = i end
  local stored = {keys = {}, last = {}, found = {}, n = 0}
  if d ~= '' then
    if #d > max_bytes then return nil, redis.error_reply('STORED_DATA_TOO_LARGE ' .. #d) end
    local why
    stored, why = split_object(d, max_keys, INDEXING and L.references or nil)
    if not stored then return nil, redis.error_reply('STORED_DATA_' .. why) end
  end
  -- The stored members that stay are copied in runs.
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
        parts[#parts + 1] = string.sub(d, run_start, run_end)
        run_start = nil
      end
      if stored.last[key] == i and args[at + 2] ~= '' then
        count = count + 1
        parts[#parts + 1] = args[at + 1] .. ':' .. args[at + 2]
      end
    end
  end
  if run_start then parts[#parts + 1] = string.sub(d, run_start, run_end) end
  for i = first, #args, 3 do
    if not stored.last[args[i]] and args[i + 2] ~= '' then
      count = count + 1
      parts[#parts + 1] = args[i + 1] .. ':' .. args[i + 2]
    end
  end
  if count > max_keys then return nil, redis.error_reply('TOO_MANY_KEYS ' .. count) end
  local merged = ''
  if count > 0 then merged = '{' .. table.concat(parts, ',') .. '}' end
  if #merged > max_bytes then return nil, redis.error_reply('DATA_TOO_LARGE ' .. #merged) end
  return merged, stored, patch
end

-- The reference values of a merge's result, from the stored members and the changes
-- (`patch` indexes `args`, the call's ARGV): no second parse.
local function merged_references(stored, patch, args)
  local values = {}
  for field in pairs(L.references) do
    local at = patch[field]
    if not at then
      values[field] = stored.found[field]
    elseif args[at + 2] ~= '' then
      values[field] = args[at + 2]
    end
  end
  return values
end

-- Writes a new session under `token`, whose key the caller found free, created `now`
-- with the JSON text `d` ('' none) and the reference values read from it; returns it
-- as read_session would. The caller declared every key (see need / undeclared).
local function write_session(app, token, id, ip, ttl, d, no_resave, ua, now, references)
  local key = fill(L.session, app, token, id)
  local fields = {'id', id, 'r', 1, 'w', 1, 'ip', ip, 'la', now, 'ttl', ttl, 'ct', now}
  if ua ~= '' then
    fields[#fields + 1] = 'ua'
    fields[#fields + 1] = ua
  end
  if d ~= '' then
    fields[#fields + 1] = 'd'
    fields[#fields + 1] = d
  end
  if no_resave then
    fields[#fields + 1] = 'no_resave'
    fields[#fields + 1] = 1
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('ZADD', fill(L.app_sessions, app), now, fill(L.app_member, app, token, id))
  if id ~= ANONYMOUS then
    redis.call('ZADD', fill(L.app_users, app), now, id)
    redis.call('SADD', fill(L.user_tokens, app, token, id), token)
  end
  local s = {
    key = key, id = id, r = 1, w = 1, ttl = ttl, left = ttl, la = now, idle = 0, ip = ip,
    no_resave = no_resave, d = d, ends = LIFETIME > 0 and LIFETIME or false,
  }
  redis.call('ZADD', fill(L.expiry_index), expiry_score(s, now), fill(L.global_member, app, token, id))
  if next(references) ~= nil then
    reindex(app, token, {}, references)
    write_refs(key, d, references, false)
  end
  return s
end
