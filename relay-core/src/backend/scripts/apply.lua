-- apply.lua: applies the events of any number of jobs (one call per batch
-- on a single server, one call per job on a cluster, where a job's keys
-- share its {job_id} slot). See relay-core/src/backend/job_log.rs for the
-- contract and docs/ARCHITECTURE.md for the job hash layout.
--
-- KEYS, per job (2 each):  job hash, eco2 state string (the job hash
--                          again = none: not touched; a key in another
--                          slot would be refused on a cluster);
--      then, when acking:  the shard stream (last key).
-- (The live channel is no key: declared as one, it would be a key that
-- never exists, and while a cluster moves the job's slot the nodes answer
-- a call naming an existing and a missing key with TRYAGAIN.)
-- ARGV[1] history_max      history entries kept per job
-- ARGV[2] ttl_ms           job hash TTL
-- ARGV[3] state_ttl_ms     eco2 state string TTL
-- ARGV[4] publish          '1': publish live messages, '0': the caller does
-- ARGV[5] now_ms           clock for the TTL refresh
-- ARGV[6] refresh_ms       refresh TTLs when the last refresh is this old
-- ARGV[7] k                entries to ack (0 = none)
-- ARGV[8]                  when k > 0: the group, then the k entry ids
-- then per job:            epoch candidate, live channel, extra channel
--                          ('' = none), n, and n pairs (seq, payload)
--
-- Returns per job {epoch, off1, new1, off2, new2, ...}.
--
-- Order matters: every write (HSET, SET, HDEL, PEXPIRE) of every job, then
-- the XACK, then the PUBLISHes. A call that fails half-way acks nothing
-- (its entries are re-read and re-applied, a no-op for what was applied)
-- and publishes nothing; once the first write passed, Redis lets the
-- script finish, so only committed offsets ever go live.
-- Seqs are compared as decimal strings (length, then bytes): exact for
-- the whole u64 range. Offsets are Lua numbers (exact below 2^53).

local function seq_gt(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local hist_max = tonumber(ARGV[1])
local ttl, state_ttl = ARGV[2], ARGV[3]
local publish = ARGV[4] == '1'
local now = tonumber(ARGV[5])
local refresh_every = tonumber(ARGV[6])
local n_ack = tonumber(ARGV[7])
local a = 8
local ack_from = a + 1
if n_ack > 0 then a = a + 1 + n_ack end
local out = {}
-- Live messages wait until every write of the call is done: a server that
-- refuses writes (OOM under noeviction, NOREPLICAS) still accepts PUBLISH,
-- and a message for an offset that was never committed would later name
-- another event. Once the first write succeeded Redis lets the script
-- finish, so nothing is published unless everything was committed.
local pubs = {}
for j = 0, math.floor(#KEYS / 2) - 1 do
  local job, state = KEYS[j * 2 + 1], KEYS[j * 2 + 2]
  local cand, live, extra, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  local fields = {'epoch', 'top', 'hf', 'sq', 'rx'}
  for k = 0, n - 1 do fields[6 + k] = 's' .. ARGV[a + 2 * k] end
  local m = redis.call('HMGET', job, unpack(fields))
  local epoch, top, hf, sq, rx = m[1], tonumber(m[2]) or 0, tonumber(m[3]) or 1, m[4], tonumber(m[5]) or 0
  local set = {}
  if not epoch then
    epoch = cand
    set[#set + 1] = 'epoch'
    set[#set + 1] = epoch
    set[#set + 1] = 'hf'
    set[#set + 1] = '1'
  end
  local res = {epoch}
  local seen = {}
  local pushed = 0
  local best_seq, best_payload, best_off = nil, nil, nil
  for k = 1, n do
    local seq, payload = ARGV[a], ARGV[a + 1]
    a = a + 2
    local off = m[5 + k] or seen[seq]
    local new = 0
    if not off then
      top = top + 1
      off = string.format('%d', top)
      seen[seq] = off
      set[#set + 1] = 's' .. seq
      set[#set + 1] = off
      set[#set + 1] = 'h' .. off
      set[#set + 1] = payload
      new = 1
      pushed = pushed + 1
      if (not sq or seq_gt(seq, sq)) and (not best_seq or seq_gt(seq, best_seq)) then
        best_seq, best_payload, best_off = seq, payload, off
      end
    end
    res[#res + 1] = off
    res[#res + 1] = new
    if publish then
      pubs[#pubs + 1] = live
      pubs[#pubs + 1] = epoch .. ':' .. off .. ':' .. payload
      if extra ~= '' then
        pubs[#pubs + 1] = extra
        pubs[#pubs + 1] = payload
      end
    end
  end
  if pushed > 0 then
    set[#set + 1] = 'top'
    set[#set + 1] = string.format('%d', top)
    if top - hf + 1 > hist_max then
      local new_hf = top - hist_max + 1
      local drop = {}
      for o = hf, new_hf - 1 do drop[#drop + 1] = 'h' .. string.format('%d', o) end
      for s = 1, #drop, 1000 do
        redis.call('HDEL', job, unpack(drop, s, math.min(s + 999, #drop)))
      end
      set[#set + 1] = 'hf'
      set[#set + 1] = string.format('%d', new_hf)
    end
  end
  if best_seq then
    set[#set + 1] = 'sq'
    set[#set + 1] = best_seq
    set[#set + 1] = 'so'
    set[#set + 1] = best_off
    set[#set + 1] = 'st'
    set[#set + 1] = best_payload
    if state ~= job then redis.call('SET', state, best_payload, 'PX', state_ttl) end
  end
  -- TTLs are refreshed when due, not on every event: a refresh is another
  -- call, and the bound only needs to hold to within refresh_every.
  local refresh = now - rx >= refresh_every
  if refresh then
    set[#set + 1] = 'rx'
    set[#set + 1] = string.format('%d', now)
  end
  if #set > 0 then redis.call('HSET', job, unpack(set)) end
  if refresh then
    redis.call('PEXPIRE', job, ttl)
    if state ~= job and not best_seq then redis.call('PEXPIRE', state, state_ttl) end
  end
  out[#out + 1] = res
end
if n_ack > 0 then
  redis.call('XACK', KEYS[#KEYS], ARGV[ack_from - 1], unpack(ARGV, ack_from, ack_from + n_ack - 1))
end
for i = 1, #pubs, 2 do redis.call('PUBLISH', pubs[i], pubs[i + 1]) end
return out
