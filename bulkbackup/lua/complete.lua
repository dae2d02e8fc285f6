-- Finish a user: record the sync time, only if the lock is still the worker's own.
-- KEYS[1] tracked   KEYS[2] bulkbackup:leases   KEYS[3] bulkbackup:claims   KEYS[4] lock:<member>
-- KEYS[5] bulkbackup:syncd (hash: login -> the counts last written to the user's object)
-- ARGV[1] member   ARGV[2] worker id   ARGV[3] 1 = synced (score := now), 0 = give back (score restored)
-- ARGV[4] login    ARGV[5] counts for KEYS[5] ('' = leave it)
-- Returns 1 when done, 0 when the lock is not ours (nothing changed).
-- The lock is deleted (compare-and-delete) rather than left to expire, so a user given
-- back is claimable again at once.
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
local member = ARGV[1]
local score
if ARGV[3] == '1' then
  local t = redis.call('TIME')
  score = tonumber(t[1])
else
  score = redis.call('HGET', KEYS[3], member)
end
if score then redis.call('ZADD', KEYS[1], 'XX', score, member) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[4], ARGV[5]) end
redis.call('ZREM', KEYS[2], member)
redis.call('HDEL', KEYS[3], member)
redis.call('DEL', KEYS[4])
return 1
