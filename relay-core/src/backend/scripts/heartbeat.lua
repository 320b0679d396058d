-- heartbeat.lua: membership with expiry (the routers of one group).
--
-- KEYS[1] the members hash (member -> expiry, unix ms)
-- ARGV[1] member
-- ARGV[2] ttl_ms
-- ARGV[3] now_ms
--
-- Records ARGV[1] as alive until now + ttl, drops expired members and
-- returns the live ones. The hash itself expires when nobody beats.

local now = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > now then
    live[#live + 1] = all[i]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
return live
