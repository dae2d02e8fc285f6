-- One hour read whole (queue/events.py): remember it, move where reading stands, add its
-- figures to the totals; all or nothing, and only once per hour.
-- KEYS[1]  bulkbackup:events:hours   KEYS[2]  bulkbackup:events:status
-- ARGV[1]  the hour's name   ARGV[2]  its start (unix s)   ARGV[3]  when it was read (unix s)
-- ARGV[4]  the name of the hour after it   ARGV[5..]  field, count pairs added to the totals
-- Returns 1 when the hour is newly done, 0 when it already was (nothing changed).
local name, start, read_at = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('ZADD', KEYS[1], 'NX', start, name) == 0 then
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[2], 'last_hour_start') or '-1')
if start > last then
  local lag = read_at - (start + 3600)
  if lag < 0 then lag = 0 end
  redis.call('HSET', KEYS[2], 'last_hour', name, 'last_hour_start', start, 'read_at', read_at,
             'lag_s', lag)
end
local next_start = tonumber(redis.call('HGET', KEYS[2], 'next_hour_start') or '-1')
if start + 3600 > next_start then
  redis.call('HSET', KEYS[2], 'next_hour', ARGV[4], 'next_hour_start', start + 3600)
end
redis.call('HINCRBY', KEYS[2], 'hours', 1)
for i = 5, #ARGV - 1, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
