-- Extend every lock a worker process holds, only where the lock is still its own.
-- KEYS[1]  bulkbackup:leases
-- KEYS[2..] lock:<member>, in the order of ARGV[3..]
-- ARGV[1]  worker id   ARGV[2] lock ttl (s)   ARGV[3..] members
-- Returns {1 or 0 per member}: 0 means the lock is lost (expired, or someone else's).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wid = ARGV[1]
local ttl = tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local lock = KEYS[i - 1]
  if redis.call('GET', lock) == wid then
    redis.call('EXPIRE', lock, ttl)
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
