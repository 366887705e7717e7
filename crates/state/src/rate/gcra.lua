-- GCRA for one key, atomically. The arithmetic is governor's (see rate.rs), in
-- microseconds of the Redis server's clock, so every instance shares one clock.
--
-- KEYS[1]  the key (its hash tag keeps it in one Redis Cluster slot)
-- ARGV[1]  T, the emission interval, in microseconds
-- ARGV[2]  B, the burst
-- Returns one integer (cheaper for Redis than a table): the remaining burst when the
-- request is allowed (>= 0), or -(microseconds until a retry can pass) - 1 when not.
-- The key holds the theoretical arrival time and expires when the burst is full again,
-- which is exactly when forgetting it changes nothing.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local earliest = tat - tolerance
if now < earliest then
  return -(earliest - now) - 1
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat),
  'PX', math.ceil((next_tat - now) / 1000))
return math.floor((tolerance + interval - (next_tat - now)) / interval)
