"""The Redis store's Lua scripts: each write that reads before it writes runs as one script,
atomic on the server. Keys are those of farm/store/redis.py's `_Keys`; trial keys are built
from a prefix argument instead of being declared in KEYS (fine on one server, not Redis
Cluster). The scripts that write records apply the aggregates' `Upkeep` (farm/store/stats.py)
with `upkeep`, so they move in the same atomic step.
"""

# Applies an Upkeep (its JSON, values as strings) to a stats hash. Prepended to the scripts
# that write records, so the aggregates move in the same atomic step.
UPKEEP = """
local function upkeep(stats, raw)
  local up = cjson.decode(raw)
  for k, v in pairs(up.add or {}) do redis.call('HINCRBYFLOAT', stats, k, v) end
  for k, v in pairs(up.top or {}) do
    local cur = tonumber(redis.call('HGET', stats, k))
    if cur == nil or tonumber(v) > cur then redis.call('HSET', stats, k, v) end
  end
  for k, v in pairs(up.put or {}) do redis.call('HSET', stats, k, v) end
end
"""


# KEYS: campaign, incumbent, campaigns, stats. ARGV: id, campaign JSON, sha, incumbent JSON,
# upkeep. Returns the existing campaign's JSON, or nil when this call created it.
CREATE_CAMPAIGN = (
    UPKEEP
    + """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'sha', ARGV[3], 'data', ARGV[4])
redis.call('RPUSH', KEYS[3], ARGV[1])
upkeep(KEYS[4], ARGV[5])
return false
"""
)

# KEYS: incumbent. ARGV: expected sha, new sha, new JSON.
# A retry whose first reply was lost finds its own record in place: that is a win, not a
# lost race, or a controller would think another one merged.
CAS_INCUMBENT = """
local cur = redis.call('HMGET', KEYS[1], 'sha', 'data')
if cur[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'sha', ARGV[2], 'data', ARGV[3])
  return 1
end
if cur[2] == ARGV[3] then return 1 end
return 0
"""

# KEYS: candidates (or calls), stats[, the candidates of its state]. ARGV: record id, JSON,
# upkeep. One record per id.
ADD_RECORD = (
    UPKEEP
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  -- The very record already there: this is a retry of a write whose reply was lost.
  if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 1 end
  return 0
end
upkeep(KEYS[2], ARGV[3])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[1]) end
return 1
"""
)

# KEYS: calls, stats. ARGV: call id, JSON, upkeep. Only a call in flight is settled, once.
SETTLE_CALL = (
    UPKEEP
    + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or cjson.decode(old).state ~= 'in_flight' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
upkeep(KEYS[2], ARGV[3])
return 1
"""
)

# KEYS: candidates, stats. ARGV: candidate id, JSON, its state, the field prefix of candidate
# states, the key prefix of the candidates by state, then the states it may move from.
# Updating a missing candidate changes nothing; a move from any other state is refused:
# {-1, the state it is in}. A move takes the candidate from its old state's set to its new
# one's in the same step, so the sets always agree with the records.
UPDATE_CANDIDATE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return {0, ''} end
local was = cjson.decode(old).state
local allowed = false
for i = 6, #ARGV do
  if ARGV[i] == was then allowed = true end
end
if not allowed then return {-1, was} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if was ~= ARGV[3] then
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[4] .. was, -1)
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[4] .. ARGV[3], 1)
  redis.call('SREM', ARGV[5] .. was, ARGV[1])
  redis.call('SADD', ARGV[5] .. ARGV[3], ARGV[1])
end
return {1, was}
"""

# KEYS: trial, trials, queue[, candidate_trials]. ARGV: trial id, JSON, kind priority, kind.
ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seq = redis.call('RPUSH', KEYS[2], ARGV[1])
local qscore = tonumber(ARGV[3]) * 1e15 + seq
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'kind', ARGV[4], 'state', 'queued', 'worker', '',
  'lease_expires', 0, 'deliveries', 0, 'qscore', qscore, 'prefer', ARGV[5])
redis.call('ZADD', KEYS[3], qscore, ARGV[1])
if KEYS[4] then redis.call('RPUSH', KEYS[4], ARGV[1]) end
return 1
"""

