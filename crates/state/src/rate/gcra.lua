-- GCRA for a batch of decisions, atomically. The arithmetic is governor's (see
-- rate.rs), in microseconds of the Redis server's clock, so every instance shares one
-- clock.
--
-- KEYS[i]       the key of decision i (the caller sends only keys of one hash slot)
-- ARGV[2i - 1]  its T, the emission interval, in microseconds
-- ARGV[2i]      its B, the burst
-- Returns one integer per decision (cheaper for Redis than a table each): the remaining
-- burst when allowed (>= 0), or -(microseconds until a retry can pass) - 1 when not.
--
-- A key that appears several times (a busy client, a global limit) is read once and
-- written once. Each key holds its theoretical arrival time and expires when the burst
-- is full again, which is exactly when forgetting it changes nothing.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats = {}
local changed = {}
local out = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = interval * (tonumber(ARGV[2 * i]) - 1)
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key) or now)
  end
  if tat < now then
    tat = now
  end
  local earliest = tat - tolerance
  if now < earliest then
    out[i] = -(earliest - now) - 1
  else
    tat = tat + interval
    changed[key] = true
    out[i] = math.floor((tolerance + interval - (tat - now)) / interval)
  end
  tats[key] = tat
end
for key in pairs(changed) do
  local tat = tats[key]
  redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
return out
