-- get_state.lua: a job's state, read atomically with its epoch and top.
--
-- KEYS[1] job hash
-- (no ARGV)
--
-- Returns {epoch, top, sq, so, st} (nil when absent).

return redis.call('HMGET', KEYS[1], 'epoch', 'top', 'sq', 'so', 'st')
