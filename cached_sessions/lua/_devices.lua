-- The part of the prelude for scripts that name sessions by device handle (devices,
-- killsoid); scripts.py puts it after _lib.lua.

-- The opaque name of a session in a device list: not its token (a page may show it),
-- and useful only within its user's own sessions.
local function device_handle(token)
  return string.sub(redis.sha1hex('device:' .. token), 1, 32)
end
