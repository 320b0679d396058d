-- append_dedupe.lua: idempotent appends, any number per call; each entry
-- is written atomically with its marker, and a repeat appends nothing.
--
-- KEYS, per request (2 each): marker key, stream key
-- ARGV, per request:          ttl_ms (marker), maxlen ('' = none),
--                             2 x field count, then the fields
--
-- Returns per request {id, duplicate}: the original id for a repeat.

local out = {}
local a = 1
for i = 1, #KEYS, 2 do
  local marker, stream = KEYS[i], KEYS[i + 1]
  local ttl, maxlen = ARGV[a], ARGV[a + 1]
  local first = a + 3
  local last = a + 2 + tonumber(ARGV[a + 2])
  a = last + 1
  local old = redis.call('GET', marker)
  if old then
    out[#out + 1] = {old, 1}
  else
    local id
    if maxlen ~= '' then
      id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, first, last))
    else
      id = redis.call('XADD', stream, '*', unpack(ARGV, first, last))
    end
    redis.call('SET', marker, id, 'PX', ttl)
    out[#out + 1] = {id, 0}
  end
end
return out
