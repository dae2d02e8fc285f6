-- A user's marks, shared by claim.lua and complete.lua (prepended to each when loaded:
-- queue/connection.py). A user's marks are its mark in events:due (score: the end of the hour
-- of its first mark; +inf for a mark made while it was claimed: events_mark.lua), its
-- membership of events:listing, its events:refs:<login> set, and its score in
-- bulkbackup:priority. A claim takes them aside (taken:<member>: a hash due / listing /
-- priority; taken-refs:<member>: a set), so that events marking the user during its sync make
-- a fresh mark and none is lost; a give back merges them back, a sync deletes them.
-- k: {due=, listing=, priority=, refs=, taken=, taken_refs=} (key names, all from KEYS).
local INF = math.huge

local function marks_take(k, member, now, most)
  local mark = redis.call('ZSCORE', k.due, member)
  if mark then
    local score = tonumber(mark)
    if score == INF then score = now end
    local old = redis.call('HGET', k.taken, 'due')
    if not old or tonumber(old) > score then
      redis.call('HSET', k.taken, 'due', tostring(score))
    end
    redis.call('ZREM', k.due, member)
  end
  if redis.call('SREM', k.listing, member) == 1 then
    redis.call('HSET', k.taken, 'listing', 1)
  end
  if redis.call('EXISTS', k.refs) == 1 then
    redis.call('SUNIONSTORE', k.taken_refs, k.taken_refs, k.refs)
    redis.call('DEL', k.refs)
  end
  if redis.call('HEXISTS', k.taken, 'listing') == 1
      or redis.call('SCARD', k.taken_refs) > most then
    redis.call('HSET', k.taken, 'listing', 1)
    redis.call('DEL', k.taken_refs)  -- the listing covers every repository
  end
  local prio = redis.call('ZSCORE', k.priority, member)
  if prio and tonumber(prio) ~= INF then
    -- Parked while claimed, so claims need not step over it (its score kept here).
    local old = redis.call('HGET', k.taken, 'priority')
    if not old or tonumber(old) > tonumber(prio) then
      redis.call('HSET', k.taken, 'priority', prio)
    end
    redis.call('ZADD', k.priority, 'XX', 'inf', member)
  end
end

-- Given back: the taken marks return, merged with fresh ones (the older due score kept).
local function marks_give_back(k, member, now, most)
  local score = redis.call('HGET', k.taken, 'due')
  if score then score = tonumber(score) end
  local fresh = redis.call('ZSCORE', k.due, member)
  if fresh then
    fresh = tonumber(fresh)
    if fresh == INF then fresh = now end
    if not score or fresh < score then score = fresh end
  end
  if score then redis.call('ZADD', k.due, tostring(score), member) end
  local listing = redis.call('HEXISTS', k.taken, 'listing') == 1
      or redis.call('SISMEMBER', k.listing, member) == 1
  if not listing and redis.call('EXISTS', k.taken_refs) == 1 then
    redis.call('SUNIONSTORE', k.refs, k.refs, k.taken_refs)
    listing = redis.call('SCARD', k.refs) > most
  end
  if listing then
    redis.call('SADD', k.listing, member)
    redis.call('DEL', k.refs)
  end
  local prio = redis.call('HGET', k.taken, 'priority')
  if prio then
    local now_prio = redis.call('ZSCORE', k.priority, member)
    if now_prio and tonumber(now_prio) > tonumber(prio) then
      redis.call('ZADD', k.priority, 'XX', prio, member)
    end
  end
  redis.call('DEL', k.taken, k.taken_refs)
end

-- Synced: the taken marks are done with; a mark made during the sync stays, due from now
-- (the sync may or may not have seen its change); a priority user is next due in
-- priority_s.
local function marks_synced(k, member, now, priority_s)
  redis.call('DEL', k.taken, k.taken_refs)
  local fresh = redis.call('ZSCORE', k.due, member)
  if fresh and tonumber(fresh) == INF then
    redis.call('ZADD', k.due, 'XX', tostring(now), member)
  end
  if redis.call('ZSCORE', k.priority, member) then
    redis.call('ZADD', k.priority, 'XX', tostring(now + priority_s), member)
  end
end

-- Not tracked any more: its marks would be due forever, and a run would never end.
local function marks_drop(k, member)
  redis.call('ZREM', k.due, member)
  redis.call('SREM', k.listing, member)
  redis.call('ZREM', k.priority, member)
  redis.call('DEL', k.refs, k.taken, k.taken_refs)
end
