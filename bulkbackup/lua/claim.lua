-- Claim a batch of users for one worker, atomically (marks.lua is prepended).
-- KEYS[1]  tracked                 (sorted set: member -> last full listing, unix s)
-- KEYS[2]  bulkbackup:leases       (sorted set: claimed member -> lease expiry, server time)
-- KEYS[3]  bulkbackup:claims       (hash: claimed member -> its score before the claim)
-- KEYS[4]  bulkbackup:deferred:<run start> (set: members this run gave up on; skipped)
-- KEYS[5]  bulkbackup:events:status (exists once events read an hour: only due users then)
-- KEYS[6]  bulkbackup:events:due   KEYS[7] bulkbackup:events:listing
-- KEYS[8]  bulkbackup:priority
-- KEYS[9..] per candidate, in the order of ARGV[7..], four keys: lock:<member>,
--          events:refs:<login>, taken:<member>, taken-refs:<member>
-- ARGV[1]  run start   ARGV[2] worker id   ARGV[3] lock ttl (s)   ARGV[4] how many at most
-- ARGV[5]  events.full_pass_days in seconds   ARGV[6] most repositories kept in a refs set
-- ARGV[7..] candidate members (expired leases, due priority users, marked users, the lowest
--          scored)
-- Returns {{member, reason (claims.DueReason), {repositories (EVENTS_REFS only)}}...}.
--
-- Due: a priority user whose bulkbackup:priority score is <= now; a user marked by events
-- before the run's start; and a user scored below the run's start (once events read an
-- hour: below now - full pass too, or never synced).
-- A claimed member is parked at +inf in `tracked` (its score kept in KEYS[3]) so the next
-- claim's ZRANGEBYSCORE never has to step over locked users: O(log N + batch) per claim
-- however many users are being worked on (plus the few this run gave up on, which keep
-- their scores and are stepped over). Its marks are taken aside (marks.lua). A lease that
-- expired with its lock (a killed or stopped worker) is given back here, then judged as any
-- other candidate.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = tonumber(ARGV[1])
local wid = ARGV[2]
local ttl = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local most = tonumber(ARGV[6])
local events = redis.call('EXISTS', KEYS[5]) == 1
local cutoff = start
if events then cutoff = math.min(start, now - tonumber(ARGV[5])) end
local NEVER_SYNCED, PRIORITY, EVENTS_LISTING, FULL_PASS, EVENTS_REFS, SCHEDULED = 1, 2, 3, 4, 5, 6

-- nil when not due; else its score (as Redis wrote it, and as a number), and whether it is
-- due as a priority user
local function due(k, member)
  local raw = redis.call('ZSCORE', KEYS[1], member)
  if not raw then
    marks_drop(k, member)
    return nil
  end
  local score = tonumber(raw)
  if score == INF then return nil end  -- parked without a lease: someone else's business
  local prio = redis.call('ZSCORE', k.priority, member)
  local prio_due = prio ~= false and tonumber(prio) <= now
  local mark = redis.call('ZSCORE', k.due, member)
  if prio_due or score < cutoff or (mark and tonumber(mark) < start) then
    return raw, score, prio_due
  end
  return nil
end

local function reason(k, score, prio_due)
  if score == -INF then return NEVER_SYNCED end
  if prio_due then return PRIORITY end
  if redis.call('HEXISTS', k.taken, 'listing') == 1 then return EVENTS_LISTING end
  if score < cutoff then
    if events then return FULL_PASS end
    return SCHEDULED
  end
  if redis.call('EXISTS', k.taken_refs) == 1 then return EVENTS_REFS end
  return EVENTS_LISTING  -- a mark without its repositories: only a listing can tell
end

local claimed = {}
for i = 7, #ARGV do
  if #claimed >= want then break end
  local member = ARGV[i]
  local at = 9 + (i - 7) * 4
  local lock = KEYS[at]
  local k = {due = KEYS[6], listing = KEYS[7], priority = KEYS[8], refs = KEYS[at + 1],
             taken = KEYS[at + 2], taken_refs = KEYS[at + 3]}
  local free = true
  local lease = redis.call('ZSCORE', KEYS[2], member)
  if lease then
    free = tonumber(lease) < now and redis.call('EXISTS', lock) == 0
    if free then  -- abandoned: given back whole, then judged as any other candidate
      local prev = redis.call('HGET', KEYS[3], member)
      if prev then redis.call('ZADD', KEYS[1], 'XX', prev, member) end
      redis.call('ZREM', KEYS[2], member)
      redis.call('HDEL', KEYS[3], member)
      marks_give_back(k, member, now, most)
    end
  end
  if free and redis.call('SISMEMBER', KEYS[4], member) == 0 then
    local raw, score, prio_due = due(k, member)
    if raw and redis.call('SET', lock, wid, 'EX', ttl, 'NX') then
      redis.call('HSET', KEYS[3], member, raw)
      redis.call('ZADD', KEYS[1], 'XX', '+inf', member)
      redis.call('ZADD', KEYS[2], now + ttl, member)
      marks_take(k, member, now, most)
      local why = reason(k, score, prio_due)
      local repos = {}
      if why == EVENTS_REFS then repos = redis.call('SMEMBERS', k.taken_refs) end
      claimed[#claimed + 1] = {member, why, repos}
    end
  end
end
return claimed
