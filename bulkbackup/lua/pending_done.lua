-- Forget a repository pending verify (keys.VERIFY_PENDING), unless it was committed again
-- after the verify began: its score (commit time) must be at most ARGV[2].
-- KEYS[1] the sorted set; ARGV[1] member "login/repo"; ARGV[2] when the verify began (unix s).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
