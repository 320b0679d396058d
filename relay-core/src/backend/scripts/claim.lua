-- claim.lua: claims entries idle longer than min_idle for one consumer and
-- reports entries whose data was trimmed while pending (those are acked,
-- there is nothing left to route).
--
-- KEYS[1] stream
-- ARGV[1] group
-- ARGV[2] consumer
-- ARGV[3] min_idle_ms
-- ARGV[4] count
--
-- Returns {{{id, deliveries, fields}...}, {deleted id...}}.

local pend = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
if #pend == 0 then return {{}, {}} end
local ids, counts = {}, {}
for i, p in ipairs(pend) do
  ids[i] = p[1]
  counts[p[1]] = tonumber(p[4]) or 0
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))
local got, out = {}, {}
for _, e in ipairs(claimed) do
  if type(e) == 'table' and e[1] and type(e[2]) == 'table' then
    got[e[1]] = true
    out[#out + 1] = {e[1], (counts[e[1]] or 0) + 1, e[2]}
  end
end
local deleted = {}
for _, id in ipairs(ids) do
  if not got[id] then deleted[#deleted + 1] = id end
end
if #deleted > 0 then redis.call('XACK', KEYS[1], ARGV[1], unpack(deleted)) end
return {out, deleted}
