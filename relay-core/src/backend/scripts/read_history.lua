-- read_history.lua: one atomic read of a job's history page.
--
-- KEYS[1] job hash
-- ARGV[1] after            records with offset > after (clamped by the
--                          caller below 2^52: Lua numbers are doubles)
-- ARGV[2] limit            at most this many records
--
-- Returns {epoch|false, top|false, first|false, start, payloads}: the
-- payloads have offsets start, start + 1, ...

local m = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'hf')
if not m[1] then return {false, false, false, 0, {}} end
local top = tonumber(m[2]) or 0
local first = tonumber(m[3]) or 1
if top < first then return {m[1], m[2], false, 0, {}} end
local start = tonumber(ARGV[1]) + 1
if start < first then start = first end
local last = math.min(top, start + tonumber(ARGV[2]) - 1)
local entries = {}
if last >= start then
  local names = {}
  for o = start, last do names[#names + 1] = 'h' .. string.format('%d', o) end
  entries = redis.call('HMGET', KEYS[1], unpack(names))
end
return {m[1], m[2], string.format('%d', first), string.format('%d', start), entries}
