-- Track logins (ZADD NX -inf, as ingest and `track`), one account one member: a login is not
-- added when the account is tracked under another spelling (GitHub logins ignore case).
-- KEYS[1]  tracked   KEYS[2]  bulkbackup:logins (lowercased login -> spelling; only logins
--          that are not all lowercase: a lowercase login is its own lowercased form)
-- ARGV[1]  member prefix (github.com/)   ARGV[2..] logins, validated (ASCII)
-- Returns one string per login: "" when it was added, else the spelling it is tracked under.
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local login = ARGV[i]
  local folded = string.lower(login)
  local found = false
  if redis.call('ZSCORE', KEYS[1], prefix .. login) then
    found = login
  else
    found = redis.call('HGET', KEYS[2], folded)
    if not found and folded ~= login and redis.call('ZSCORE', KEYS[1], prefix .. folded) then
      found = folded
    end
  end
  if found then
    out[#out + 1] = found
  else
    redis.call('ZADD', KEYS[1], 'NX', '-inf', prefix .. login)
    if folded ~= login then
      redis.call('HSET', KEYS[2], folded, login)
    end
    out[#out + 1] = ''
  end
end
return out
