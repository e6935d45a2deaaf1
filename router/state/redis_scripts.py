"""The Redis store's Lua scripts, composed of rules each written once as a Lua function.

A rule that the memory store runs in Python and Redis runs in Lua is one Lua function
here, named as its Python twin, in a snippet that every script using it includes:
`FINALIZE_LUA` (balancer.fits, work_score, finalize), `GCRA_LUA` (base.gcra),
`LEDGER_LUA` (ledger.add_ticket, expire_tickets, fold_report, release_ticket) and
`DEEPEST_LUA` (prefix.deepest; PREFIX_LOOKUP and PREFIX_RECORD twin
state/prefixes.PrefixIndex). One case
table per rule (tests/router/rule_cases.py) runs against the Python function, the Lua
function alone, and both stores. Redis forbids globals in scripts: the functions are
locals of the script that includes them.
"""

from __future__ import annotations

from router.prefix import MAX_BLOCKS
from router.state.base import MCOST_PER_COST
from router.state.ledger import SWEEP_MAX
from router.state.prefixes import PREFIX_SWEEP_MAX

# balancer.fits, work_score and finalize. A candidate is a table {ready, load, perf,
# max_load (nil: no limit)}; finalize returns its 1-based index, or nil if none fits.
FINALIZE_LUA = """
local function fits(load, cost, max_load)
  return max_load == nil or load <= 0 or load + cost <= max_load
end
local function work_score(load, cost, perf)
  return (load + cost) / perf
end
local function finalize(cands, cost, mode)
  local best, best_score = nil, 0
  for i, c in ipairs(cands) do
    if c.ready and fits(c.load, cost, c.max_load) then
      if mode == 'ordered' then return i end
      local score = work_score(c.load, cost, c.perf)
      if best == nil or score < best_score then best, best_score = i, score end
    end
  end
  return best
end
"""

# base.gcra: (new theoretical arrival time, seconds to wait); tat nil: unused.
GCRA_LUA = """
local function gcra(tat, now, rate_per_s, burst)
  local interval = 1.0 / rate_per_s
  local t = tat
  if t == nil or t < now then t = now end
  local ahead = t - now - (burst - 1.0) * interval
  if ahead > 0 then return t, ahead end
  return t + interval, 0
end
"""

# ledger.py's rules over a worker hash `wk` and its pending zset `pk` (score reqnum,
# member "reqnum:mcost:expires_at"). Each returns what its twin returns, and the pending
# load (integer milli-units, exact as a double below 2**53: see base.MCOST_PER_COST)
# where the caller needs it. Integers go to Redis formatted with %d: how Redis prints a
# Lua number (1e+15 or 1000000000000000) depends on its version.
LEDGER_LUA = (
    f"local SWEEP_MAX = {SWEEP_MAX}\n"
    + """
local function int(x) return string.format('%d', x) end
local function ticket_mcost(m) return tonumber(string.match(m, '^%d+:(%d+):')) end
-- change the pending sums, exactly zero once no ticket is left; the pending load after
local function settle(wk, pk, mcost, requests)
  if redis.call('ZCARD', pk) == 0 then
    redis.call('HSET', wk, 'pending_mcost', 0, 'pending_requests', 0)
    return 0
  end
  redis.call('HINCRBY', wk, 'pending_requests', requests)
  return redis.call('HINCRBY', wk, 'pending_mcost', int(mcost))
end
local function add_ticket(wk, pk, reqnum, mcost, expires_at)
  redis.call('ZADD', pk, int(reqnum), string.format('%d:%d:%.17g', reqnum, mcost, expires_at))
  redis.call('HINCRBY', wk, 'pending_requests', 1)
  return redis.call('HINCRBY', wk, 'pending_mcost', int(mcost))
end
-- the pending load after, or nil if no ticket had expired
local function expire_tickets(wk, pk, now)
  local gone, mcost = {}, 0
  for _, m in ipairs(redis.call('ZRANGE', pk, 0, SWEEP_MAX - 1)) do
    local c, e = string.match(m, '^%d+:(%d+):(.+)$')
    if tonumber(e) >= now then break end
    gone[#gone + 1], mcost = m, mcost + tonumber(c)
  end
  if #gone == 0 then return nil end
  redis.call('ZREM', pk, unpack(gone))
  return settle(wk, pk, -mcost, -#gone)
end
-- cost, requests and seen as strings: a reported seen may be beyond what %d can print
local function fold_report(wk, pk, cost, requests, seen)
  local prev = redis.call('HGET', wk, 'max_reqnum_seen')
  if prev and tonumber(prev) > tonumber(seen) then seen = prev end
  redis.call('HSET', wk, 'max_reqnum_seen', seen, 'reported_cost', cost,
             'reported_requests', requests)
  local done = redis.call('ZRANGEBYSCORE', pk, '-inf', seen)
  if #done > 0 then
    local sum = 0
    for _, m in ipairs(done) do sum = sum + ticket_mcost(m) end
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', seen)
    settle(wk, pk, -sum, -#done)
  end
end
-- 1: the ticket was pending, 2: reported, 0: nothing to release
local function release_ticket(wk, pk, reqnum, cost)
  local m = redis.call('ZRANGEBYSCORE', pk, reqnum, reqnum)
  if #m > 0 then
    redis.call('ZREM', pk, m[1])
    settle(wk, pk, -ticket_mcost(m[1]), -1)
    return 1
  end
  local f = redis.call('HMGET', wk, 'max_reqnum_seen', 'reported_cost', 'reported_requests')
  if f[1] and tonumber(reqnum) <= tonumber(f[1]) then
    local rc = math.max(0, (tonumber(f[2]) or 0) - cost)
    local rr = math.max(0, (tonumber(f[3]) or 0) - 1)
    redis.call('HSET', wk, 'reported_cost', string.format('%.17g', rc),
               'reported_requests', int(rr))
    return 2
  end
  return 0
end
"""
)

