"""One case table per rule that exists twice, in Python and in the Redis Lua scripts.

tests/router/test_rules.py runs every table against each copy of its rule: the Python
function, the Lua function alone (router/state/redis_scripts.py, run by EVAL), and both
stores through the Store interface. Cases are plain data; reqnums in the ledger tables
are offsets from the first case ticket's (tickets are numbered 0, 1, 2, ...).
"""

from __future__ import annotations

from typing import Any

# balancer.finalize / FINALIZE_LUA: fits when max_load is None, or the worker is idle
# (load <= 0: a request bigger than max_load must run somewhere), or load + cost <=
# max_load; "rescore" takes the least (load + cost) / perf, earlier index on ties;
# "ordered" the first that fits. workers: (load, perf, max_load, ready).
FINALIZE: list[dict[str, Any]] = [
    {
        "name": "no limit always fits",
        "workers": [(1e6, 100.0, None, True)],
        "cost": 50.0,
        "mode": "ordered",
        "pick": 0,
    },
    {
        "name": "idle worker takes a request above its max_load",
        "workers": [(0.0, 100.0, 50.0, True)],
        "cost": 80.0,
        "mode": "rescore",
        "pick": 0,
    },
    {
        "name": "idle worker takes a request above its max_load, ordered",
        "workers": [(0.0, 100.0, 50.0, True)],
        "cost": 80.0,
        "mode": "ordered",
        "pick": 0,
    },
    {
        "name": "a request that exactly fills max_load fits",
        "workers": [(20.0, 100.0, 100.0, True)],
        "cost": 80.0,
        "mode": "rescore",
        "pick": 0,
    },
    {
        "name": "one unit over max_load does not fit",
        "workers": [(21.0, 100.0, 100.0, True)],
        "cost": 80.0,
        "mode": "rescore",
        "pick": None,
    },
    {
        "name": "a busy worker with a request over max_load does not fit",
        "workers": [(1.0, 100.0, 50.0, True)],
        "cost": 80.0,
        "mode": "ordered",
        "pick": None,
    },
    {
        "name": "not ready is skipped, even idle",
        "workers": [(0.0, 1000.0, None, False), (50.0, 100.0, None, True)],
        "cost": 10.0,
        "mode": "rescore",
        "pick": 1,
    },
    {
        "name": "rescore takes the least work score",
        # scores: (10+10)/100 = 0.2, (30+10)/400 = 0.1, (0+10)/20 = 0.5
        "workers": [(10.0, 100.0, None, True), (30.0, 400.0, None, True), (0.0, 20.0, None, True)],
        "cost": 10.0,
        "mode": "rescore",
        "pick": 1,
    },
    {
        "name": "score divides by perf, not load alone",
        # load alone favours the first; (50+50)/100 = 1.0 against (100+50)/300 = 0.5
        "workers": [(50.0, 100.0, None, True), (100.0, 300.0, None, True)],
        "cost": 50.0,
        "mode": "rescore",
        "pick": 1,
    },
    {
        "name": "a tie on score goes to the earlier candidate",
        "workers": [(10.0, 100.0, None, True), (70.0, 300.0, None, True)],
        "cost": 20.0,  # 30 / 100 = 90 / 300
        "mode": "rescore",
        "pick": 0,
    },
    {
        "name": "a tie on score goes to the earlier candidate, not the less loaded",
        "workers": [(70.0, 300.0, None, True), (10.0, 100.0, None, True)],
        "cost": 20.0,
        "mode": "rescore",
        "pick": 0,
    },
    {
        "name": "rescore skips a full candidate with a better score",
        "workers": [(90.0, 1000.0, 100.0, True), (90.0, 100.0, None, True)],
        "cost": 20.0,
        "mode": "rescore",
        "pick": 1,
    },
    {
        "name": "ordered takes the first that fits, not the best",
        "workers": [(90.0, 100.0, 100.0, True), (50.0, 100.0, None, True), (0.0, 1e3, None, True)],
        "cost": 20.0,
        "mode": "ordered",
        "pick": 1,
    },
    {
        "name": "nobody fits",
        "workers": [(90.0, 100.0, 100.0, True), (0.0, 100.0, None, False)],
        "cost": 20.0,
        "mode": "rescore",
        "pick": None,
    },
    {"name": "no candidates", "workers": [], "cost": 1.0, "mode": "ordered", "pick": None},
]

