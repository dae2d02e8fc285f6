-- Finish a user: record the sync, only if the lock is still the worker's own (marks.lua is
-- prepended).
-- KEYS[1] tracked   KEYS[2] bulkbackup:leases   KEYS[3] bulkbackup:claims   KEYS[4] lock:<member>
-- KEYS[5] bulkbackup:syncd (hash: login -> the counts last written to the user's object,
--         in the format of bulkbackup.archive.layout.UserCounts.encode)
-- KEYS[6] bulkbackup:failures (hash: member -> failed attempts since its last sync)
-- KEYS[7] bulkbackup:deferred:<run start> (set: members this run's claims skip)
-- KEYS[8] bulkbackup:rate:<minute> (per-minute counters users/repos/bytes, synced only)
-- KEYS[9] bulkbackup:events:due   KEYS[10] bulkbackup:events:listing
-- KEYS[11] bulkbackup:priority   KEYS[12] events:refs:<login>   KEYS[13] taken:<member>
-- KEYS[14] taken-refs:<member>
-- ARGV[1] member   ARGV[2] worker id
-- ARGV[3] (claims.CompleteMode) 1 SYNCED: score := now; 0 GIVE_BACK: score restored;
--         2 FAILED: given back, failure counted (at the ARGV[6]th the member joins KEYS[7]
--         and waits for the next run); 3 SYNCED_REFS: synced from its events' repositories
--         without a listing: score restored (it is the last full listing's time), the rest
--         as SYNCED
-- ARGV[4] login    ARGV[5] counts for KEYS[5] ('' = leave it)
-- ARGV[6] max attempts   ARGV[7] seconds KEYS[7] is kept
-- ARGV[8] repositories archived   ARGV[9] bytes uploaded   ARGV[10] KEYS[8]'s TTL (s)
-- ARGV[11] serve.priority_hours in seconds   ARGV[12] most repositories kept in a refs set
-- Returns (claims.Completion) 0 LOST: the lock is not ours, nothing changed; 1 DONE: done or
-- given back; 2 DEFERRED: given back and left for the next run.
-- The lock is deleted (compare-and-delete) rather than left to expire, so a user given
-- back is claimable again at once.
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
local member = ARGV[1]
local mode = ARGV[3]
local synced = mode == '1' or mode == '3'
local k = {due = KEYS[9], listing = KEYS[10], priority = KEYS[11], refs = KEYS[12],
           taken = KEYS[13], taken_refs = KEYS[14]}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local result = 1
local score
if mode == '1' then
  score = t[1]
else
  score = redis.call('HGET', KEYS[3], member)
  if mode == '2' and redis.call('HINCRBY', KEYS[6], member, 1) >= tonumber(ARGV[6]) then
    -- It fails every time: this run must not retry it forever, nor wait for it to end. Its
    -- score stays its last sync, so `tracked` keeps telling the truth.
    redis.call('HDEL', KEYS[6], member)
    redis.call('SADD', KEYS[7], member)
    redis.call('EXPIRE', KEYS[7], ARGV[7])
    result = 2
  end
end
if synced then
  redis.call('HDEL', KEYS[6], member)
  marks_synced(k, member, now, tonumber(ARGV[11]))
else
  marks_give_back(k, member, now, tonumber(ARGV[12]))
end
if score then redis.call('ZADD', KEYS[1], 'XX', score, member) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[4], ARGV[5]) end
redis.call('ZREM', KEYS[2], member)
redis.call('HDEL', KEYS[3], member)
redis.call('DEL', KEYS[4])
if synced then
  redis.call('HINCRBY', KEYS[8], 'users', 1)
  redis.call('HINCRBY', KEYS[8], 'repos', tonumber(ARGV[8]) or 0)
  redis.call('HINCRBY', KEYS[8], 'bytes', tonumber(ARGV[9]) or 0)
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[10]) or 7200)
end
return result
