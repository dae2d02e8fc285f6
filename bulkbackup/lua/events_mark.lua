-- Mark owners due after their events (queue/events.py), one batch of owners per call.
-- Only owners tracked (under any spelling: logins ignore case) are marked; `--track-new`
-- runs track.lua on the same owners just before, in the same pipeline.
-- KEYS[1]  tracked   KEYS[2]  bulkbackup:logins (lowercased login -> spelling)
-- KEYS[3]  bulkbackup:events:due (zset member -> first mark)   KEYS[4]  bulkbackup:events:listing
-- KEYS[4+i]  bulkbackup:events:refs:<owner i lowercased>, one per owner, in ARGV's order
-- ARGV[1]  member prefix (github.com/)   ARGV[2]  score of a new mark (unix s)
-- ARGV[3]  most repositories kept per owner (past it the owner needs a listing)
-- ARGV[4]  n, the owners in this call; then per owner: login, "1" (needs a listing) or "0",
--          k, and k repository names whose refs moved
-- Returns {owners marked, of them newly due, owners not tracked (nothing written)}.
-- O(log N) per owner (ZSCORE, HGET, ZADD), O(1) per repository (SADD). A mark made while the
-- owner is claimed is scored +inf (see marks.lua).
local prefix, score, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local at = 5
local marked, new, untracked = 0, 0, 0

-- The member as tracked, and its score in `tracked`.
local function tracked_member(login)
  local exact = prefix .. login
  local score = redis.call('ZSCORE', KEYS[1], exact)
  if score then
    return exact, score
  end
  local folded = string.lower(login)
  local spelling = redis.call('HGET', KEYS[2], folded)
  if spelling and string.lower(spelling) == folded then
    score = redis.call('ZSCORE', KEYS[1], prefix .. spelling)
    if score then return prefix .. spelling, score end
    return prefix .. spelling, nil
  end
  if folded ~= login then
    score = redis.call('ZSCORE', KEYS[1], prefix .. folded)
    if score then return prefix .. folded, score end
  end
  return nil, nil
end

for i = 1, n do
  local login, listing, k = ARGV[at], ARGV[at + 1] == '1', tonumber(ARGV[at + 2])
  local repos_at = at + 3
  at = repos_at + k
  local member, tracked_score = tracked_member(login)
  if not member then
    untracked = untracked + 1
  else
    marked = marked + 1
    -- A claimed user (parked at +inf) gets a fresh mark at +inf: claims never step over it,
    -- and its completion scores it (marks.lua).
    local mark_score = score
    if tracked_score and tonumber(tracked_score) == math.huge then mark_score = '+inf' end
    new = new + redis.call('ZADD', KEYS[3], 'NX', mark_score, member)
    local refs = KEYS[4 + i]
    if not listing and redis.call('SISMEMBER', KEYS[4], member) == 0 then
      for j = repos_at, repos_at + k - 1 do
        redis.call('SADD', refs, ARGV[j])
      end
      listing = redis.call('SCARD', refs) > most
    end
    if listing then
      redis.call('SADD', KEYS[4], member)
      redis.call('DEL', refs)  -- the listing covers every repository
    end
  end
end
return {marked, new, untracked}
