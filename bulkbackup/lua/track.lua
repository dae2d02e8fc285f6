-- Track logins (ZADD NX -inf, as ingest and `track`), one account one member: a login is not
-- added when the account is tracked under another spelling (GitHub logins ignore case).
-- KEYS[1]  tracked   KEYS[2]  bulkbackup:logins (lowercased login -> spelling; only logins
--          that are not all lowercase: a lowercase login is its own lowercased form)
-- KEYS[3]  bulkbackup:search (optional: lowercased logins, score 0): each added login goes in
-- ARGV[1]  member prefix (github.com/)   ARGV[2]  "each" or "count"
-- ARGV[3..] logins, validated (ASCII), at most 1000
-- Returns, "each": one string per login, "" when it was added, else the spelling it is
-- tracked under; "count": how many were added (ingest: the exact members are not looked up,
-- ZADD NX leaves them as they are).
-- A handful of calls per batch, not per login.
local prefix, each = ARGV[1], ARGV[2] == 'each'
local first = 3
local n = #ARGV - first + 1
local folded, members, lower_members, lower_at = {}, {}, {}, {}
for i = 1, n do
  local login = ARGV[i + first - 1]
  folded[i] = string.lower(login)
  members[i] = prefix .. login
  if folded[i] ~= login then
    lower_members[#lower_members + 1] = prefix .. folded[i]
    lower_at[i] = #lower_members
  end
end
if n == 0 then
  return each and {} or 0
end
local exact = {}
if each then
  exact = redis.call('ZMSCORE', KEYS[1], unpack(members))
end
local indexed = redis.call('HMGET', KEYS[2], unpack(folded))
local lower = {}
if #lower_members > 0 then
  lower = redis.call('ZMSCORE', KEYS[1], unpack(lower_members))
end
local out, zadd, hset, batch = {}, {}, {}, {}
for i = 1, n do
  local login, f = ARGV[i + first - 1], folded[i]
  local found = false
  if exact[i] then
    found = login
  elseif indexed[i] then
    found = indexed[i]
  elseif lower_at[i] and lower[lower_at[i]] then
    found = f
  elseif batch[f] then
    found = batch[f]  -- the same account earlier in this batch
  end
  if found then
    out[i] = found
  else
    out[i] = ''
    batch[f] = login
    zadd[#zadd + 1] = '-inf'
    zadd[#zadd + 1] = members[i]
    if f ~= login then
      hset[#hset + 1] = f
      hset[#hset + 1] = login
    end
  end
end
local added = 0
if #zadd > 0 then
  added = redis.call('ZADD', KEYS[1], 'NX', unpack(zadd))
end
if #hset > 0 then
  redis.call('HSET', KEYS[2], unpack(hset))
end
if KEYS[3] and #zadd > 0 then
  local search = {}
  for f, _ in pairs(batch) do
    search[#search + 1] = 0
    search[#search + 1] = f
  end
  redis.call('ZADD', KEYS[3], unpack(search))
end
if each then
  return out
end
return added