# base.gcra / GCRA_LUA, as a sequence of requests against one key: (now, seconds to wait;
# 0.0 = allowed and counted). Times and waits are binary fractions, so compared exactly.
GCRA: list[dict[str, Any]] = [
    {
        "name": "a burst, then the rate; a refused request is not counted",
        "rate": 2.0,
        "burst": 3.0,
        "calls": [
            (1000.0, 0.0),
            (1000.0, 0.0),
            (1000.0, 0.0),
            (1000.0, 0.5),
            (1000.25, 0.25),
            (1000.5, 0.0),
            (1000.5, 0.5),
            (1002.0, 0.0),  # 1.5 s idle: the full burst again
            (1002.0, 0.0),
            (1002.0, 0.0),
            (1002.0, 0.5),
        ],
    },
    {
        "name": "after a long idle only the burst passes at once, then 4/s",
        "rate": 4.0,
        "burst": 3.0,
        "calls": [
            (1000.0, 0.0),
            (100_000.0, 0.0),
            (100_000.0, 0.0),
            (100_000.0, 0.0),
            (100_000.0, 0.25),
            (100_000.25, 0.0),
            (100_000.25, 0.25),
            (100_000.5, 0.0),
            (100_000.75, 0.0),
            (100_001.0, 0.0),
            (100_001.0, 0.25),
            (100_001.125, 0.125),
        ],
    },
    {
        "name": "burst 1 is the rate alone",
        "rate": 4.0,
        "burst": 1.0,
        "calls": [(10.0, 0.0), (10.0, 0.25), (10.125, 0.125), (10.25, 0.0), (10.25, 0.25)],
    },
]

# ledger.fold_report / LEDGER_LUA's fold_report. Before: `prior` is None (no report yet:
# max_reqnum_seen 0) or (cost, requests) reported seeing up to reqnum -1; `tickets` are
# the costs of outstanding tickets 0, 1, ... The report is (cost, requests, seen) with
# seen an offset (None: 0, a worker that saw nothing). After: max_reqnum_seen (offset, or
# None for 0), the reported (cost, requests), and the reqnums still pending.
REPORT: list[dict[str, Any]] = [
    {
        "name": "the first report drops the tickets it saw",
        "prior": None,
        "tickets": [10.0, 20.0, 0.5],
        "report": (27.0, 2, 1),
        "seen": 1,
        "reported": (27.0, 2),
        "left": [2],
    },
    {
        "name": "a report seeing every ticket leaves nothing pending",
        "prior": (5.0, 1),
        "tickets": [10.0, 20.0],
        "report": (30.0, 2, 1),
        "seen": 1,
        "reported": (30.0, 2),
        "left": [],
    },
    {
        "name": "seen between reqnums drops those at or below it",
        "prior": None,
        "tickets": [0.1, 0.2, 3.3],
        "report": (0.3, 2, 1),
        "seen": 1,
        "reported": (0.3, 2),
        "left": [2],
    },
    {
        "name": "a report with a lower max_reqnum_seen does not lower it",
        "prior": (5.0, 1),
        "tickets": [10.0],
        "report": (2.0, 1, -5),
        "seen": -1,
        "reported": (2.0, 1),
        "left": [0],
    },
    {
        "name": "a report that saw nothing replaces the reported load only",
        "prior": None,
        "tickets": [1e9, 0.1],
        "report": (0.0, 0, None),
        "seen": None,
        "reported": (0.0, 0),
        "left": [0, 1],
    },
    {
        "name": "a max_reqnum_seen beyond 2**53 is kept exactly and covers every ticket",
        "prior": (5.0, 1),
        "tickets": [1.0, 2.0],
        "report": (3.0, 2, 10**40),
        "seen": 10**40,
        "reported": (3.0, 2),
        "left": [],
    },
    {
        "name": "the reported load is replaced, also by a lower one",
        "prior": (500.0, 9),
        "tickets": [],
        "report": (1.5, 1, -1),
        "seen": -1,
        "reported": (1.5, 1),
        "left": [],
    },
]

