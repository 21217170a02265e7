"""The Lua scripts of the Redis control state, one per multi-key transition.

Each script's header documents its KEYS and ARGV. Time inside scripts is the Redis server's
clock. :class:`brokers.state.RedisState` registers and calls them, and nothing else does
(``SET_RESIDUAL`` is :class:`brokers.residuals.ResidualCache`'s, ``APPEND_REVOCATION``
:class:`brokers.revocations.Revocations`').
"""

from __future__ import annotations

# Before Redis 7, a script that reads TIME and then writes must ask for effects replication.
_PRELUDE = "if redis.replicate_commands then redis.replicate_commands() end\n"

_NOW_MS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] arrivals set, KEYS[2] barrier state hash
# ARGV[1] member, ARGV[2] quorum (the round core's, shown to others: never acted on here),
# ARGV[3] TTL seconds
# -> {accepted (0/1), arrived, quorum, closed (0/1)}
# Only records: whether and why a round closes is the round core's decision, written by
# CLOSE. An arrival at a closed round is refused (a late update shows in no barrier).
ARRIVE = """
if redis.call('HGET', KEYS[2], 'closed') == '1' then
  local q = tonumber(redis.call('HGET', KEYS[2], 'quorum') or '0')
  return {0, redis.call('SCARD', KEYS[1]), q, 1}
end
local accepted = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'quorum', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {accepted, redis.call('SCARD', KEYS[1]), tonumber(ARGV[2]), 0}
"""

# KEYS[1] barrier state hash, KEYS[2] arrivals set; ARGV[1] reason, ARGV[2] closer, ARGV[3] TTL
# -> {closed_now (0/1), arrived}; the close the round core decided, recorded once
CLOSE = (
    _PRELUDE
    + _NOW_MS
    + """
local arrived = redis.call('SCARD', KEYS[2])
if redis.call('HGET', KEYS[1], 'closed') == '1' then return {0, arrived} end
redis.call('HSET', KEYS[1], 'closed', '1', 'reason', ARGV[1], 'closed_by', ARGV[2],
           'closed_ms', now_ms)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, arrived}
"""
)

# KEYS[1] lease; ARGV[1] holder token, ARGV[2] TTL ms -> 1 if ARGV[1] holds it now, else 0.
# Taking a free lease and renewing one's own are one step: two replicas cannot both win.
LEASE = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] holder token -> 1 if it was released (only its holder can).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] members zset, KEYS[2] member info hash
# ARGV[1] member, ARGV[2] heartbeat TTL ms, ARGV[3] info JSON, ARGV[4] key TTL seconds
# -> 1 if the member (re)joined, 0 if it was already live
HEARTBEAT = (
    _PRELUDE
    + _NOW_MS
    + """
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
local joined = 0
if (not prev) or tonumber(prev) < now_ms then
  joined = 1
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return joined
"""
)

# KEYS[1] members zset -> members whose heartbeat has expired, removed (each reported once)
PURGE = (
    _PRELUDE
    + _NOW_MS
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms)
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return gone
"""
)

# KEYS[1] members zset -> {live members..., '', expired members...} at the server's time
ROSTER = (
    _NOW_MS
    + """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now_ms, '+inf')
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms)
table.insert(live, '')
for _, m in ipairs(gone) do table.insert(live, m) end
return live
"""
)

# KEYS[1] model pointer hash; ARGV version, topic, partition, offset, TTL -> 1 if it moved forward
SET_VERSION = (
    _PRELUDE
    + _NOW_MS
    + """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[1]) <= current then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'topic', ARGV[2], 'partition', ARGV[3],
           'offset', ARGV[4], 'updated_ms', now_ms)
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
)

# KEYS[1] residual manifest hash; ARGV round, generation, parts, hash, specs, total, TTL,
# seal (msgpack of the entry's Seal; empty when not sealed)
# -> the previous {generation, parts} if replaced, or {} if a newer round is already there
SET_RESIDUAL = (
    _PRELUDE
    + _NOW_MS
    + """
local current = tonumber(redis.call('HGET', KEYS[1], 'round') or '-1')
if tonumber(ARGV[1]) < current then return {} end
local old_gen = redis.call('HGET', KEYS[1], 'generation') or ''
local old_parts = redis.call('HGET', KEYS[1], 'parts') or '0'
redis.call('HSET', KEYS[1], 'round', ARGV[1], 'generation', ARGV[2], 'parts', ARGV[3],
           'hash', ARGV[4], 'specs', ARGV[5], 'total', ARGV[6], 'written_ms', now_ms,
           'seal', ARGV[8] or '')
redis.call('EXPIRE', KEYS[1], ARGV[7])
return {old_gen, old_parts}
"""
)

# KEYS[1] the run's revocation list; ARGV[1] the list's length the entry was linked against,
# ARGV[2] the signed entry, ARGV[3] TTL seconds
# -> {the new length, or -1 if the list changed since it was read; 1 if a value that was not
#     a list was removed first (someone else's write: nothing in it was signed), else 0}
APPEND_REVOCATION = """
local cleared = 0
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'list' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
  cleared = 1
end
if redis.call('LLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return {-1, cleared} end
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {n, cleared}
"""