# Issue tickets for a batch of /route calls (each one exactly as if alone, in order): for
# each, expire its candidates' outstanding tickets, run finalize() over the candidates
# with their fresh load, bump the chosen worker's reqnum and add the ticket; assign a
# request_idx when the caller has none (also when no worker is chosen). Batching
# amortises redis-py's per-command cost (a third of a /route's CPU when measured) over
# the calls that arrive in one event-loop pass.
# KEYS: request_idx counter, then (worker hash, pending zset) per candidate per call.
# ARGV: worker_ttl_s, then per call: n_candidates, mode, mcost (base.quantize), now,
#       ttl_s, request_idx, reqnum_floor, now_ms.
# Returns 6 values per call: index (-1: none), reqnum, request_idx, load, url, pending_mcost.
ISSUE = (
    FINALIZE_LUA
    + LEDGER_LUA
    + f"local MCOST_PER_COST = {MCOST_PER_COST}\n"
    + """
local wttl = tonumber(ARGV[1])
local function issue_one(k0, n, mode, mcost, now, ttl, ridx, floor, now_ms)
  local cands = {}
  for j = 1, n do
    local wk, pk = KEYS[k0 + 2 * j - 2], KEYS[k0 + 2 * j - 1]
    local f = redis.call('HMGET', wk, 'status', 'perf', 'max_load', 'reported_cost',
                         'pending_mcost')
    local pend = tonumber(f[5]) or 0
    if f[1] then pend = expire_tickets(wk, pk, now) or pend end
    local reported = tonumber(f[4]) or 0
    cands[j] = {ready = f[1] == 'ready', load = reported + pend / MCOST_PER_COST,
                reported = reported, perf = tonumber(f[2]), max_load = tonumber(f[3])}
  end
  local best = finalize(cands, mcost / MCOST_PER_COST, mode)
  if ridx <= 0 then
    ridx = redis.call('INCR', KEYS[1])
    if ridx < tonumber(now_ms) then
      redis.call('SET', KEYS[1], now_ms)  -- the string: a Lua number would print as 1.7e+12
      ridx = tonumber(now_ms)
    end
  end
  if best == nil then return -1, 0, ridx, '0', '', 0 end
  local wk, pk = KEYS[k0 + 2 * best - 2], KEYS[k0 + 2 * best - 1]
  local reqnum
  if redis.call('HEXISTS', wk, 'reqnum') == 0 then
    redis.call('HSET', wk, 'reqnum', floor)
    reqnum = tonumber(floor)
  else
    reqnum = redis.call('HINCRBY', wk, 'reqnum', 1)
  end
  local pend = add_ticket(wk, pk, reqnum, mcost, now + ttl)
  redis.call('EXPIRE', wk, wttl)
  redis.call('EXPIRE', pk, wttl)
  local load = cands[best].reported + pend / MCOST_PER_COST
  return best - 1, reqnum, ridx, string.format('%.17g', load), redis.call('HGET', wk, 'url'),
         pend
end
local out, k0 = {}, 2
for a = 2, #ARGV, 8 do
  local n = tonumber(ARGV[a])
  local i, reqnum, ridx, load, url, pend = issue_one(
    k0, n, ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]),
    tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7])
  out[#out + 1] = i
  out[#out + 1] = reqnum
  out[#out + 1] = ridx
  out[#out + 1] = load
  out[#out + 1] = url
  out[#out + 1] = pend
  k0 = k0 + 2 * n
end
return out
"""
)

