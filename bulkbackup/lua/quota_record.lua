-- Correct one token's quota from an answer's x-ratelimit-* headers.
-- KEYS[1] bulkbackup:quota:<resource>:<token id> (hash: remaining, reset, limit)
-- ARGV[1] remaining   ARGV[2] reset (unix s)   ARGV[3] limit   ARGV[4] key ttl (s)
-- ARGV[5] window (s)   ARGV[6] the answered request's reserved cost
-- Returns the remaining now stored.
--
-- A reset is never further than one window from now (Redis's clock): a far-away value from
-- a broken or hostile server would otherwise stop every process for the key's lifetime.
--
-- Within the same window (same reset) the lower of the stored and the answered remaining
-- wins: the stored one also counts reservations whose answers are still in flight. An
-- answer from a new window, or the first answer after the broker assumed a full window
-- (field `assumed`), replaces the state; in the latter case what other requests reserved
-- under the assumption (assumed_n, less this answer's own) may still be in flight, unseen
-- by this answer, and is taken off (later answers correct a count too low).
local h = redis.call('HMGET', KEYS[1], 'remaining', 'reset', 'assumed', 'assumed_n')
local left, reset = tonumber(h[1]), tonumber(h[2])
local others = 0
if h[3] == '1' then
  left = nil
  others = math.max(0, (tonumber(h[4]) or 0) - tonumber(ARGV[6]))
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local new_left = tonumber(ARGV[1])
local new_reset = math.min(tonumber(ARGV[2]), math.ceil(now + tonumber(ARGV[5])))
if left and reset and math.abs(reset - new_reset) < 2 then
  new_left = math.min(left, new_left)
end
new_left = math.max(0, new_left - others)
redis.call('HSET', KEYS[1], 'remaining', new_left, 'reset', new_reset, 'limit', ARGV[3])
redis.call('HDEL', KEYS[1], 'assumed', 'assumed_n')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return new_left