# ledger.release_ticket / LEDGER_LUA's release_ticket. Before as in REPORT; the release
# is (reqnum offset, cost). An outstanding ticket goes with its own cost; one the worker
# reported seeing lowers the reported load (never below zero); else nothing happens.
RELEASE: list[dict[str, Any]] = [
    {
        "name": "an outstanding ticket leaves with the cost it was issued with",
        "prior": None,
        "tickets": [10.0, 5.0],
        "release": (1, 7.0),
        "where": "pending",
        "reported": (0.0, 0),
        "left": [0],
    },
    {
        "name": "the last outstanding ticket leaves nothing",
        "prior": (3.0, 1),
        "tickets": [0.1],
        "release": (0, 0.1),
        "where": "pending",
        "reported": (3.0, 1),
        "left": [],
    },
    {
        "name": "a reported ticket lowers the reported load",
        "prior": (50.0, 2),
        "tickets": [7.0],
        "release": (-1, 30.0),
        "where": "reported",
        "reported": (20.0, 1),
        "left": [0],
    },
    {
        "name": "the reported load never goes below zero",
        "prior": (5.0, 0),
        "tickets": [],
        "release": (-1, 999.0),
        "where": "reported",
        "reported": (0.0, 0),
        "left": [],
    },
    {
        "name": "a ticket above what the worker saw and not outstanding: nothing",
        "prior": (5.0, 1),
        "tickets": [1.0],
        "release": (1, 1.0),
        "where": None,
        "reported": (5.0, 1),
        "left": [0],
    },
    {
        "name": "no report yet, no such ticket: nothing",
        "prior": None,
        "tickets": [],
        "release": (0, 1.0),
        "where": None,
        "reported": (0.0, 0),
        "left": [],
    },
]

# ledger.expire_tickets / LEDGER_LUA's expire_tickets: tickets (cost, expires_at) oldest
# first; the sweep at `now` drops the oldest while expired before now, at most SWEEP_MAX
# (64) in one sweep. (The stores run it in every issue step: test_store_contract.py.)
EXPIRE: list[dict[str, Any]] = [
    {
        "name": "expired before now leave, oldest first",
        "tickets": [(1.0, 10.0), (2.0, 11.0), (4.0, 20.0)],
        "now": 15.0,
        "left": [2],
    },
    {
        "name": "expiring exactly now is still outstanding",
        "tickets": [(1.0, 10.0), (2.0, 15.0)],
        "now": 15.0,
        "left": [1],
    },
    {
        "name": "the sweep stops at the first ticket not expired",
        "tickets": [(1.0, 30.0), (2.0, 11.0)],
        "now": 15.0,
        "left": [0, 1],
    },
    {
        "name": "all expired: nothing left",
        "tickets": [(0.1, 1.0), (0.2, 2.0)],
        "now": 3.0,
        "left": [],
    },
    {
        "name": "at most 64 in one sweep",
        "tickets": [(0.5, 1.0)] * 70,
        "now": 3.0,
        "left": list(range(64, 70)),
    },
]

# prefix.deepest / DEEPEST_LUA: the most leading blocks some worker holds, by binary
# search over whole prefixes; a request whose first block nobody holds costs one probe.
# levels[i]: the holders of block i + 1; depth and holders (sorted) as answered.
DEEPEST: list[dict[str, Any]] = [
    {"name": "no blocks", "levels": [], "depth": 0, "holders": []},
    {"name": "nobody holds the first block", "levels": [[], ["w0"]], "depth": 0, "holders": []},
    {"name": "one block held", "levels": [["w0"]], "depth": 1, "holders": ["w0"]},
    {"name": "every block held", "levels": [["w0"]] * 5, "depth": 5, "holders": ["w0"]},
    {
        "name": "the deeper holder wins",
        "levels": [["w0", "w1"]] * 3 + [["w1"]] * 3 + [[], []],
        "depth": 6,
        "holders": ["w1"],
    },
    {
        "name": "a shared head only",
        "levels": [["w0", "w1"]] * 2 + [[]] * 6,
        "depth": 2,
        "holders": ["w0", "w1"],
    },
    {
        "name": "held up to the last but one",
        "levels": [["w2"]] * 6 + [[]],
        "depth": 6,
        "holders": ["w2"],
    },
]

