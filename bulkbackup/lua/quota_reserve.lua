-- Reserve `cost` points of one resource on the token with the most headroom, atomically.
-- KEYS[2i-1] bulkbackup:quota:<resource>:<token id> (hash: remaining, reset, limit)
-- KEYS[2i]   bulkbackup:quota:pause:<token id>      (hash: until, length_s)
--            for each token i of the caller, in the caller's order
-- ARGV[1] cost   ARGV[2] limit assumed for a token without state   ARGV[3] window (s)
-- ARGV[4] key ttl (s)   ARGV[5] '1': only look (charge nothing: is a token usable now?)
-- Returns {'reserved', i, remaining after the reservation} (i: 1-based token position)
--      or {'wait', milliseconds until the earliest reset or pause end, 'spent'|'paused'}.
--
-- A token without state, or whose window has passed its reset, is assumed full (its limit,
-- a window from now): losing these keys loses nothing, the next answer's x-ratelimit-*
-- headers correct them (quota_record.lua). Times are the Redis server's clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local default = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local peek = ARGV[5] == '1'

local function state(key)
  local h = redis.call('HMGET', key, 'remaining', 'reset', 'limit')
  local left, reset = tonumber(h[1]), tonumber(h[2])
  if not left or not reset or reset <= now then
    return tonumber(h[3]) or default, now + window, true
  end
  return left, reset, false
end

local best, best_left, best_reset, best_fresh = nil, -1, nil, false
local soonest, why = nil, 'spent'
for i = 1, #KEYS / 2 do
  local paused = tonumber(redis.call('HGET', KEYS[2 * i], 'until') or '0')
  if paused > now then
    if not soonest or paused < soonest then soonest, why = paused, 'paused' end
  else
    local left, reset, fresh = state(KEYS[2 * i - 1])
    if left >= cost then
      if left > best_left then best, best_left, best_reset, best_fresh = i, left, reset, fresh end
    elseif not soonest or reset < soonest then
      soonest, why = reset, 'spent'
    end
  end
end
if best and peek then
  return {'reserved', best, best_left}
end
if best then
  local key = KEYS[2 * best - 1]
  redis.call('HSET', key, 'remaining', best_left - cost)
  if best_fresh then
    -- An assumed window (no answer yet): the next answer replaces it whatever its reset;
    -- assumed_n counts what was reserved meanwhile (see quota_record.lua).
    redis.call('HSET', key, 'reset', string.format('%.3f', best_reset), 'assumed', '1',
               'assumed_n', cost)
  elseif redis.call('HGET', key, 'assumed') == '1' then
    redis.call('HINCRBY', key, 'assumed_n', cost)
  end
  redis.call('EXPIRE', key, ttl)
  return {'reserved', best, best_left - cost}
end
return {'wait', math.max(1, math.ceil((soonest - now) * 1000)), why}