# KEYS: queue, running. ARGV: trial key prefix, n, worker, lease expiry, window, held
# hardware classes... (see Store.claim_trials). Returns each claimed trial's hash as a flat
# field/value list.
CLAIM = """
local n = tonumber(ARGV[2])
local ids = {}
if #ARGV <= 5 then
  ids = redis.call('ZRANGE', KEYS[1], 0, n - 1)
else
  local held, later = {}, {}
  for i = 6, #ARGV do held[ARGV[i]] = true end
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, n + tonumber(ARGV[5]) - 1)) do
    if held[redis.call('HGET', ARGV[1] .. id, 'prefer')] then
      later[#later + 1] = id
    else
      ids[#ids + 1] = id
    end
  end
  for _, id in ipairs(later) do ids[#ids + 1] = id end
end
local claimed = {}
for i = 1, math.min(n, #ids) do
  local id = ids[i]
  local key = ARGV[1] .. id
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[4], id)
  redis.call('HSET', key, 'state', 'running', 'worker', ARGV[3], 'lease_expires', ARGV[4])
  redis.call('HINCRBY', key, 'deliveries', 1)
  claimed[#claimed + 1] = redis.call('HGETALL', key)
end
return claimed
"""

# KEYS: running. ARGV: trial key prefix, worker, lease expiry, trial ids...
HEARTBEAT = """
local held = {}
for i = 4, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  local t = redis.call('HMGET', key, 'state', 'worker')
  if t[1] == 'running' and t[2] == ARGV[2] then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i])
    redis.call('HSET', key, 'lease_expires', ARGV[3])
    held[#held + 1] = ARGV[i]
  end
end
return held
"""

# Shared by release and reap. KEYS: queue, running, dead, stats. `prefix`: the stats field
# prefix of dead trials by kind.
GIVE_BACK = """
local function give_back(key, id, dead, prefix)
  redis.call('ZREM', KEYS[2], id)
  local state = 'queued'
  if dead then
    state = 'dead'
    redis.call('SADD', KEYS[3], id)
    redis.call('HINCRBYFLOAT', KEYS[4], prefix .. redis.call('HGET', key, 'kind'), 1)
  else
    redis.call('ZADD', KEYS[1], redis.call('HGET', key, 'qscore'), id)
  end
  redis.call('HSET', key, 'state', state, 'worker', '', 'lease_expires', 0)
end
"""

# ARGV: trial key prefix, trial id, worker, max deliveries, failed ('1' or '0'), dead prefix.
RELEASE = (
    GIVE_BACK
    + """
local key = ARGV[1] .. ARGV[2]
local t = redis.call('HMGET', key, 'state', 'worker', 'deliveries')
if t[1] ~= 'running' or t[2] ~= ARGV[3] then return 0 end
local deliveries = tonumber(t[3])
if ARGV[5] ~= '1' then
  -- an interrupted claim is handed back uncounted
  redis.call('HSET', key, 'deliveries', math.max(deliveries - 1, 0))
  give_back(key, ARGV[2], false, ARGV[6])
else
  give_back(key, ARGV[2], deliveries >= tonumber(ARGV[4]), ARGV[6])
end
return 1
"""
)

# ARGV: trial key prefix, now, max deliveries, dead prefix. Returns the reaped ids.
REAP = (
    GIVE_BACK
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local dead = tonumber(redis.call('HGET', key, 'deliveries')) >= tonumber(ARGV[3])
  give_back(key, id, dead, ARGV[4])
end
return ids
"""
)

# KEYS: trial, queue, running, dead, stats, done. ARGV: trial id, result JSON, upkeep, the
# stats field of this trial's kind's dead count. The first result wins.
RECORD_RESULT = (
    UPKEEP
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'result') == 1 then
  return 0
end
if redis.call('HGET', KEYS[1], 'state') == 'dead' then
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[4], -1)
end
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[2], 'lease_expires', 0)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('RPUSH', KEYS[6], ARGV[1])
upkeep(KEYS[5], ARGV[3])
return 1
"""
)

# KEYS: decisions, decision_order, decisions of its kind, stats. ARGV: candidate id, JSON,
# upkeep. One decision per candidate.
RECORD_DECISION = (
    UPKEEP
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
upkeep(KEYS[4], ARGV[3])
return 1
"""
)

# KEYS: the campaign's lease. ARGV: holder, ttl seconds, now. Returns the lease as it
# stands after: {holder, since, expires} (someone else's while they hold it).
TAKE_LEASE = """
local held = redis.call('HMGET', KEYS[1], 'holder', 'since', 'expires')
local now = tonumber(ARGV[3])
if held[1] and held[1] ~= ARGV[1] and tonumber(held[3]) > now then return held end
local since = (held[1] == ARGV[1]) and held[2] or ARGV[3]
local expires = tostring(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'since', since, 'expires', expires)
return {ARGV[1], since, expires}
"""

# KEYS: the campaign's lease. ARGV: holder.
DROP_LEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