# The prefix index (state/prefixes.PrefixIndex, PREFIX_RECORD and PREFIX_LOOKUP, both
# stores): steps run in order. A chain "abcd" is the request whose block i hashes to
# "h" + chain[:i], so chains sharing a head share blocks. ("record", worker, chain, t),
# ("lookup", chain, t, depth, holders), ("forget", worker): the worker leaves.
PREFIX_INDEX: list[dict[str, Any]] = [
    {
        "name": "nothing recorded",
        "ttl": 100.0,
        "max_blocks": 100,
        "steps": [("lookup", "abc", 10.0, 0, [])],
    },
    {
        "name": "a prompt matches as far as it agrees",
        "ttl": 100.0,
        "max_blocks": 100,
        "steps": [
            ("record", "w0", "abcde", 10.0),
            ("lookup", "abcde", 11.0, 5, ["w0"]),
            ("lookup", "abcdefgh", 11.0, 5, ["w0"]),
            ("lookup", "abcxy", 11.0, 3, ["w0"]),
            ("lookup", "xbcde", 11.0, 0, []),
        ],
    },
    {
        "name": "the worker with the longer match is named",
        "ttl": 100.0,
        "max_blocks": 100,
        "steps": [
            ("record", "w0", "abc", 10.0),
            ("record", "w1", "abcdef", 11.0),
            ("lookup", "abcdefg", 12.0, 6, ["w1"]),
            ("lookup", "abcz", 12.0, 3, ["w0", "w1"]),
        ],
    },
    {
        "name": "entries older than ttl_s are gone, per worker",
        "ttl": 100.0,
        "max_blocks": 100,
        "steps": [
            ("record", "w0", "abcd", 10.0),
            ("record", "w1", "ab", 60.0),
            ("lookup", "abcd", 105.0, 4, ["w0"]),
            ("lookup", "abcd", 115.0, 2, ["w1"]),
            ("lookup", "abcd", 161.0, 0, []),
        ],
    },
    {
        "name": "over max_blocks the least recent go, a request's deepest first",
        "ttl": 1000.0,
        "max_blocks": 4,
        "steps": [
            ("record", "w0", "abcd", 10.0),
            ("record", "w0", "xyz", 20.0),
            ("lookup", "abcd", 21.0, 1, ["w0"]),
            ("lookup", "xyz", 21.0, 3, ["w0"]),
        ],
    },
    {
        "name": "recording again makes blocks recent",
        "ttl": 1000.0,
        "max_blocks": 4,
        "steps": [
            ("record", "w0", "abcd", 10.0),
            ("record", "w0", "ab", 15.0),
            ("record", "w0", "xy", 20.0),
            ("lookup", "abcd", 21.0, 2, ["w0"]),
            ("lookup", "xy", 21.0, 2, ["w0"]),
        ],
    },
    {
        "name": "a worker that leaves is forgotten",
        "ttl": 100.0,
        "max_blocks": 100,
        "steps": [
            ("record", "w0", "abc", 10.0),
            ("record", "w1", "ab", 11.0),
            ("forget", "w0"),
            ("lookup", "abc", 12.0, 2, ["w1"]),
        ],
    },
    {
        "name": "a cap counts each worker alone",
        "ttl": 1000.0,
        "max_blocks": 3,
        "steps": [
            ("record", "w0", "abc", 10.0),
            ("record", "w1", "xyz", 11.0),
            ("record", "w1", "pq", 12.0),
            ("lookup", "abc", 13.0, 3, ["w0"]),
            ("lookup", "xyz", 13.0, 1, ["w1"]),
        ],
    },
]
