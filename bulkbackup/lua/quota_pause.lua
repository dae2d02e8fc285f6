-- Pause one token for every process after a secondary-limit answer.
-- KEYS[1] bulkbackup:quota:pause:<token id> (hash: until (unix s), length_s)
-- ARGV[1] the answer's Retry-After in seconds, or '' (then 60)   ARGV[2] longest pause (s)
-- Returns {seconds until the pause ends, length of this pause (s)} as strings.
--
-- An answer while the token is still paused (a request already in flight) keeps the pause;
-- one that follows a pause which ended less than its own length ago doubles it.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local h = redis.call('HMGET', KEYS[1], 'until', 'length_s')
local prev_until, prev_len = tonumber(h[1]), tonumber(h[2])
local length = math.min(tonumber(ARGV[1]) or 60, tonumber(ARGV[2]))
if prev_until and prev_len and now >= prev_until and now < prev_until + prev_len then
  length = math.max(length, prev_len * 2)
elseif prev_until and prev_len and now < prev_until then
  length = math.max(length, prev_len)
end
length = math.min(length, tonumber(ARGV[2]))
local until_ = math.max(now + length, prev_until or 0)
redis.call('HSET', KEYS[1], 'until', string.format('%.3f', until_), 'length_s', length)
redis.call('EXPIRE', KEYS[1], math.ceil(until_ - now + 2 * length) + 60)
return {string.format('%.3f', until_ - now), tostring(length)}
