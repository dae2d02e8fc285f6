-- One page of `tracked`, newest sync first (score descending, then member descending, as
-- ZRANGE ... REV orders ties), starting after the cursor (score, member).
-- KEYS[1] tracked
-- ARGV[1] cursor score ('' = the first page)   ARGV[2] cursor member   ARGV[3] page size
-- Returns a flat list: member, score, member, score, ...
-- Cost: O(log N + page) whatever the page's depth: the cursor's rank is looked up, never
-- counted to. When the cursor's member has moved (synced or claimed since), its place among
-- the members with its old score is found by a binary search over that group's index range.
local n = tonumber(ARGV[3])
local start = 0
if ARGV[1] ~= '' then
  local s = ARGV[1]
  local m = ARGV[2]
  local cur = redis.call('ZSCORE', KEYS[1], m)
  if cur and tonumber(cur) == tonumber(s) then
    start = redis.call('ZREVRANK', KEYS[1], m) + 1
  else
    -- Byte order, as Redis orders members (Lua's < follows the server's locale).
    local function less(a, b)
      local la, lb = #a, #b
      for i = 1, math.min(la, lb) do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x < y end
      end
      return la < lb
    end
    local lo = redis.call('ZCOUNT', KEYS[1], '(' .. s, '+inf')
    local hi = lo + redis.call('ZCOUNT', KEYS[1], s, s)
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local x = redis.call('ZRANGE', KEYS[1], mid, mid, 'REV')[1]
      if x == nil or less(x, m) then hi = mid else lo = mid + 1 end
    end
    start = lo
  end
end
return redis.call('ZRANGE', KEYS[1], start, start + n - 1, 'REV', 'WITHSCORES')
