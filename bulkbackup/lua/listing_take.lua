-- A claiming worker takes the listings handed over with the users it just claimed
-- (queue/listings.py: take; run/listing_share.py). One round trip for the whole claim.
-- KEYS[1..] bulkbackup:listing:<member> of each claimed user that needs a listing, in order
-- ARGV[1]   how many to take at most (the claimer's share): the first found are returned and
--           deleted; the others found are left in place for the worker the user goes to next
-- Returns one entry per key: the listing (taken), "" (none cached), "+" (cached, left).
local n = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  if n > 0 then
    local v = redis.call('GET', key)
    if v then
      redis.call('DEL', key)
      n = n - 1
      out[i] = v
    else
      out[i] = ''
    end
  elseif redis.call('EXISTS', key) == 1 then
    out[i] = '+'
  else
    out[i] = ''
  end
end
return out
