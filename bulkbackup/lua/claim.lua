-- Claim a batch of users for one worker, atomically.
-- KEYS[1]  tracked                 (sorted set: member -> last full sync, unix s)
-- KEYS[2]  bulkbackup:leases       (sorted set: claimed member -> lease expiry, server time)
-- KEYS[3]  bulkbackup:claims       (hash: claimed member -> its score before the claim)
-- KEYS[4]  bulkbackup:deferred:<run start> (set: members this run gave up on; skipped)
-- KEYS[5..] lock:<member> for each candidate, in the order of ARGV[5..]
-- ARGV[1]  run start: only members scored below it are claimed
-- ARGV[2]  worker id   ARGV[3] lock ttl (s)   ARGV[4] how many to claim at most
-- ARGV[5..] candidate members (the oldest expired leases, then the lowest scored)
-- Returns {claimed members...}.
--
-- A claimed member is parked at +inf in `tracked` (its score kept in KEYS[3]) so the next
-- claim's ZRANGEBYSCORE never has to step over locked users: O(log N + batch) per claim
-- however many users are being worked on (plus the few this run gave up on, which keep
-- their scores and are stepped over). A lease that expired with its lock (a killed or
-- stopped worker) is taken over here.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local start = tonumber(ARGV[1])
local wid = ARGV[2]
local ttl = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local claimed = {}
for i = 5, #ARGV do
  if #claimed >= want then break end
  local member = ARGV[i]
  local lock = KEYS[i]
  local lease = redis.call('ZSCORE', KEYS[2], member)
  local prev = nil
  if lease then
    if tonumber(lease) < now and redis.call('EXISTS', lock) == 0 then
      prev = redis.call('HGET', KEYS[3], member)
      if not prev or tonumber(prev) >= start then
        -- abandoned, but not due in this run: give it its score back
        if prev then redis.call('ZADD', KEYS[1], 'XX', prev, member) end
        redis.call('ZREM', KEYS[2], member)
        redis.call('HDEL', KEYS[3], member)
        prev = nil
      end
    end
  elseif redis.call('SISMEMBER', KEYS[4], member) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], member)
    if score and tonumber(score) < start then prev = score end
  end
  if prev and redis.call('SET', lock, wid, 'EX', ttl, 'NX') then
    redis.call('HSET', KEYS[3], member, prev)
    redis.call('ZADD', KEYS[1], 'XX', '+inf', member)
    redis.call('ZADD', KEYS[2], now + ttl, member)
    claimed[#claimed + 1] = member
  end
end
return claimed