# Write a health poll's outcome if the status is still the expected one (compare and set),
# and fold the worker's report into its load.
# KEYS: worker hash, pending zset. ARGV: expected, status, ok_streak, fail_streak, last_ok,
# has_report, inflight_cost, inflight_requests, max_reqnum_seen, perf ('' = keep), ttl
REPORT = (
    LEDGER_LUA
    + """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'ok_streak', ARGV[3], 'fail_streak', ARGV[4],
           'last_ok', ARGV[5])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'perf', ARGV[10]) end
if ARGV[6] == '1' then fold_report(KEYS[1], KEYS[2], ARGV[7], ARGV[8], ARGV[9]) end
redis.call('EXPIRE', KEYS[1], ARGV[11])
return 1
"""
)

# Add a worker, or update perf/max_load of one with the same source and owner (else leave
# it be: Store.upsert_worker); refresh its TTL only then. A hash from before owners were
# stored has none: "".
# KEYS: worker hash, endpoint set, endpoints set.
# ARGV: id, endpoint, url, perf, max_load ('' = none), source, now, ttl, owner
UPSERT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'endpoint', ARGV[2], 'url', ARGV[3],
             'source', ARGV[6], 'owner', ARGV[9], 'status', 'loading', 'last_ok', ARGV[7],
             'registered_at', ARGV[7], 'perf', ARGV[4], 'max_load', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[8])
else
  local f = redis.call('HMGET', KEYS[1], 'source', 'owner')
  if f[1] == ARGV[6] and (f[2] or '') == ARGV[9] then
    redis.call('HSET', KEYS[1], 'perf', ARGV[4], 'max_load', ARGV[5])
    redis.call('EXPIRE', KEYS[1], ARGV[8])
  end
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

# Forget a worker, and its entries in its endpoint's prefix index.
# KEYS: worker hash, pending zset, lease, prefix-block zset. ARGV: id, endpoint-set
# prefix, prefix-block key prefix.
REMOVE = """
local ep = redis.call('HGET', KEYS[1], 'endpoint')
if not ep then return 0 end
redis.call('SREM', ARGV[2] .. ep, ARGV[1])
local base = ARGV[3] .. ep .. ':'
for _, h in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  redis.call('HDEL', base .. h, ARGV[1])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
"""

# A worker's measured perf (Store.set_perf), only if the worker still exists (a write
# must never bring back a removed worker's hash). KEYS: worker hash. ARGV: perf.
SET_PERF = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'perf', ARGV[1])
return 1
"""

DRAIN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'status', 'draining', 'admin_drain', 1)
return redis.call('HGETALL', KEYS[1])
"""

# Take finished proxied requests off their workers' load, one per call of a batch (see
# ISSUE on batching; the rule is release_ticket).
# KEYS: (worker hash, pending zset) per call. ARGV: (reqnum, cost) per call.
# Returns per call: 1 pending, 2 reported, 0 nothing.
RELEASE = (
    LEDGER_LUA
    + """
local out = {}
for j = 1, #KEYS / 2 do
  out[j] = release_ticket(KEYS[2 * j - 1], KEYS[2 * j], ARGV[2 * j - 1], tonumber(ARGV[2 * j]))
end
return out
"""
)

# GCRA rate limit. KEYS: rate key. ARGV: now, rate_per_s, burst. Returns the seconds to
# wait as a string ('0' = allowed and counted); the key expires when the allowance is full.
RATE = (
    GCRA_LUA
    + """
local now = tonumber(ARGV[1])
local tat, wait = gcra(tonumber(redis.call('GET', KEYS[1]) or ''), now, tonumber(ARGV[2]),
                       tonumber(ARGV[3]))
if wait > 0 then return string.format('%.17g', wait) end
redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX',
           math.max(1, math.ceil((tat - now) * 1000)))
return '0'
"""
)

# In-flight slots of one key. KEYS: slots zset. ARGV: limit, token, now, lease expiry.
# Drops expired leases, then takes a slot if one is free: 1 taken, 0 all held.
SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
local ttl = math.ceil(tonumber(ARGV[4]) - tonumber(ARGV[3])) + 1
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS: one lease per worker. ARGV: holder, ttl_ms. Returns the 1-based indexes held.
LEASES = """
local held = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    redis.call('SET', k, ARGV[1], 'PX', ARGV[2])
    held[#held + 1] = i
  elseif v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2])
    held[#held + 1] = i
  end
end
return held
"""

# Compare-and-set one document (Store.put_doc). KEYS: doc hash, names set, kind counter.
# ARGV: expected version (0: absent), doc, name. Returns the new version, or nil when the
# stored version differs. The version is the kind's counter after INCR, raised above the
# document's own were the counter ever behind it (a counter lost on its own).
PUT_DOC = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if cur ~= tonumber(ARGV[1]) then return false end
local v = redis.call('INCR', KEYS[3])
if v <= cur then
  v = cur + 1
  redis.call('SET', KEYS[3], string.format('%d', v))
