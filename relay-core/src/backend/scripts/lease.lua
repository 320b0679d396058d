-- lease.lua: an expiring, exclusive lease (a router's ownership of a shard).
--
-- KEYS[1] the lease key
-- ARGV[1] 'take' (take if free or expired, renew if ours) or 'release'
-- ARGV[2] owner
-- ARGV[3] ttl_ms (for 'take')
--
-- Returns 1 when the owner holds the lease afterwards ('take'), 0
-- otherwise; 'release' returns 1 when it freed the lease.

local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'release' then
  if holder == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == false or holder == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
