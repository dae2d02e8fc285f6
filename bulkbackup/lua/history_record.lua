-- Add one sync to a user's history (queue/history.py), atomically.
-- KEYS[1]  bulkbackup:log:<login lowercased> (list: entries, newest first)
-- ARGV[1]  the sync's entry (SyncEntry.encode)
-- ARGV[2]  '1' when the sync is quiet (nothing archived, nothing failed), else '0'
-- ARGV[3]  its time (unix s)   ARGV[4] its bytes   ARGV[5] most entries   ARGV[6] ttl (s)
-- Returns history.Recorded: 1 ADDED (a new entry), 2 MERGED (into the newest entry).
--
-- Most users change nothing between passes: a quiet sync after a quiet newest entry (one
-- sync `<t> 0 <bytes> 0`, or a run `=<t> <count> <first t> <bytes>`) makes that entry a run
-- of one more, so an idle user's history is one entry, not 50 identical ones.
local key = KEYS[1]
if ARGV[2] == '1' then
  local head = redis.call('LINDEX', key, 0)
  if head then
    local t, count, first, nbytes = string.match(head, '^=(%d+) (%d+) (%d+) (%d+)$')
    if not t then
      t, nbytes = string.match(head, '^(%d+) 0 (%d+) 0$')
      count, first = 1, t
    end
    if t and #t <= 15 and #nbytes <= 15 and #tostring(count) <= 15 then
      local latest = math.max(tonumber(t), tonumber(ARGV[3]))
      redis.call('LSET', key, 0, string.format('=%d %d %s %d', latest, tonumber(count) + 1,
                                              first, tonumber(nbytes) + tonumber(ARGV[4])))
      redis.call('EXPIRE', key, ARGV[6])
      return 2
    end
  end
end
redis.call('LPUSH', key, ARGV[1])
redis.call('LTRIM', key, 0, tonumber(ARGV[5]) - 1)
redis.call('EXPIRE', key, ARGV[6])
return 1