end
redis.call('HSET', KEYS[1], 'version', string.format('%d', v), 'doc', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return v
"""

# Delete one document (Store.delete_doc). KEYS: doc hash, names set, kind counter.
# ARGV: expected version ('': any), name. Returns 1 deleted, 0 not.
DELETE_DOC = """
local cur = redis.call('HGET', KEYS[1], 'version')
if not cur then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 0
end
if ARGV[1] ~= '' and tonumber(cur) ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return 1
"""

# Give a named lease up if held by ARGV[1] (Store.release_lease); taking and renewing one
# is LEASES with that one key. KEYS: lease. Returns 1 released, 0 not held.
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# Add batched activity (Store.add_activity). KEYS: count hash, time hash. ARGV: (name,
# count, time) per endpoint. Counts add up; a time replaces the stored one only if later,
# kept as the string the replica sent so it reads back exactly.
ADD_ACTIVITY = """
for i = 1, #ARGV, 3 do
  local name = ARGV[i]
  redis.call('HINCRBY', KEYS[1], name, ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', KEYS[2], name) or '')
  if cur == nil or tonumber(ARGV[i + 2]) > cur then
    redis.call('HSET', KEYS[2], name, ARGV[i + 2])
  end
end
return 1
"""

# prefix.deepest: holders_at(i) lists the workers holding block i (1-based) now; returns
# the depth and the holders at that depth.
DEEPEST_LUA = """
local function deepest(n, holders_at)
  if n <= 0 then return 0, {} end
  local found = holders_at(1)
  if #found == 0 then return 0, {} end
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    local got = holders_at(mid)
    if #got > 0 then lo, found = mid, got else hi = mid - 1 end
  end
  return lo, found
end
"""

# Look up a batch of requests' block hashes in the prefix index (Store.prefix_lookup),
# each as if alone. Block keys are built here from their prefix: one request's blocks
# are a variable number of keys, all of one endpoint.
# ARGV: block key prefix, then per call: endpoint, now, ttl_s, n, hash_1 .. hash_n.
# Returns 2 values per call: depth, the holders' ids joined by ' '.
PREFIX_LOOKUP = (
    DEEPEST_LUA
    + """
local out, a = {}, 2
while a <= #ARGV do
  local base, n = ARGV[1] .. ARGV[a] .. ':', tonumber(ARGV[a + 3])
  local oldest = tonumber(ARGV[a + 1]) - tonumber(ARGV[a + 2])
  local first = a + 3
  local function holders_at(i)
    local f = redis.call('HGETALL', base .. ARGV[first + i])
    local live = {}
    for j = 1, #f, 2 do
      if tonumber(f[j + 1]) >= oldest then live[#live + 1] = f[j] end
    end
    return live
  end
  local depth, found = deepest(n, holders_at)
  out[#out + 1] = depth
  out[#out + 1] = table.concat(found, ' ')
  a = a + 4 + n
end
return out
"""
)

# Record a batch of (worker, blocks) in the prefix index and age the worker's entries
# out (Store.prefix_record; state/prefixes.PrefixIndex.record is the twin): blocks
# deepest first, then at most PREFIX_SWEEP_MAX entries older than ttl_s, then the least
# recent beyond max_blocks.
# ARGV: block key prefix, worker zset prefix, then per call: endpoint, wid, now, ttl_s,
#       max_blocks, n, hash_1 .. hash_n. Returns 1 per call.
PREFIX_RECORD = (
    f"local SWEEP, MAX_DEPTH = {PREFIX_SWEEP_MAX}, {MAX_BLOCKS}\n"
    + """
local function int(x) return string.format('%d', x) end
local out, a = {}, 3
while a <= #ARGV do
  local ep, wid, now_s = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local now, ttl = tonumber(now_s), tonumber(ARGV[a + 3])
  local cap, n = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local base, wk = ARGV[1] .. ep .. ':', ARGV[2] .. wid
  local us, ttl_int = math.floor(now * 1e6), math.max(1, math.ceil(ttl))
  for i = n, 1, -1 do
    local h = ARGV[a + 5 + i]
    redis.call('HSET', base .. h, wid, now_s)
    redis.call('EXPIRE', base .. h, ttl_int)
    redis.call('ZADD', wk, int(us - i), h)
  end
  local old = redis.call('ZRANGEBYSCORE', wk, '-inf',
                         '(' .. int(math.floor((now - ttl) * 1e6) - MAX_DEPTH), 'LIMIT', 0, SWEEP)
  for _, h in ipairs(old) do
    redis.call('ZREM', wk, h)
    redis.call('HDEL', base .. h, wid)
  end
  local excess = redis.call('ZCARD', wk) - cap
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', wk, excess)
    for j = 1, #popped, 2 do redis.call('HDEL', base .. popped[j], wid) end
  end
  redis.call('EXPIRE', wk, ttl_int)
  out[#out + 1] = 1
  a = a + 6 + n
end
return out
"""
)
